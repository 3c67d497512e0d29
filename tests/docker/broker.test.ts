/**
 * The whole broker with the Docker runtime: real containers built offline
 * (never pulled), real ZeroMQ over a bind-mounted ipc socket, real Redis.
 */
import { execFileSync } from 'node:child_process';
import Docker from 'dockerode';
import { LABEL_OWNER } from '../../task-manager/docker-runtime';
import { getJson, postJson, row, simpleBody, startTestBroker, waitFor, waitReady, type TestBroker } from '../helpers/broker';
import { ensureTestImages } from '../helpers/images';
import { imageTag } from '../../examples/build-images';

jest.setTimeout(300_000);

const docker = new Docker({ socketPath: '/var/run/docker.sock' });
const ownedContainers = (owner: string) => docker.listContainers({ all: true, filters: { label: [`${LABEL_OWNER}=${owner}`] } });

describe('broker with the Docker runtime', () => {
  let b: TestBroker;

  beforeAll(async () => {
    await ensureTestImages(['simple', 'sleepy']);
    b = await startTestBroker({
      runtime: 'docker',
      models: {
        simple: { image: imageTag('simple'), batch_size: 8, max_wait_ms: 5 },
        sleepy: { image: imageTag('sleepy'), batch_size: 4, env: { SLEEPY_A_MS: '300', SLEEPY_B_MS: '0' } },
      },
    });
    await waitReady(b, 'simple', 120_000);
    await waitReady(b, 'sleepy', 120_000);
  });
  afterAll(async () => {
    if (!b) return;
    const owner = b.config.brokerId;
    await b.stop();
    // Shutdown removes every container this broker started.
    expect(await ownedContainers(owner)).toEqual([]);
  });

  test('containers are labelled, named after the model, and answer correctly', async () => {
    const containers = await ownedContainers(b.config.brokerId);
    expect(containers.map((c) => c.Labels['tensorbroker.model']).sort()).toEqual(['simple', 'sleepy']);
    expect(containers.every((c) => c.Names[0].startsWith(`/tb-${c.Labels['tensorbroker.model']}-`))).toBe(true);
    const res = await postJson(`${b.url}/v2/models/simple/infer`, simpleBody([row(16, 5)], [row(16, 1)]));
    expect(res.status).toBe(200);
    const out = (res.json.outputs as { name: string; data: number[] }[]).find((o) => o.name === 'OUTPUT0')!;
    expect(out.data).toEqual(row(16, 5).map((v, i) => v + i + 1));
  });

  test('64 concurrent requests are batched', async () => {
    const results = await Promise.all(Array.from({ length: 64 }, (_, i) => postJson(`${b.url}/v2/models/simple/infer`, simpleBody([row(16, i)], [row(16)]))));
    expect(results.every((r) => r.status === 200)).toBe(true);
    const stats = (await getJson(`${b.url}/v2/models/simple/stats`)).model_stats[0];
    expect(stats.execution_count).toBeLessThan(stats.inference_count);
  });

  test('docker kill mid-batch: the in-flight requests fail with 503 (no hang), the copy is replaced', async () => {
    const before = b.running.tasks.copies().find((c) => c.model === 'sleepy' && c.state === 'ready')!;
    const body = { inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [1, 2], data: [1, 2] }] };
    const inFlight = Promise.all([1, 2, 3].map(() => postJson(`${b.url}/v2/models/sleepy/infer`, body)));
    await waitFor(() => b.running.tasks.copies().some((c) => c.id === before.id && c.inFlight > 0), 10_000, 'batch in flight');
    execFileSync('docker', ['kill', before.name!]);
    const results = await inFlight;
    expect(results.map((r) => r.status)).toContain(503);
    for (const r of results.filter((x) => x.status !== 200)) {
      expect(r.status).toBe(503);
      expect(r.json.error).toMatch(/exited|killed/);
    }
    await waitFor(() => b.running.tasks.copies().some((c) => c.model === 'sleepy' && c.state === 'ready' && c.id !== before.id), 60_000, 'replacement container');
    expect((await postJson(`${b.url}/v2/models/sleepy/infer`, body)).status).toBe(200);
  });
});
