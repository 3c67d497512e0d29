/**
 * Failures of real containers through the whole broker: docker kill and a hung
 * copy (SIGSTOP) with a batch in flight are detected, the GPU freed, the
 * requests retried once on the other copy (retry_on_failure), the copy
 * replaced; an OOM kill is reported as such; repeated crashes mark the model
 * unavailable with the reason in /ready, /admin and the metrics.
 */
import { execFileSync } from 'node:child_process';
import { getJson, postJson, startTestBroker, waitFor, type TestBroker } from '../helpers/broker';
import { HOG_IMAGE, ensureTaskManagerImages } from '../helpers/test-images';
import { docker } from '../helpers/tm-docker';

jest.setTimeout(240_000);
const TOKEN = 'tm-failures-token';

const body = (v: number) => ({ inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [1, 2], data: [v, 2] }] });

describe('copy failures (Docker runtime, fake GPUs 0,1)', () => {
  let b: TestBroker;
  const copies = (model: string) => b.running.tasks.copies().filter((c) => c.model === model);
  const serving = (model: string) => copies(model).filter((c) => c.state === 'ready' || c.state === 'busy');

  beforeAll(async () => {
    await ensureTaskManagerImages();
    b = await startTestBroker({
      runtime: 'docker',
      adminToken: TOKEN,
      config: { gpus: ['0', '1'], gpuMode: 'fake' },
      models: {
        hog: {
          image: HOG_IMAGE, pull_policy: 'never', run_on_gpu: true, min_replicas: 2, max_replicas: 2, batch_size: 1, retry_on_failure: true,
          heartbeat_timeout_ms: 1500, batch_timeout_ms: 2500, memory_mb: 64, max_failures: 20, env: { HOG_DELAY_MS: '400' },
        },
        crashy: { image: HOG_IMAGE, pull_policy: 'never', max_failures: 2, failure_window_ms: 60_000 },
      },
    });
    await waitFor(() => serving('hog').length === 2 && serving('crashy').length === 1, 60_000, 'copies ready');
  });
  afterAll(async () => {
    await b?.stop();
  });

  /** Sends one request and returns the copy that runs it. */
  async function inFlightOn(model: string) {
    const res = postJson(`${b.url}/v2/models/${model}/infer`, body(1));
    await waitFor(() => copies(model).some((c) => c.inFlight > 0), 10_000, 'a batch in flight');
    return { res, copy: copies(model).find((c) => c.inFlight > 0)! };
  }

  async function twoServingOnDistinctGpus(previous: string) {
    await waitFor(() => serving('hog').length === 2 && !copies('hog').some((c) => c.id === previous), 60_000, 'replacement copy');
    const gpus = b.running.tasks.gpuUsage().filter((u) => u.copyId);
    expect(gpus.map((g) => g.copyId)).not.toContain(previous);
    expect(new Set(serving('hog').flatMap((c) => c.gpus ?? [])).size).toBe(2);
  }

  test('docker kill with a batch in flight: retried once on the other copy (200), GPU freed, copy replaced', async () => {
    const { res, copy } = await inFlightOn('hog');
    execFileSync('docker', ['kill', copy.name!]);
    const r = await res;
    expect(r.status).toBe(200);
    expect(r.json.outputs[0].data).toEqual([1, 2]);
    await twoServingOnDistinctGpus(copy.id);
  });

  test('a hung copy (SIGSTOP) with a batch in flight: the batch timeout fires, retried elsewhere (200), copy killed and replaced', async () => {
    const { res, copy } = await inFlightOn('hog');
    const pid = (await docker.getContainer(copy.runtimeId!).inspect()).State.Pid;
    process.kill(pid, 'SIGSTOP');
    const r = await res;
    expect(r.status).toBe(200);
    await twoServingOnDistinctGpus(copy.id);
  });

  test('a hung idle copy (SIGSTOP) is found by heartbeat silence and replaced', async () => {
    const [copy] = serving('hog');
    const pid = (await docker.getContainer(copy.runtimeId!).inspect()).State.Pid;
    process.kill(pid, 'SIGSTOP');
    await twoServingOnDistinctGpus(copy.id);
    const metrics = await (await fetch(b.metricsUrl)).text();
    expect(metrics).toMatch(/tb_copy_failures_total\{model="hog",kind="heartbeat"\} [1-9]/);
  });

  test('memory exhausted: the copy is OOM killed, the request (retried once, killing a second copy) fails with the reason', async () => {
    const r = await postJson(`${b.url}/v2/models/hog/infer`, body(77));
    expect(r.status).toBe(503);
    expect(r.json.error).toMatch(/OOM killed/);
    const metrics = await (await fetch(b.metricsUrl)).text();
    expect(metrics).toMatch(/tb_copy_failures_total\{model="hog",kind="oom"\} 2/);
    await waitFor(() => serving('hog').length === 2, 60_000, 'hog copies replaced');
    expect((await postJson(`${b.url}/v2/models/hog/infer`, body(3))).status).toBe(200);
  });

  test('repeated crashes mark the model unavailable with exit code and last log lines; POST scale brings it back', async () => {
    const first = await postJson(`${b.url}/v2/models/crashy/infer`, body(13));
    expect(first.status).toBe(503);
    // Without the admin token a crashed copy's log line is hidden from the client (the access policy).
    expect(first.json.error).toMatch(/exited \(code 13\): \(log line hidden\)/);
    await waitFor(() => serving('crashy').length === 1, 30_000, 'crashy restarted');
    await postJson(`${b.url}/v2/models/crashy/infer`, body(13));
    await waitFor(() => b.running.broker.modelReady('crashy').phase === 'failed', 20_000, 'crashy unavailable');

    const ready = await fetch(`${b.url}/v2/models/crashy/ready`);
    expect(ready.status).toBe(503);
    const reason = ((await ready.json()) as { error: string }).error;
    expect(reason).toMatch(/unavailable: 2 copy failures within 60000 ms/);
    expect(reason).toMatch(/exit code 13/);
    expect(reason).toMatch(/last log lines: \(hidden: need the admin token\)/);
    // The admin token holder sees the copy's last log lines.
    const asAdmin = await fetch(`${b.url}/v2/models/crashy/ready`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(((await asAdmin.json()) as { error: string }).error).toMatch(/last log lines: .*crashing on purpose/);
    const admin = await getJson(`${b.url}/admin/models/crashy`);
    expect(admin.status.unavailable).toMatchObject({ failures: 2, last: { exitCode: 13, oomKilled: false } });
    expect(admin.status.readiness.phase).toBe('failed');
    expect(await (await fetch(b.metricsUrl)).text()).toMatch(/tb_model_unavailable\{model="crashy"\} 1/);
    expect((await postJson(`${b.url}/v2/models/crashy/infer`, body(1))).status).toBe(503); // answered at once, not queued

    const denied = await postJson(`${b.url}/admin/models/crashy/scale`, { replicas: 1 });
    expect(denied.status).toBe(401);
    const scaled = await postJson(`${b.url}/admin/models/crashy/scale`, { replicas: 1 }, { authorization: `Bearer ${TOKEN}` });
    expect(scaled.status).toBe(200);
    await waitFor(() => serving('crashy').length === 1, 30_000, 'crashy back');
    expect((await postJson(`${b.url}/v2/models/crashy/infer`, body(1))).status).toBe(200);
  });
});
