/**
 * podProblem() reads the pod statuses the fake API server produces in the
 * shapes a kubelet reports, and gives the readiness reason in Kubernetes' words.
 */
import { SPEC_DEFAULTS } from '../../core/model-spec';
import { buildModelDeployment, type KubeModelSpec } from '../../task-manager/kubernetes/manifests';
import { podProblem } from '../../task-manager/kubernetes/pod-status';
import { FakeKubeApi, type PodState } from '../helpers/fake-kube-api';

describe('podProblem', () => {
  let api: FakeKubeApi;
  let podName: string;
  beforeAll(async () => {
    api = new FakeKubeApi();
    const base = await api.start();
    const spec = { ...SPEC_DEFAULTS, name: 'detector', image: 'det:1', env: {}, source: 'file' } as KubeModelSpec;
    const d = buildModelDeployment({ spec, brokerId: 'b', fingerprint: 'f', linkEndpoint: 'tcp://10.0.0.7:7788', curvePublicKey: 'k', heartbeatMs: 1000, replicas: 1 });
    const res = await fetch(`${base}/apis/apps/v1/namespaces/tb/deployments`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(d) });
    expect(res.status).toBe(201);
    podName = api.pods('tb')[0].metadata.name;
  });
  afterAll(async () => {
    await api.close();
  });

  const problemOf = (state: PodState) => {
    api.setPodState('tb', podName, state);
    return podProblem(api.pods('tb')[0]);
  };

  test.each<[PodState, string | undefined, boolean | undefined, RegExp | undefined]>([
    ['Pending', undefined, undefined, undefined],
    ['Running', undefined, undefined, undefined],
    ['Ready', undefined, undefined, undefined],
    ['Unschedulable', 'Unschedulable', true, /^Unschedulable: 0\/3 nodes are available: 3 Insufficient nvidia.com\/gpu\.$/],
    ['ImagePullBackOff', 'ImagePullBackOff', true, /^ImagePullBackOff: Back-off pulling image "det:1"$/],
    ['CrashLoopBackOff', 'CrashLoopBackOff', true, /^CrashLoopBackOff: back-off 10s restarting failed container=model; last exit 1 \(Error\)$/],
    ['OOMKilled', 'OOMKilled', true, /^OOMKilled: the copy ran out of memory \(exit 137\) \(2 restarts\)$/],
  ])('%s', (state, reason, stuck, message) => {
    const p = problemOf(state);
    if (reason === undefined) {
      expect(p).toBeUndefined();
      return;
    }
    expect(p).toMatchObject({ reason, stuck });
    expect(p!.message).toMatch(message!);
  });

  test('a pod without status has no problem yet; a Failed pod is stuck', () => {
    expect(podProblem({})).toBeUndefined();
    expect(podProblem({ status: { phase: 'Failed' } })).toEqual({ reason: 'Failed', message: 'Failed: the pod failed', stuck: true });
  });
});
