/** The task manager's pure rules: GPU placement, scaling decisions, caps, failure windows, adoption, credentials, hardening. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { SPEC_DEFAULTS, type ModelSpec } from '../../core/model-spec';
import { planAdoption } from '../../task-manager/adoption';
import { capRefusal, decideScale, type ScaleInput } from '../../task-manager/autoscaler';
import { DEFAULT_LIMITS, hardenedHostConfig, hostDefaultsFromEnv, linkBind } from '../../task-manager/docker-runtime';
import { GpuAllocator, detectGpus, parseGpuList } from '../../task-manager/gpu-allocator';
import { FailureTracker, batchTimeoutMs } from '../../task-manager/health';
import { findAuth, registryOf } from '../../task-manager/image-puller';
import { fingerprint } from '../../task-manager/model-state';
import type { Placement } from '../../task-manager/placement-store';
import type { CopyHandle } from '../../task-manager/runtime';

const spec = (name: string, over: Partial<ModelSpec> = {}): ModelSpec => ({ ...SPEC_DEFAULTS, name, image: 'x', env: {}, source: 'file', ...over });

describe('GPU allocator', () => {
  test('one copy per GPU, lowest first, allowed lists, gpus_per_copy, release', () => {
    const g = new GpuAllocator(parseGpuList('0, 1,2,3,3'));
    expect(g.inventory).toEqual(['0', '1', '2', '3']);
    expect(g.allocate('a', 'm', 1)).toEqual(['0']);
    expect(g.allocate('b', 'm', 2)).toEqual(['1', '2']);
    expect(g.allocate('c', 'm', 1, ['0', '1'])).toBeUndefined(); // allowed GPUs taken
    expect(g.allocate('d', 'm', 2)).toBeUndefined(); // only one left: all or nothing
    expect(g.allocate('e', 'n', 1)).toEqual(['3']);
    expect(g.free()).toEqual([]);
    expect(g.release('b')).toEqual(['1', '2']);
    expect(g.allocate('c', 'm', 1, ['0', '1'])).toEqual(['1']);
    expect(g.feasible(5)).toBe(false);
    expect(g.feasible(1, ['7'])).toBe(false);
    expect(g.claim('z', 'm', ['2', '3', '9'])).toEqual(['2']); // 3 is held, 9 unknown
    expect(g.usage().map((u) => u.copyId)).toEqual(['a', 'c', 'z', 'e']);
  });

  test('inventory: nvidia-smi first, else TB_GPUS', async () => {
    expect(await detectGpus(['0', '1'], async () => ['0', '1', '2'])).toEqual({ gpus: ['0', '1', '2'], source: 'nvidia-smi' });
    expect(await detectGpus(['0', '1'], async () => undefined)).toEqual({ gpus: ['0', '1'], source: 'config' });
    expect(await detectGpus([], async () => undefined)).toEqual({ gpus: [], source: 'none' });
  });
});

describe('autoscaler', () => {
  const base: ScaleInput = {
    model: 'm', now: 100_000, queued: 0, running: 0, ready: 1, starting: 0, minReplicas: 1, maxReplicas: 4, queuePerCopy: 4,
    upCooldownMs: 5000, downCooldownMs: 10_000, idleTtlMs: 30_000, lastScaleUpAt: 0, lastScaleDownAt: 0, idle: [],
  };
  test('scales up from one copy when the queue per copy passes the target, within cooldown and max', () => {
    expect(decideScale({ ...base, queued: 9 })).toMatchObject({ action: 'up', count: 1 });
    expect(decideScale({ ...base, queued: 4 })).toMatchObject({ action: 'none' });
    expect(decideScale({ ...base, queued: 9, lastScaleUpAt: 98_000 })).toMatchObject({ action: 'none', reason: expect.stringMatching(/cooldown/) });
    expect(decideScale({ ...base, queued: 99, ready: 4 })).toMatchObject({ action: 'none', reason: expect.stringMatching(/max_replicas/) });
    expect(decideScale({ ...base, queued: 99, starting: 1 })).toMatchObject({ action: 'none', reason: expect.stringMatching(/starting/) });
  });
  test('cold start from zero and min_replicas ignore cooldowns', () => {
    expect(decideScale({ ...base, minReplicas: 0, ready: 0, queued: 1, lastScaleUpAt: 99_999 })).toMatchObject({ action: 'up', reason: expect.stringMatching(/cold start/) });
    expect(decideScale({ ...base, minReplicas: 3, ready: 1 })).toMatchObject({ action: 'up', count: 2 });
  });
  test('scales down the longest idle copy past idle_ttl_ms, never below min, after the cooldown', () => {
    const idle = [{ copyId: 'a', idleSinceMs: 40_000 }, { copyId: 'b', idleSinceMs: 50_000 }];
    expect(decideScale({ ...base, ready: 2, idle })).toMatchObject({ action: 'down', copyId: 'b' });
    expect(decideScale({ ...base, ready: 1, idle })).toMatchObject({ action: 'none', reason: 'at min_replicas' });
    expect(decideScale({ ...base, ready: 2, idle, lastScaleUpAt: 95_000 })).toMatchObject({ action: 'none', reason: expect.stringMatching(/cooldown/) });
    expect(decideScale({ ...base, ready: 2, idle: [{ copyId: 'a', idleSinceMs: 1000 }] })).toMatchObject({ action: 'none', reason: expect.stringMatching(/idle_ttl/) });
    expect(decideScale({ ...base, ready: 2, minReplicas: 0, idle })).toMatchObject({ action: 'down' });
  });
  test('global caps', () => {
    expect(capRefusal({ maxCopies: 3 }, 3, 0, 0)).toMatchObject({ cap: 'copies', reason: expect.stringMatching(/TB_MAX_COPIES=3/) });
    expect(capRefusal({ maxMemoryMb: 1000 }, 1, 900, 200)).toMatchObject({ cap: 'memory' });
    expect(capRefusal({ maxCopies: 3, maxMemoryMb: 1000 }, 2, 500, 200)).toBeUndefined();
  });
});

describe('health', () => {
  test('batch timeout: base (batch_timeout_ms, else the deadline, else timeout_ms) + per row', () => {
    expect(batchTimeoutMs(spec('m', { timeout_ms: 1000 }), 8)).toBe(1000);
    expect(batchTimeoutMs(spec('m', { batch_timeout_ms: 200, batch_timeout_per_row_ms: 50 }), 8, 999)).toBe(600);
    expect(batchTimeoutMs(spec('m', { batch_timeout_per_row_ms: 10 }), 4, 300)).toBe(340);
  });
  test('N failures in the window make the model unavailable with exit code, OOM flag and last lines; backoff doubles', () => {
    const f = new FailureTracker(100, 400);
    expect([f.nextDelay(), f.nextDelay(), f.nextDelay(), f.nextDelay()]).toEqual([100, 200, 400, 400]);
    expect(f.record({ at: 0, message: 'm1', lastLines: [] }, 3, 1000)).toBeUndefined();
    expect(f.record({ at: 2000, message: 'm2', lastLines: [] }, 3, 1000)).toBeUndefined(); // the first fell out of the window
    expect(f.record({ at: 2500, message: 'm3', lastLines: [] }, 3, 1000)).toBeUndefined();
    const v = f.record({ at: 2600, message: 'copy died', exitCode: 137, oomKilled: true, lastLines: ['a', 'allocating'] }, 3, 1000)!;
    expect(v.reason).toMatch(/3 copy failures within 1000 ms.*copy died \(exit code 137, OOM killed\); last log lines: a \| allocating/);
    f.reset();
    expect(f.unavailable).toBeUndefined();
    expect(f.nextDelay()).toBe(100);
  });
  test('after a verdict, a retry waits out the load backoff (doubling per verdict) and one more failure gives the verdict again', () => {
    const f = new FailureTracker(100, 30_000);
    for (let i = 0; i < 3; i++) f.record({ at: 1000 + i, message: `m${i}`, lastLines: [] }, 3, 60_000);
    expect(f.unavailable).toBeDefined();
    expect(f.retryAt()).toBe(1002 + 1000); // at least 1 s after the verdict
    f.retry();
    expect(f.unavailable).toBeUndefined();
    const again = f.record({ at: 5000, message: 'still broken', lastLines: [] }, 3, 60_000);
    expect(again).toBeDefined(); // the failures in the window were kept
    expect(f.retryAt()).toBe(5000 + 2000); // the second verdict in a row doubles the wait
    f.reset();
    expect(f.retryAt()).toBe(0);
  });
  test('a batch hang timeout never exceeds what setTimeout can hold', () => {
    expect(batchTimeoutMs(spec('m'), 1, 2 ** 40)).toBe(2 ** 31 - 1);
  });
});

describe('adoption plan', () => {
  const s = spec('m');
  const fp = fingerprint(s);
  const h = (copyId: string, over: Partial<CopyHandle> = {}): CopyHandle => ({ kind: 'docker', copyId, model: 'm', owner: 'b', runtimeId: `c-${copyId}`, name: copyId, running: true, fingerprint: fp, ...over });
  const p = (copyId: string, over: Partial<Placement> = {}): Placement => ({
    copyId, model: 'm', version: '1', brokerId: 'b', fingerprint: fp, state: 'ready', runtime: 'docker', startedAt: 1, updatedAt: 1,
    metadata: { name: 'm', version: '1', maxBatch: 1, inputs: [], outputs: [] }, ...over,
  });
  test('adopts running copies with a placement and the same spec; removes the rest', () => {
    const plan = planAdoption(
      [h('ok'), h('exited', { running: false }), h('nodata'), h('noready'), h('changed'), h('gone', { model: 'x' }), h('gpu1', { gpus: ['1'] }), h('gpu1b')],
      [p('ok'), p('exited'), p('noready', { metadata: undefined }), p('changed', { fingerprint: 'other' }), p('gone', { model: 'x' }), p('gpu1', { gpus: ['1'] }), p('gpu1b', { gpus: ['1'] }), p('orphan')],
      [s],
      fingerprint,
    );
    expect(plan.adopt.map((a) => a.handle.copyId)).toEqual(['ok', 'gpu1']);
    expect(Object.fromEntries(plan.remove.map((r) => [r.handle.copyId, r.why]))).toEqual({
      exited: 'not running', nodata: 'no placement record', noready: 'it never sent READY', changed: 'its model spec changed',
      gone: 'model x is no longer registered', gpu1b: 'its GPUs are taken by another adopted copy',
    });
    expect(plan.forget.map((x) => x.copyId)).toEqual(['orphan']);
  });
  test('fingerprint changes with image, version, env and hardening, not with scaling fields', () => {
    expect(fingerprint(spec('m', { image: 'y' }))).not.toBe(fp);
    expect(fingerprint(spec('m', { version: '2' }))).not.toBe(fp);
    expect(fingerprint(spec('m', { memory_mb: 64 }))).not.toBe(fp);
    expect(fingerprint(spec('m', { max_replicas: 9, idle_ttl_ms: 5 }))).toBe(fp);
  });
});

describe('image pulls: registry and credentials', () => {
  test('registry host of an image', () => {
    expect(registryOf('tensorbroker/simple:dev')).toBe('docker.io');
    expect(registryOf('ubuntu')).toBe('docker.io');
    expect(registryOf('127.0.0.1:5000/tb/simple:v1')).toBe('127.0.0.1:5000');
    expect(registryOf('ghcr.io/org/img')).toBe('ghcr.io');
    expect(registryOf('localhost/img')).toBe('localhost');
  });
  test('env credentials only for TB_REGISTRY_SERVER, then docker config.json auths only for the registry they name', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-dcfg-'));
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ auths: { 'reg.example:5000': { auth: Buffer.from('u1:p:1').toString('base64') }, 'https://index.docker.io/v1/': { username: 'hub', password: 'hp' } } }));
    const env = { DOCKER_CONFIG: dir };
    expect(findAuth('reg.example:5000/a/b:1', env)).toEqual({ username: 'u1', password: 'p:1', serveraddress: 'reg.example:5000' });
    expect(findAuth('library/x', env)).toEqual({ username: 'hub', password: 'hp', serveraddress: 'https://index.docker.io/v1/' });
    expect(findAuth('other.example/x', env)).toBeUndefined();
    // No TB_REGISTRY_SERVER: env credentials go nowhere (a model entry may name a hostile registry).
    expect(findAuth('other.example/x', { ...env, TB_REGISTRY_USERNAME: 'e', TB_REGISTRY_PASSWORD: 'p' })).toBeUndefined();
    expect(findAuth('library/x', { TB_REGISTRY_USERNAME: 'e', TB_REGISTRY_PASSWORD: 'p', DOCKER_CONFIG: '/nonexistent' })).toBeUndefined();
    expect(findAuth('other.example/x', { ...env, TB_REGISTRY_USERNAME: 'e', TB_REGISTRY_PASSWORD: 'p', TB_REGISTRY_SERVER: 'other.example' })).toEqual({ username: 'e', password: 'p', serveraddress: 'other.example' });
    // A config.json entry goes only to its exact host (not to a host that merely contains it).
    expect(findAuth('reg.example:5001/a/b:1', env)).toBeUndefined();
    expect(findAuth('evil.reg.example:5000/a/b:1', env)).toBeUndefined();
    expect(findAuth('other.example/x', { ...env, TB_REGISTRY_USERNAME: 'e', TB_REGISTRY_PASSWORD: 'p', TB_REGISTRY_SERVER: 'reg.example:5000' })).toBeUndefined();
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

describe('container hardening', () => {
  test('safe by default: no privileges, no capabilities, read-only root with a tmpfs, pids limit, default memory/CPU, rotated logs', () => {
    expect(hardenedHostConfig()).toEqual({
      SecurityOpt: ['no-new-privileges:true'], CapDrop: ['ALL'], ReadonlyRootfs: true, PidsLimit: 512,
      Tmpfs: { '/tmp': 'rw,nosuid,nodev,noexec,size=64m' },
      Memory: DEFAULT_LIMITS.memoryBytes, MemorySwap: DEFAULT_LIMITS.memoryBytes, NanoCpus: DEFAULT_LIMITS.cpus * 1e9,
      LogConfig: { Type: 'json-file', Config: { 'max-size': '10m', 'max-file': '3' } },
    });
    const hc = hardenedHostConfig({ memoryMb: 256, cpus: 1.5, readOnlyRoot: false, tmpfsMb: 64, pidsLimit: 64 });
    expect(hc).toMatchObject({ Memory: 256 * 1024 * 1024, MemorySwap: 256 * 1024 * 1024, NanoCpus: 1.5e9, ReadonlyRootfs: false, PidsLimit: 64 });
    expect(hc.Tmpfs).toBeUndefined();
  });
  test('defaults are configurable (0 = no limit) from options or TB_COPY_* env', () => {
    const d = hostDefaultsFromEnv({ TB_COPY_MEMORY_MB: '512', TB_COPY_CPUS: '0.5', TB_COPY_LOG_MAX_SIZE: '5m', TB_COPY_LOG_MAX_FILES: '2' });
    expect(d).toEqual({ memoryBytes: 512 * 1024 * 1024, cpus: 0.5, logMaxSize: '5m', logMaxFiles: 2 });
    expect(hardenedHostConfig(undefined, d)).toMatchObject({ Memory: 512 * 1024 * 1024, NanoCpus: 0.5e9, LogConfig: { Config: { 'max-size': '5m', 'max-file': '2' } } });
    const none = hardenedHostConfig(undefined, hostDefaultsFromEnv({ TB_COPY_MEMORY_MB: '0', TB_COPY_CPUS: '0' }));
    expect(none.Memory).toBeUndefined();
    expect(none.NanoCpus).toBeUndefined();
    expect(hostDefaultsFromEnv({ TB_COPY_MEMORY_MB: 'lots', TB_COPY_LOG_MAX_SIZE: '1; rm', TB_COPY_LOG_MAX_FILES: '0' })).toEqual({});
  });
  test("a copy's container mounts only its own link folder, read-only", () => {
    expect(linkBind({ socketDir: '/tmp/tensorbroker/b1/copies/abc', copyDir: 'copies/abc' })).toBe('/tmp/tensorbroker/b1/copies/abc:/run/tensorbroker:ro');
    expect(linkBind({ socketDir: '/tmp/tensorbroker/b1/copies/abc', copyDir: 'copies/abc' }, '/host/tb/b1')).toBe('/host/tb/b1/copies/abc:/run/tensorbroker:ro');
  });
});
