/**
 * KubeDeployments (task-manager/kubernetes/kube-deployments.ts) with the real
 * @kubernetes/client-node against the loopback FAKE API server — a fake, not
 * Kubernetes. The client runs in a child process on dist/ (npm run build
 * first) because Jest cannot load the ESM client without
 * --experimental-vm-modules; it needs Node ≥ 22.19 (CI runs Node 24). On an
 * older node the suite is skipped with the reason in its name; TB_NODE24 may
 * point at a newer node binary for local runs.
 */
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';
import { SPEC_DEFAULTS } from '../../core/model-spec';
import { buildModelDeployment, LABELS, type KubeModelSpec } from '../../task-manager/kubernetes/manifests';
import { FakeKubeApi } from '../helpers/fake-kube-api';

const NODE = process.env.TB_NODE24 || process.execPath;
const [major, minor] = String(spawnSync(NODE, ['-p', 'process.versions.node']).stdout).trim().split('.').map(Number);
const SUPPORTED = major > 22 || (major === 22 && minor >= 19);
const suite = SUPPORTED ? describe : describe.skip;
const NS = 'tb';

function deployment(over: Partial<KubeModelSpec> = {}, replicas = 1) {
  const spec = { ...SPEC_DEFAULTS, name: 'detector', image: 'det:1', env: {}, source: 'file', ...over } as KubeModelSpec;
  return buildModelDeployment({ spec, brokerId: 'broker-a', fingerprint: 'f1', linkEndpoint: 'tcp://10.0.0.7:7788', curvePublicKey: 'k', heartbeatMs: 1000, replicas });
}

class Driver {
  private next = 1;
  private readonly waiting = new Map<number, (m: { result?: unknown; error?: Record<string, unknown> }) => void>();
  readonly connected: Promise<void>;
  /** Unsolicited lines (pod changes from watchPods). */
  readonly changes: Record<string, unknown>[] = [];
  private onChange?: () => void;
  stderr = '';

