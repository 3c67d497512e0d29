/**
 * GPU placement with a fake inventory of four GPUs (TB_GPUS=0,1,2,3) on a host
 * without a GPU runtime. Two ways, stated honestly:
 *  - gpuMode 'nvidia' (production): the containers are created with the real
 *    DeviceRequests, inspected, and start() fails with "no GPU runtime".
 *  - gpuMode 'fake' (test seam): the same request is recorded in a label and
 *    NVIDIA_VISIBLE_DEVICES is set, but not sent, so the copies run and the
 *    waiting / freeing logic is exercised end to end.
 */
import type Docker from 'dockerode';
import { LABEL_FAKE_DEVICES, LABEL_GPUS } from '../../task-manager/docker-runtime';
import { ensureTaskManagerImages } from '../helpers/test-images';
import { waitEvent } from '../helpers/events';
import { docker, dockerTm, modelSpec, until, type DockerTm } from '../helpers/tm-docker';
import { imageTag } from '../../examples/build-images';

jest.setTimeout(180_000);
const IMAGE = imageTag('simple');

beforeAll(async () => {
  await ensureTaskManagerImages();
});

describe('GPU placement (fake mode: copies run)', () => {
  let t: DockerTm;
  beforeAll(() => {
    t = dockerTm({ runtime: { gpuMode: 'fake' }, tm: { gpus: ['0', '1', '2', '3'] } });
  });
  afterAll(() => t.close());

  test('four GPU copies on four distinct GPUs with their device requests; a fifth waits; stopping a model frees its GPUs', async () => {
    const { tm } = t;
    await tm.reconcile([modelSpec('gpu-a', IMAGE, { run_on_gpu: true, min_replicas: 4, max_replicas: 4, memory_mb: 256, cpus: 1 })]);
    await until(() => tm.copies().filter((c) => c.state === 'ready').length === 4, 60_000, 'four ready copies');
    const infos: Docker.ContainerInspectInfo[] = await Promise.all((await t.owned()).map((c) => docker.getContainer(c.Id).inspect()));
    expect(infos).toHaveLength(4);
    const gpus = infos.map((i) => i.Config.Labels[LABEL_GPUS]).sort();
    expect(gpus).toEqual(['0', '1', '2', '3']);
    for (const i of infos) {
      const g = i.Config.Labels[LABEL_GPUS];
      expect(JSON.parse(i.Config.Labels[LABEL_FAKE_DEVICES])).toEqual([{ Driver: 'nvidia', DeviceIDs: [g], Capabilities: [['gpu']] }]);
      expect(i.Config.Env).toContain(`NVIDIA_VISIBLE_DEVICES=${g}`);
      expect(i.Config.Env.some((e) => e.startsWith('CUDA_VISIBLE_DEVICES='))).toBe(false);
      // Hardening, as created.
      expect(i.HostConfig.CapDrop).toEqual(['ALL']);
      expect(i.HostConfig.SecurityOpt).toEqual(['no-new-privileges:true']);
      expect(i.HostConfig.ReadonlyRootfs).toBe(true);
      expect(i.HostConfig.Tmpfs).toEqual({ '/tmp': 'rw,nosuid,nodev,noexec,size=64m' });
      expect(i.HostConfig.PidsLimit).toBe(512);
      expect(i.HostConfig.Memory).toBe(256 * 1024 * 1024);
      expect(i.HostConfig.NanoCpus).toBe(1e9);
      // Each container mounts only its own copy's socket folder, read-only.
      expect(i.HostConfig.Binds).toEqual([expect.stringMatching(new RegExp(`^${t.dir}/copies/[0-9a-f]+:/run/tensorbroker:ro$`))]);
      expect(i.HostConfig.Privileged).toBe(false);
    }
    expect(tm.gpuUsage().map((u) => u.model)).toEqual(['gpu-a', 'gpu-a', 'gpu-a', 'gpu-a']);

    // A fifth GPU copy (another model) waits: it is not failed, and requests would queue.
    await tm.applyChange({ type: 'put', name: 'gpu-b', spec: modelSpec('gpu-b', IMAGE, { run_on_gpu: true }) });
    await until(() => tm.instances().instances.some((i) => i.model === 'gpu-b' && i.state === 'waiting'), 30_000, 'gpu-b waiting');
    expect(tm.readiness('gpu-b')).toEqual({ ready: false, phase: 'starting', reason: expect.stringMatching(/waiting for room: no free GPU/) });
    expect(tm.instances().instances).toContainEqual({ model: 'gpu-b', state: 'waiting', reason: expect.stringMatching(/no free GPU/) });
    expect(tm.copies().filter((c) => c.model === 'gpu-b')).toEqual([]);

    // Removing gpu-a frees its four GPUs; gpu-b gets one.
    const ready = waitEvent(tm, 'metadata', (m: string) => m === 'gpu-b', 60_000);
    await tm.applyChange({ type: 'delete', name: 'gpu-a', previous: modelSpec('gpu-a', IMAGE) });
    await ready;
    const b = tm.copies().find((c) => c.model === 'gpu-b')!;
    expect(b.gpus).toHaveLength(1);
    expect(tm.gpuUsage().filter((u) => u.copyId)).toEqual([{ gpu: b.gpus![0], copyId: b.id, model: 'gpu-b' }]);
    expect(await t.owned()).toHaveLength(1);
  });

  test('allowed GPUs and gpus_per_copy; an impossible request is a clear unavailable reason', async () => {
    const { tm } = t;
    await tm.reconcile([modelSpec('pair', IMAGE, { run_on_gpu: true, gpus_per_copy: 2, gpus: ['2', '3'] })]);
    await until(() => tm.readiness('pair').ready, 60_000, 'pair ready');
    expect(tm.copies().find((c) => c.model === 'pair')!.gpus).toEqual(['2', '3']);
    await tm.applyChange({ type: 'put', name: 'huge', spec: modelSpec('huge', IMAGE, { run_on_gpu: true, gpus_per_copy: 8 }) });
    expect(tm.readiness('huge')).toMatchObject({ ready: false, phase: 'failed', reason: expect.stringMatching(/needs 8 GPU\(s\) per copy/) });
  });
});

