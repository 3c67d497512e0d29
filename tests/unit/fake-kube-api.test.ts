/**
 * The FAKE Kubernetes API server (tests/helpers/fake-kube-api.ts) answers as
 * the real one does on the paths the Kubernetes runtime will use, so the
 * runtime's tests against it mean something. Plain fetch here; the runtime
 * will use @kubernetes/client-node.
 */
import { SPEC_DEFAULTS } from '../../core/model-spec';
import { buildModelDeployment, type KubeModelSpec } from '../../task-manager/kubernetes/manifests';
import { FakeKubeApi, matchesSelector } from '../helpers/fake-kube-api';
import type { KubeObject } from '../helpers/kustomize-lite';

const NS = 'tb';
const DEPLOYMENTS = `/apis/apps/v1/namespaces/${NS}/deployments`;
const PODS = `/api/v1/namespaces/${NS}/pods`;

function deployment(over: Partial<KubeModelSpec> = {}, replicas = 2): KubeObject {
  const spec = { ...SPEC_DEFAULTS, name: 'detector', image: 'det:1', env: {}, source: 'file', ...over } as KubeModelSpec;
  return buildModelDeployment({
    spec, brokerId: 'broker-a', fingerprint: 'f1', linkEndpoint: 'tcp://10.0.0.7:7788', curvePublicKey: 'k', heartbeatMs: 1000, replicas,
  }) as unknown as KubeObject;
}

/** Reads newline-delimited watch events until `until` says stop (or the stream ends). */
async function watchEvents(url: string, until: (events: KubeObject[]) => boolean, abort = new AbortController()): Promise<KubeObject[]> {
  const res = await fetch(url, { signal: abort.signal });
  const events: KubeObject[] = [];
  const reader = res.body!.getReader();
  let buf = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += Buffer.from(value).toString('utf8');
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        events.push(JSON.parse(buf.slice(0, nl)) as KubeObject);
        buf = buf.slice(nl + 1);
      }
      if (until(events)) break;
    }
  } finally {
    abort.abort();
  }
  return events;
}