  constructor(private readonly child: ChildProcessWithoutNullStreams) {
    let onConnect!: () => void;
    this.connected = new Promise((resolve) => (onConnect = resolve));
    child.stderr.on('data', (c: Buffer) => (this.stderr += c.toString()));
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      const { id, ...m } = JSON.parse(line) as { id?: number; result?: unknown; error?: Record<string, unknown> };
      if (id === undefined) {
        this.changes.push(m);
        this.onChange?.();
        return;
      }
      if (id === 0) onConnect();
      this.waiting.get(id)?.(m);
      this.waiting.delete(id);
    });
    child.on('exit', (code) => {
      for (const w of this.waiting.values()) w({ error: { message: `driver exited ${code}: ${this.stderr}` } });
    });
  }

  /** Resolves when a pod change matching `pred` has arrived (already or later). */
  change(pred: (c: Record<string, unknown>) => boolean, timeoutMs = 20_000): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no such pod change; got ${JSON.stringify(this.changes)}`)), timeoutMs);
      const check = () => {
        const hit = this.changes.find(pred);
        if (hit) {
          clearTimeout(timer);
          this.onChange = undefined;
          resolve(hit);
        }
      };
      this.onChange = check;
      check();
    });
  }

  call(method: string, ...args: unknown[]): Promise<{ result?: unknown; error?: Record<string, unknown> }> {
    const id = this.next++;
    return new Promise((resolve) => {
      this.waiting.set(id, resolve);
      this.child.stdin.write(JSON.stringify({ id, method, args }) + '\n');
    });
  }
}

suite(SUPPORTED ? 'KubeDeployments with @kubernetes/client-node against the fake API server' : `KubeDeployments: SKIPPED, node ${major}.${minor} < 22.19 cannot load @kubernetes/client-node 2 (set TB_NODE24)`, () => {
  let api: FakeKubeApi;
  let child: ChildProcessWithoutNullStreams;
  let kube: Driver;

  beforeEach(async () => {
    api = new FakeKubeApi();
    const url = await api.start();
    child = spawn(NODE, [path.join(__dirname, '..', 'helpers', 'kube-client-driver.js'), url, NS], { stdio: 'pipe' });
    kube = new Driver(child);
    await kube.connected;
  });
  afterEach(async () => {
    child.stdin.end();
    await new Promise((resolve) => (child.exitCode !== null ? resolve(null) : child.once('exit', resolve)));
    await api.close();
  });

  test('ensure creates the Deployment, then updates its template without touching replicas or selector', async () => {
    const d = deployment({}, 2);
    expect(await kube.call('ensure', d)).toEqual({ result: 'created' });
    expect(api.requests).toContain(`POST /apis/apps/v1/namespaces/${NS}/deployments`);
    expect(api.pods(NS)).toHaveLength(2);
    await kube.call('scale', d.metadata.name, 3);
    const next = deployment({ image: 'det:2', version: '2' }, 1);
    expect(await kube.call('ensure', next)).toEqual({ result: 'updated' });
    const stored = api.deployment(NS, d.metadata.name)!;
    expect(stored.spec.replicas).toBe(3);
    expect(stored.spec.template.spec.containers[0].image).toBe('det:2');
    expect(stored.spec.selector).toEqual(d.spec.selector);
    expect(api.pods(NS).map((p) => p.spec.containers[0].image)).toEqual(['det:2', 'det:2', 'det:2']);
  });

  test('scale goes through /scale with a merge patch; replicas reads it back', async () => {
    const d = deployment({}, 1);
    await kube.call('ensure', d);
    expect(await kube.call('scale', d.metadata.name, 0)).toEqual({});
    expect(api.requests).toContain(`PATCH /apis/apps/v1/namespaces/${NS}/deployments/${d.metadata.name}/scale`);
    expect(api.pods(NS)).toHaveLength(0);
    expect(await kube.call('replicas', d.metadata.name)).toEqual({ result: 0 });
    const bad = await kube.call('scale', d.metadata.name, -1);
    expect(bad.error).toMatchObject({ name: 'KubeApiError', code: 422, reason: 'Invalid' });
  });

  test('pods carry the problem Kubernetes reports; the pod Ready condition is reported apart', async () => {
    const d = deployment({ run_on_gpu: true }, 2);
    await kube.call('ensure', d);
    const [a, b] = api.pods(NS);
    api.setPodState(NS, a.metadata.name, 'Unschedulable');
    api.setPodState(NS, b.metadata.name, 'Ready');
    const { result } = await kube.call('pods', d.spec.selector.matchLabels);
    const byName = new Map((result as { name: string }[]).map((p) => [p.name, p]));
    expect(byName.get(a.metadata.name)).toMatchObject({
      name: a.metadata.name, podReady: false, running: false, restarts: 0, terminating: false,
      problem: { reason: 'Unschedulable', message: 'Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.', stuck: true },
    });
    expect(byName.get(b.metadata.name)).toMatchObject({ name: b.metadata.name, podReady: true, running: true, ip: '10.0.0.9', labels: { [LABELS.model]: 'detector' } });
    expect(byName.get(b.metadata.name)).not.toHaveProperty('problem');
  });

  test('errors carry the Status: 422 for an invalid Deployment, 404 on a missing one; remove is idempotent', async () => {
    const bad = deployment({ run_on_gpu: true, gpus_per_copy: 1 });
    (bad.spec.template.spec.containers as { resources: { requests: Record<string, string> } }[])[0].resources.requests['nvidia.com/gpu'] = '2';
    const invalid = await kube.call('ensure', bad);
    expect(invalid.error).toMatchObject({ name: 'KubeApiError', code: 422, reason: 'Invalid' });
    expect(String(invalid.error!.message)).toContain('must be equal to nvidia.com/gpu limit');
    expect((await kube.call('replicas', 'nope')).error).toMatchObject({ code: 404, reason: 'NotFound' });
    const d = deployment();
    await kube.call('ensure', d);
    expect(await kube.call('remove', d.metadata.name)).toEqual({ result: true });
    expect(await kube.call('remove', d.metadata.name)).toEqual({ result: false });
    expect(api.pods(NS)).toHaveLength(0);
  });

  test('watchPods: the informer lists, follows changes, and re-lists after 410 Gone', async () => {
    const d = deployment({}, 1);
    await kube.call('ensure', d);
    const [pod] = api.pods(NS);
    expect(await kube.call('watchPods', d.spec.selector.matchLabels)).toEqual({ result: 'watching' });
    await kube.change((c) => c.change === 'add' && (c.pod as { name: string }).name === pod.metadata.name);
    api.setPodState(NS, pod.metadata.name, 'ImagePullBackOff');
    await kube.change((c) => (c.pod as { problem?: { reason: string } }).problem?.reason === 'ImagePullBackOff');

    // The watch dropped, a change it missed, the history compacted past the
    // client's version (all in this tick, before the client reconnects): the
    // client watches again from its version, gets 410 Gone, lists again (and so
    // sees the change) and watches from the new version.
    const lists = () => api.requests.filter((r) => r === `GET /api/v1/namespaces/${NS}/pods`).length;
    const listsBefore = lists();
    api.dropWatches();
    api.setPodState(NS, pod.metadata.name, 'CrashLoopBackOff');
    api.compact();
    await kube.change((c) => (c.pod as { problem?: { reason: string } }).problem?.reason === 'CrashLoopBackOff');
    expect(api.goneSent).toBe(1);
    expect(lists()).toBeGreaterThan(listsBefore);
    // And the new watch delivers later changes.
    api.setPodState(NS, pod.metadata.name, 'OOMKilled');
    await kube.change((c) => (c.pod as { problem?: { reason: string } }).problem?.reason === 'OOMKilled');
    expect(kube.changes.some((c) => c.watchError !== undefined)).toBe(false);
  });
});
