/**
 * TaskManager over the DockerRuntime with the real daemon and the
 * tensorbroker/simple:dev image (built offline by ensureTestImages; never pulled).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Docker from 'dockerode';
import pino from 'pino';
import { BrokerError } from '../../core/errors';
import type { BatchRequest } from '../../core/model-copies';
import type { Tensor } from '../../proto/tensor';
import { SPEC_DEFAULTS, type ModelSpec } from '../../core/model-spec';
import { DockerRuntime, LABEL_COPY, LABEL_MODEL, LABEL_OWNER } from '../../task-manager/docker-runtime';
import { LinkServer } from '../../task-manager/link-server';
import { TaskManager } from '../../task-manager/task-manager';
import { waitEvent } from '../helpers/events';
import { ensureTestImages } from '../helpers/images';
import { imageTag } from '../../examples/build-images';

jest.setTimeout(300_000);

const logger = pino({ level: process.env.TB_TEST_LOG ?? 'silent' });
/** TB_TEST_SIMPLE_IMAGE: another build of the simple model (e.g. with a newer SDK on top). */
const IMAGE = process.env.TB_TEST_SIMPLE_IMAGE ?? imageTag('simple');

function int32Tensor(name: string, rows: number, first: number): Tensor {
  const a = new Int32Array(rows * 16).map((_, i) => i);
  for (let r = 0; r < rows; r++) a[r * 16] = first;
  return { name, datatype: 'INT32', shape: [rows, 16], data: Buffer.from(a.buffer) };
}

let nextBatch = 1n;
function batch(model: string, rows: number, first: number): BatchRequest {
  return {
    batchId: nextBatch++,
    model,
    items: [{ requestId: 'r', rows }],
    tensors: [int32Tensor('INPUT0', rows, first), int32Tensor('INPUT1', rows, 1)],
    outputs: [],
    deadline: Date.now() + 20_000,
  };
}

function spec(name: string, over: Partial<ModelSpec> = {}): ModelSpec {
  return { ...SPEC_DEFAULTS, name, image: IMAGE, batch_size: 4, startup_timeout_ms: 20_000, env: {}, source: 'file', ...over };
}

const OWNER = `test-${process.pid}`;

describe.each(['ipc', 'tcp'] as const)('DockerRuntime (%s link)', (transport) => {
  const docker = new Docker({ socketPath: '/var/run/docker.sock' });
  let dir: string;
  let tm: TaskManager;
  let runtime: DockerRuntime;

  beforeAll(async () => {
    await ensureTestImages(['simple']);
  });

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-docker-'));
    const link = new LinkServer({ transport, socketDir: dir, heartbeatMs: 500, logger });
    runtime = new DockerRuntime({ logger });
    tm = new TaskManager({ runtime, link, brokerId: OWNER, logger, backoffInitialMs: 100, stopGraceMs: 3000 });
  });

  afterEach(async () => {
    await tm.close(3000);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const owned = () => docker.listContainers({ all: true, filters: { label: [`${LABEL_OWNER}=${OWNER}`] } });

  test('a container is labelled, named, ready, runs a batch; docker kill → error, not hang; replaced; close removes it', async () => {
    let ready = waitEvent(tm, 'metadata');
    await tm.reconcile([spec('simple', { env: { SIMPLE_CRASH_ON: '99' } })]);
    await ready;
    const [copy] = tm.copies();
    const [c] = await owned();
    expect(c.Labels[LABEL_MODEL]).toBe('simple');
    expect(c.Labels[LABEL_COPY]).toBe(copy.id);
    expect(c.Names[0]).toBe(`/tb-simple-${copy.id.slice(0, 12)}`);
    const info = await docker.getContainer(c.Id).inspect();
    expect(info.HostConfig.NetworkMode).toBe(transport === 'ipc' ? 'none' : 'host');
    // The only host path: the copy's own socket folder, read-only; no broker env, rotated logs, default limits.
    expect(info.HostConfig.Binds ?? []).toEqual(transport === 'ipc' ? [`${path.join(dir, 'copies', copy.id)}:/run/tensorbroker:ro`] : []);
    expect(info.HostConfig.LogConfig).toEqual({ Type: 'json-file', Config: { 'max-size': '10m', 'max-file': '3' } });
    expect(info.HostConfig.Memory).toBeGreaterThan(0);
    expect(info.Config.Env.find((e) => e.startsWith('TB_COPY_SECRET='))).toMatch(/^TB_COPY_SECRET=[0-9a-f]{64}$/);

    const res = await tm.controller('simple')!.available()!.execute(batch('simple', 2, 5));
    const out = Buffer.from(res.tensors[0].data);
    expect(new Int32Array(out.buffer, out.byteOffset, out.length / 4)[0]).toBe(6);

    // Crash mid-batch: the batch is rejected with the exit code, and the copy is replaced.
    ready = waitEvent(tm, 'metadata');
    const err = (await tm.controller('simple')!.available()!.execute(batch('simple', 1, 99)).catch((e: unknown) => e)) as BrokerError;
    expect(err).toBeInstanceOf(BrokerError);
    expect(err.code).toBe('UNAVAILABLE');
    expect(err.message).toMatch(/exited \(code 3\)/);
    await ready;

    // docker kill while idle: detected, replaced.
    const [second] = tm.copies();
    expect(second.id).not.toBe(copy.id);
    ready = waitEvent(tm, 'metadata');
    await docker.getContainer(second.runtimeId!).kill();
    await ready;
    expect(tm.copies()[0].id).not.toBe(second.id);
    expect(await owned()).toHaveLength(1); // dead containers are removed

    await tm.close(3000);
    expect(await owned()).toEqual([]);
  });

  test('a missing image with pull_policy never gives a clear reason', async () => {
    const exit = waitEvent<[string, string]>(tm, 'copy-exit');
    // pull_policy never: a test must not reach a registry.
    await tm.reconcile([spec('ghost', { image: 'tensorbroker/does-not-exist:never', pull_policy: 'never' })]);
    const [, msg] = await exit;
    expect(msg).toMatch(/image tensorbroker\/does-not-exist:never not found locally and pull_policy is never/);
    expect(tm.readiness('ghost').reason).toMatch(/not found locally/);
  });
});