describe('the fake Kubernetes API server', () => {
  let api: FakeKubeApi;
  let base: string;
  const call = async (method: string, path: string, body?: unknown, type = 'application/json') => {
    const res = await fetch(base + path, { method, headers: { 'content-type': type }, body: body === undefined ? undefined : JSON.stringify(body) });
    return { code: res.status, body: (await res.json()) as KubeObject };
  };

  beforeEach(async () => {
    api = new FakeKubeApi();
    base = await api.start();
  });
  afterEach(async () => {
    await api.close();
  });

  test('create a Deployment: 201, its pods appear Pending with the template labels; a second create is 409 AlreadyExists', async () => {
    const d = deployment();
    const created = await call('POST', DEPLOYMENTS, d);
    expect(created.code).toBe(201);
    expect(created.body.metadata.resourceVersion).toMatch(/^\d+$/);
    const sel = Object.entries(d.spec.selector.matchLabels).map(([k, v]) => `${k}=${v}`).join(',');
    const pods = await call('GET', `${PODS}?labelSelector=${encodeURIComponent(sel)}`);
    expect(pods.body.kind).toBe('PodList');
    expect(pods.body.items).toHaveLength(2);
    for (const p of pods.body.items) {
      expect(p.status.phase).toBe('Pending');
      expect(p.metadata.name.startsWith(d.metadata.name + '-')).toBe(true);
      expect(p.metadata.labels['tensorbroker.io/model']).toBe('detector');
    }
    const again = await call('POST', DEPLOYMENTS, d);
    expect(again.code).toBe(409);
    expect(again.body).toMatchObject({ kind: 'Status', status: 'Failure', reason: 'AlreadyExists', code: 409, details: { name: d.metadata.name, group: 'apps' } });
  });

  test('404 NotFound and 422 Invalid as Status bodies, with the rule that failed', async () => {
    const missing = await call('GET', `${DEPLOYMENTS}/nope`);
    expect(missing.code).toBe(404);
    expect(missing.body).toMatchObject({ kind: 'Status', reason: 'NotFound', code: 404, message: 'deployments.apps "nope" not found' });
    expect((await call('GET', `${PODS}/nope`)).body.message).toBe('pods "nope" not found');

    const bad = deployment({ run_on_gpu: true, gpus_per_copy: 1 });
    bad.spec.template.spec.containers[0].resources.requests['nvidia.com/gpu'] = '2';
    const invalid = await call('POST', DEPLOYMENTS, bad);
    expect(invalid.code).toBe(422);
    expect(invalid.body).toMatchObject({ kind: 'Status', reason: 'Invalid', code: 422 });
    expect(invalid.body.details.causes[0].message).toMatch(/must be equal to nvidia.com\/gpu limit/);
    const badType = deployment();
    badType.spec.replicas = 'two';
    expect((await call('POST', DEPLOYMENTS, badType)).code).toBe(422);
    expect(api.pods(NS)).toHaveLength(0);
  });

  test('scale through /scale: pods follow the replicas; a negative count is 422', async () => {
    const d = deployment({}, 1);
    await call('POST', DEPLOYMENTS, d);
    const up = await call('PATCH', `${DEPLOYMENTS}/${d.metadata.name}/scale`, { spec: { replicas: 3 } }, 'application/merge-patch+json');
    expect(up.code).toBe(200);
    expect(up.body).toMatchObject({ kind: 'Scale', spec: { replicas: 3 }, status: { replicas: 3 } });
    expect(api.pods(NS)).toHaveLength(3);
    await call('PATCH', `${DEPLOYMENTS}/${d.metadata.name}/scale`, { spec: { replicas: 0 } }, 'application/merge-patch+json');
    expect(api.pods(NS)).toHaveLength(0);
    expect((await call('PATCH', `${DEPLOYMENTS}/${d.metadata.name}/scale`, { spec: { replicas: -1 } }, 'application/merge-patch+json')).code).toBe(422);
    const plainJson = await call('PATCH', `${DEPLOYMENTS}/${d.metadata.name}/scale`, { spec: { replicas: 1 } });
    expect(plainJson.code).toBe(415);
    expect(plainJson.body.reason).toBe('UnsupportedMediaType');
  });

  test('a template change replaces the pods; a selector change is 422 (immutable); a stale PUT is 409 Conflict', async () => {
    const d = deployment({}, 1);
    const created = (await call('POST', DEPLOYMENTS, d)).body;
    const [before] = api.pods(NS);
    const next = deployment({ image: 'det:2', version: '2' }, 1);
    const put = await call('PUT', `${DEPLOYMENTS}/${d.metadata.name}`, { ...next, metadata: { ...next.metadata, resourceVersion: created.metadata.resourceVersion } });
    expect(put.code).toBe(200);
    expect(put.body.metadata.generation).toBe(2);
    const [after] = api.pods(NS);
    expect(after.metadata.name).not.toBe(before.metadata.name);
    expect(after.spec.containers[0].image).toBe('det:2');

    const stale = await call('PUT', `${DEPLOYMENTS}/${d.metadata.name}`, { ...next, metadata: { ...next.metadata, resourceVersion: created.metadata.resourceVersion } });
    expect(stale.code).toBe(409);
    expect(stale.body.reason).toBe('Conflict');

    const moved = JSON.parse(JSON.stringify(put.body)) as KubeObject;
    moved.spec.selector.matchLabels['tensorbroker.io/copies'] = 'other';
    moved.spec.template.metadata.labels['tensorbroker.io/copies'] = 'other';
    const immutable = await call('PUT', `${DEPLOYMENTS}/${d.metadata.name}`, moved);
    expect(immutable.code).toBe(422);
    expect(immutable.body.message).toContain('spec.selector: field is immutable');
  });

  test('watch from a resourceVersion streams the pod states a kubelet reports, with Kubernetes reasons', async () => {
    const d = deployment({}, 1);
    const created = (await call('POST', DEPLOYMENTS, d)).body;
    const [pod] = api.pods(NS);
    const done = watchEvents(`${base}${PODS}?watch=true&resourceVersion=${created.metadata.resourceVersion}`, (ev) => ev.length >= 7);
    const states = ['Unschedulable', 'ImagePullBackOff', 'Running', 'Ready', 'CrashLoopBackOff', 'OOMKilled'] as const;
    for (const s of states) api.setPodState(NS, pod.metadata.name, s);
    const events = await done;
    expect(events.map((e) => e.type)).toEqual(['ADDED', 'MODIFIED', 'MODIFIED', 'MODIFIED', 'MODIFIED', 'MODIFIED', 'MODIFIED']);
    const st = events.map((e) => e.object.status);
    expect(st[1].conditions[0]).toMatchObject({ type: 'PodScheduled', status: 'False', reason: 'Unschedulable' });
    expect(st[2].containerStatuses[0].state.waiting.reason).toBe('ImagePullBackOff');
    expect(st[3]).toMatchObject({ phase: 'Running' });
    expect(st[4].conditions).toContainEqual({ type: 'Ready', status: 'True' });
    expect(st[5].containerStatuses[0]).toMatchObject({ restartCount: 1, state: { waiting: { reason: 'CrashLoopBackOff' } } });
    expect(st[6].containerStatuses[0]).toMatchObject({ restartCount: 2, lastState: { terminated: { reason: 'OOMKilled', exitCode: 137 } } });
    const rvs = events.map((e) => Number(e.object.metadata.resourceVersion));
    expect([...rvs].sort((a, b) => a - b)).toEqual(rvs);
  });

  test('a watch from a compacted resourceVersion gets 410 Gone (Expired); a re-list then a watch from its version works', async () => {
    const d = deployment({}, 1);
    const created = (await call('POST', DEPLOYMENTS, d)).body;
    api.compact();
    const expired = await watchEvents(`${base}${PODS}?watch=1&resourceVersion=${created.metadata.resourceVersion}`, () => false);
    expect(expired).toEqual([{ type: 'ERROR', object: expect.objectContaining({ kind: 'Status', code: 410, reason: 'Expired' }) }]);

    const list = (await call('GET', PODS)).body;
    const [pod] = list.items;
    const next = watchEvents(`${base}${PODS}?watch=true&resourceVersion=${list.metadata.resourceVersion}`, (ev) => ev.length >= 1);
    // From a version, the change arrives whether the watch was registered before or after it.
    api.setPodState(NS, pod.metadata.name, 'Ready');
    const [ev] = await next;
    expect(ev).toMatchObject({ type: 'MODIFIED', object: { metadata: { name: pod.metadata.name }, status: { phase: 'Running' } } });
  });

  test('deleting a pod of a Deployment gets it replaced; deleting the Deployment removes its pods', async () => {
    const d = deployment({}, 2);
    await call('POST', DEPLOYMENTS, d);
    const [first] = api.pods(NS);
    expect((await call('DELETE', `${PODS}/${first.metadata.name}`)).code).toBe(200);
    const names = api.pods(NS).map((p) => p.metadata.name);
    expect(names).toHaveLength(2);
    expect(names).not.toContain(first.metadata.name);
    expect((await call('DELETE', `${DEPLOYMENTS}/${d.metadata.name}`)).code).toBe(200);
    expect(api.pods(NS)).toHaveLength(0);
    expect((await call('GET', `${DEPLOYMENTS}/${d.metadata.name}`)).code).toBe(404);
  });

  test('label selectors', () => {
    const l = { a: '1', b: '2' };
    expect(matchesSelector(l, 'a=1,b==2')).toBe(true);
    expect(matchesSelector(l, 'a!=1')).toBe(false);
    expect(matchesSelector(l, 'c')).toBe(false);
    expect(matchesSelector(l, '!c,a')).toBe(true);
  });
});
