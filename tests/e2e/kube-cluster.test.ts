/**
 * Opt-in: the Kubernetes runtime's API calls against a REAL cluster (kind, k3s
 * or a GPU cluster), run only when TB_K8S_TEST_KUBECONFIG names a kubeconfig.
 * Otherwise the suite reports itself as skipped (a todo with the reason) and
 * runs nothing. What the fake cannot show: that a real API server accepts the
 * model Deployment and its Secret, that the ReplicaSet runs the pod and
 * scales it to zero through /scale, and that the copy's env resolves.
 *
 *   TB_K8S_TEST_KUBECONFIG=~/.kube/config [TB_K8S_TEST_NAMESPACE=default]
 *   [TB_K8S_TEST_IMAGE=tensorbroker/simple:dev] npx jest tests/e2e/kube-cluster.test.ts
 *
 * The image must be pullable by the cluster (or loaded: `kind load docker-image`).
 * Needs `npm run build` (the client runs in a child process on dist/).
 */
import { spawn } from 'node:child_process';
import path from 'node:path';

const KUBECONFIG = process.env.TB_K8S_TEST_KUBECONFIG;
const NS = process.env.TB_K8S_TEST_NAMESPACE || 'default';
const IMAGE = process.env.TB_K8S_TEST_IMAGE || 'tensorbroker/simple:dev';
const ROOT = path.resolve(__dirname, '..', '..');

// Runs in a child process: @kubernetes/client-node 2 is ESM, which Jest cannot load.
const SCRIPT = `
const { KubeDeployments } = require(${JSON.stringify(path.join(ROOT, 'dist/task-manager/kubernetes/kube-deployments.js'))});
const { buildModelDeployment } = require(${JSON.stringify(path.join(ROOT, 'dist/task-manager/kubernetes/manifests.js'))});
const { SPEC_DEFAULTS } = require(${JSON.stringify(path.join(ROOT, 'dist/core/model-spec.js'))});
const zmq = require('zeromq');
const until = async (what, fn, ms = 180000) => { const t = Date.now(); for (;;) { const v = await fn(); if (v) return v; if (Date.now() - t > ms) throw new Error('timed out: ' + what); await new Promise((r) => setTimeout(r, 1000)); } };
(async () => {
  const kube = await KubeDeployments.connect({ namespace: ${JSON.stringify(NS)}, kubeconfig: ${JSON.stringify(KUBECONFIG ?? '')} });
  const spec = { ...SPEC_DEFAULTS, name: 'cluster-test', image: ${JSON.stringify(IMAGE)}, env: {}, source: 'file', memory_mb: 128, cpus: 0.2 };
  const brokerId = 'tb-cluster-test-' + process.pid;
  const d = buildModelDeployment({ spec, brokerId, fingerprint: 'f1', linkEndpoint: 'tcp://127.0.0.1:1', curvePublicKey: zmq.curveKeyPair().publicKey, heartbeatMs: 1000, replicas: 1, linkSecret: 'placeholder' });
  const name = d.metadata.name;
  const pair = zmq.curveKeyPair();
  (d.spec.template.spec.containers[0].env).forEach((e) => { if (e.valueFrom && e.valueFrom.secretKeyRef) e.valueFrom.secretKeyRef.name = name; });
  await kube.createSecret(name, { 'copy-secret': 'ab', 'curve-public-key': pair.publicKey, 'curve-secret-key': pair.secretKey }, { 'app.kubernetes.io/managed-by': 'tensorbroker' });
  try {
    console.log(JSON.stringify({ step: 'ensure', result: await kube.ensure(d) }));
    const pods = await until('a pod of the Deployment', async () => (await kube.pods(d.spec.selector.matchLabels)).filter((p) => p.running || p.problem));
    console.log(JSON.stringify({ step: 'pod', pod: pods[0] }));
    await kube.scale(name, 0);
    console.log(JSON.stringify({ step: 'scaled', replicas: await kube.replicas(name) }));
    await until('no pod left', async () => (await kube.pods(d.spec.selector.matchLabels)).length === 0);
    console.log(JSON.stringify({ step: 'zero' }));
  } finally {
    await kube.remove(name).catch(() => undefined);
    await kube.removeSecret(name).catch(() => undefined);
  }
})().catch((err) => { console.log(JSON.stringify({ step: 'error', message: String(err && err.message) })); process.exit(1); });
`;

if (!KUBECONFIG) {
  console.warn('SKIPPED: the real-cluster suite (tests/e2e/kube-cluster.test.ts) runs only when TB_K8S_TEST_KUBECONFIG names a kubeconfig (kind, k3s or a GPU cluster)');
  describe('the kubernetes runtime against a real cluster', () => {
    test.todo('SKIPPED: set TB_K8S_TEST_KUBECONFIG=<kubeconfig> to run it against a real cluster');
  });
} else {
  describe('the kubernetes runtime against a real cluster', () => {
    test('a model Deployment and its Secret are accepted, its pod runs, /scale takes it to zero', async () => {
      const child = spawn(process.execPath, ['-e', SCRIPT], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr.on('data', (d: Buffer) => (out += d.toString()));
      const code = await new Promise<number | null>((r) => child.once('exit', r));
      const steps = out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { step: string; pod?: { problem?: { message: string } }; replicas?: number });
      expect({ code, steps: steps.map((s) => s.step) }).toEqual({ code: 0, steps: ['ensure', 'pod', 'scaled', 'zero'] });
      // A pod with a problem (an image the cluster cannot pull) is reported in Kubernetes' words: print it.
      const pod = steps.find((s) => s.step === 'pod')!.pod!;
      if (pod.problem) console.warn(`the pod had a problem: ${pod.problem.message}`);
      expect(steps.find((s) => s.step === 'scaled')!.replicas).toBe(0);
    }, 600_000);
  });
}