describe('GPU placement (nvidia mode: real device requests, no GPU runtime here)', () => {
  let t: DockerTm;
  beforeAll(() => {
    t = dockerTm({ tm: { gpus: ['0', '1', '2', '3'] } });
  });
  afterAll(() => t.close());

  test('each copy is created with DeviceIDs of its own GPU and capability gpu; start fails with a clear reason', async () => {
    const { tm, runtime } = t;
    const created: Docker.ContainerInspectInfo[] = [];
    const real = runtime.docker.createContainer.bind(runtime.docker);
    const spy = jest.spyOn(runtime.docker, 'createContainer').mockImplementation(async (o) => {
      const c = await real(o);
      created.push(await c.inspect());
      return c;
    });
    const unavailable = waitEvent<[string, { reason: string }]>(tm, 'model-unavailable', (m: string) => m === 'g4', 60_000);
    await tm.reconcile([modelSpec('g4', IMAGE, { run_on_gpu: true, min_replicas: 4, max_replicas: 4, max_failures: 4 })]);
    const [, verdict] = await unavailable;
    spy.mockRestore();
    const firstFour = created.slice(0, 4);
    expect(firstFour.map((i) => i.HostConfig.DeviceRequests![0].DeviceIDs![0]).sort()).toEqual(['0', '1', '2', '3']);
    for (const i of firstFour) {
      expect(i.HostConfig.DeviceRequests).toEqual([expect.objectContaining({ Driver: 'nvidia', DeviceIDs: [i.Config.Labels[LABEL_GPUS]], Capabilities: [['gpu']] })]);
    }
    expect(verdict.reason).toMatch(/no GPU runtime on this host/);
    expect(tm.readiness('g4')).toMatchObject({ phase: 'failed', reason: expect.stringMatching(/no GPU runtime/) });
    // The failed copies release their GPUs and containers as their clean-up finishes,
    // which may trail the verdict on a loaded machine: wait for it.
    await until(() => tm.gpuUsage().every((u) => !u.copyId), 30_000, `every GPU freed (${JSON.stringify(tm.gpuUsage())})`);
    await until(async () => (await t.owned()).length === 0, 30_000, 'every failed container removed');
  });
});