describe('DockerRuntime GPUs and stale containers', () => {
  const docker = new Docker({ socketPath: '/var/run/docker.sock' });

  beforeAll(async () => {
    await ensureTestImages(['simple']);
  });

  test('GPU copies get device requests, and a host without a GPU runtime says so', async () => {
    const runtime = new DockerRuntime({ logger });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-gpu-'));
    const seen: Docker.ContainerInspectInfo[] = [];
    const onCreate = docker.createContainer.bind(docker);
    // Observe the created container before start() fails (no GPU here) and removes it.
    const spy = jest.spyOn(runtime.docker, 'createContainer').mockImplementation(async (o) => {
      const c = await onCreate(o);
      seen.push(await c.inspect());
      return c;
    });
    const launch = {
      copyId: 'gpu0123456789', model: 'simple', version: '1', image: IMAGE, env: {}, owner: OWNER, gpus: ['0', '1'],
      link: { endpoint: `ipc://${dir}/link.sock`, socketDir: dir, socketName: 'link.sock', heartbeatMs: 1000 },
    };
    let err: Error | undefined;
    try {
      const h = await runtime.start(launch);
      await runtime.stop(h, 0); // a GPU host: nothing more to check here
    } catch (e) {
      err = e as Error;
    }
    spy.mockRestore();
    expect(seen[0].HostConfig.DeviceRequests).toEqual([expect.objectContaining({ Driver: 'nvidia', DeviceIDs: ['0', '1'], Capabilities: [['gpu']] })]);
    expect(seen[0].Config.Env).toContain('NVIDIA_VISIBLE_DEVICES=0,1');
    if (err) expect(err.message).toMatch(/no GPU runtime on this host/);
    expect(await runtime.list(OWNER)).toEqual([]);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('removeStale removes containers labelled with the owner only', async () => {
    const mk = (owner: string) =>
      docker.createContainer({ Image: IMAGE, Labels: { [LABEL_OWNER]: owner }, HostConfig: { NetworkMode: 'none' } });
    const mine = await mk(`${OWNER}-stale`);
    const other = await mk(`${OWNER}-other`);
    const runtime = new DockerRuntime({ logger });
    expect(await runtime.removeStale(`${OWNER}-stale`)).toBe(1);
    expect(await runtime.list(`${OWNER}-stale`)).toEqual([]);
    expect(await runtime.list(`${OWNER}-other`)).toHaveLength(1);
    await other.remove({ force: true });
    await mine.remove({ force: true }).catch(() => undefined);
  });
});
