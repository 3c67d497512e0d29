/**
 * `tensorbroker serve --runtime kubernetes` (dist/, the real
 * @kubernetes/client-node) against the loopback FAKE API server and a FAKE
 * kubelet (tests/helpers/fake-kubelet.ts) — fakes, not Kubernetes. The pods
 * the fake API "runs" are real model processes (the `simple` example on the
 * Node SDK) started by the fake kubelet with the env the Deployment gives
 * them, connecting to the broker over the real CURVE-secured TCP link. Covers:
 * the Deployment per model and broker (labels, Secret, env), READY on the link
 * as the only readiness, Unschedulable / ImagePullBackOff / CrashLoopBackOff /
 * OOMKilled in the readiness reason, scale up and down and to zero through
 * /scale, a real inference through the broker, a copy without the right key
 * refused, and the Deployments removed on shutdown. Needs `npm run build`
 * and Node ≥ 22.19 (CI runs Node 24).
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zmq from 'zeromq';
import { modelMain, waitFor } from '../helpers/broker';
import { exited, startCliBroker, type CliBroker } from '../helpers/cli-broker';
import { FakeKubeApi, kubeRuntimeSuite } from '../helpers/fake-kube-api';
import { FakeKubelet } from '../helpers/fake-kubelet';
import { deploymentName, LABELS } from '../../task-manager/kubernetes/manifests';

const suite = kubeRuntimeSuite();

const NS = 'models';
const BROKER = 'broker-a';
const TOKEN = 'k8s-test-token';
const SIMPLE = modelMain('simple');

const MODELS = `
simple:
  image: tensorbroker/simple:dev
  batch_size: 4
  min_replicas: 1
  max_replicas: 3
  node_selector: { pool: cpu }
  tolerations: [{ key: dedicated, operator: Equal, value: models, effect: NoSchedule }]
  image_pull_secrets: [regcred]
zero:
  image: tensorbroker/simple:dev
  batch_size: 4
  min_replicas: 0
  max_replicas: 1
  idle_ttl_ms: 1500
  scale_down_cooldown_ms: 0
gpu:
  image: tensorbroker/simple:dev
  run_on_gpu: true
  gpus_per_copy: 2
missing:
  image: registry.example/missing:1
crashy:
  image: tensorbroker/crashy:dev
silent:
  image: tensorbroker/silent:dev
  startup_timeout_ms: 1500
sleepy:
  image: tensorbroker/sleepy:dev
  batch_size: 1
  min_replicas: 1
  max_replicas: 2
  scale_up_queue_per_copy: 2
  scale_up_cooldown_ms: 0
  env: { SLEEPY_A_MS: "150", SLEEPY_MAX_BATCH: "1" }
`;

function body(first: number) {
  const a = Array.from({ length: 16 }, (_, i) => i + first);
  return { inputs: [{ name: 'INPUT0', datatype: 'INT32', shape: [1, 16], data: a }, { name: 'INPUT1', datatype: 'INT32', shape: [1, 16], data: a }] };
}

async function infer(url: string, model: string, first: number): Promise<{ status: number; sum?: number[]; text: string }> {
  const res = await fetch(`${url}/v2/models/${model}/infer`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body(first)) });
  const text = await res.text();
  if (res.status !== 200) return { status: res.status, text };
  const out = (JSON.parse(text) as { outputs: { name: string; data: number[] }[] }).outputs.find((o) => o.name === 'OUTPUT0');
  return { status: 200, sum: out?.data, text };
}

async function readyReason(url: string, model: string): Promise<string> {
  const res = await fetch(`${url}/v2/models/${model}/ready`);
  return res.status === 200 ? 'ready' : await res.text();
}

suite('the kubernetes runtime against the FAKE API server (real model processes, CURVE link)', () => {
  let api: FakeKubeApi;
  let kubelet: FakeKubelet;
  let broker: CliBroker;
  let dir: string;

  beforeAll(async () => {
    if (!fs.existsSync(SIMPLE)) throw new Error(`${SIMPLE} is missing: run npm run build first`);
    api = new FakeKubeApi();
    await api.start();
    kubelet = new FakeKubelet(api, {
      images: { 'tensorbroker/simple:dev': [process.execPath, SIMPLE], 'tensorbroker/sleepy:dev': [process.execPath, modelMain('sleepy')], 'tensorbroker/crashy:dev': [process.execPath, '-e', 'console.error("model file not found"); process.exit(3)'],
        // Runs and never connects: Kubernetes calls its pod Ready, the broker does not.
        'tensorbroker/silent:dev': [process.execPath, '-e', 'setInterval(() => undefined, 1000)'] },
      gpus: 1,
      baseEnv: { PATH: process.env.PATH ?? '' },
      backoffMs: 300,
    });
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-k8s-'));
    fs.writeFileSync(path.join(dir, 'models.yaml'), MODELS);
    broker = await startCliBroker(['--models', path.join(dir, 'models.yaml'), '--runtime', 'kubernetes', '--broker-id', BROKER], {
      TB_K8S_API_SERVER: api.url, TB_K8S_NAMESPACE: NS, TB_ADMIN_TOKEN: TOKEN, TB_AUTOSCALE_INTERVAL_MS: '200', TB_HEARTBEAT_MS: '200', TB_LOG_LEVEL: 'debug',
    });
  }, 60_000);

  afterAll(async () => {
    if (broker && broker.child.exitCode === null) {
      broker.child.kill('SIGKILL');
      await exited(broker.child);
    }
    await kubelet?.close();
    await api?.close();
  });

  test('one Deployment per model and broker, with the labels, the Secret and the CURVE link env', async () => {
    const name = deploymentName('simple', BROKER);
    expect(name).toContain(BROKER);
    await waitFor(() => !!api.deployment(NS, name), 20_000, 'the simple Deployment');
    const d = api.deployment(NS, name)!;
    expect(d.metadata.labels).toMatchObject({ [LABELS.model]: 'simple', [LABELS.version]: '1', [LABELS.owner]: BROKER });
    expect(d.metadata.labels[LABELS.fingerprint]).toMatch(/^[0-9a-f]{16}$/);
    const pod = d.spec.template.spec;
    expect(pod.nodeSelector).toEqual({ pool: 'cpu' });
    expect(pod.tolerations).toEqual([{ key: 'dedicated', operator: 'Equal', value: 'models', effect: 'NoSchedule' }]);
    expect(pod.imagePullSecrets).toEqual([{ name: 'regcred' }]);
    const env = pod.containers[0].env as { name: string; value?: string; valueFrom?: { secretKeyRef?: { name: string } } }[];
    expect(env.find((e) => e.name === 'TB_ENDPOINT')!.value).toMatch(/^tcp:\/\/127\.0\.0\.1:\d+$/);
    expect(env.find((e) => e.name === 'TB_CURVE_SERVER_KEY')!.value).toHaveLength(40);
    // The copies' secrets come from the Secret, never written into the Deployment.
    for (const n of ['TB_COPY_SECRET', 'TB_CURVE_PUBLIC_KEY', 'TB_CURVE_SECRET_KEY']) expect(env.find((e) => e.name === n)!.valueFrom!.secretKeyRef!.name).toBe(name);
    expect(JSON.stringify(d)).not.toContain(api.secret(NS, name)!['curve-secret-key']);
    expect(api.secret(NS, name)!['curve-public-key']).toHaveLength(40);
  });

  test('a copy serves after its READY on the link; a real inference through the broker', async () => {
    await waitFor(async () => (await readyReason(broker.url, 'simple')) === 'ready', 30_000, 'simple ready');
    const r = await infer(broker.url, 'simple', 3);
    expect(r.status).toBe(200);
    expect(r.sum).toEqual(Array.from({ length: 16 }, (_, i) => 2 * (i + 3)));
  });

  test('a pod Kubernetes calls Ready is no copy until its READY on the link', async () => {
    await waitFor(() => api.pods(NS).some((p) => p.metadata.labels[LABELS.model] === 'silent' && (p.status?.conditions ?? []).some((c: { type: string; status: string }) => c.type === 'Ready' && c.status === 'True')), 20_000, 'the silent pod Ready');
    expect(await readyReason(broker.url, 'silent')).toMatch(/a copy is starting: waiting for its READY on the link|without READY on the link/);
    // Past startup_timeout_ms the reason says what Kubernetes cannot see.
    await waitFor(async () => /running \d+ s without READY on the link \(startup_timeout_ms 1500\): check TB_ENDPOINT and the CURVE keys/.test(await readyReason(broker.url, 'silent')), 20_000, 'the startup reason');
  });

  test('Unschedulable, ImagePullBackOff and CrashLoopBackOff show in the readiness reason, in Kubernetes\' words', async () => {
    await waitFor(async () => /Unschedulable: 0\/3 nodes are available: 3 Insufficient nvidia.com\/gpu/.test(await readyReason(broker.url, 'gpu')), 20_000, 'gpu Unschedulable');
    await waitFor(async () => /ImagePullBackOff: Back-off pulling image \\?"registry.example\/missing:1/.test(await readyReason(broker.url, 'missing')), 20_000, 'missing ImagePullBackOff');
    await waitFor(async () => /CrashLoopBackOff: back-off .* restarting failed container/.test(await readyReason(broker.url, 'crashy')), 20_000, 'crashy CrashLoopBackOff');
    // A stuck image fails requests at once with the reason; Unschedulable waits for room (the request queues until its deadline).
    const missing = await infer(broker.url, 'missing', 1);
    expect(missing.status).toBe(503);
    expect(missing.text).toMatch(/ImagePullBackOff/);
    // The pod's phase never makes a copy ready: the gpu pod has none, crashy's pod was Running between crashes.
    expect(await readyReason(broker.url, 'crashy')).not.toBe('ready');
  });

  test('an OOMKilled copy: the restart is logged with the reason Kubernetes gives, the restarted container sends READY again and serves', async () => {
    const pods = api.pods(NS).filter((p) => p.metadata.labels[LABELS.model] === 'simple').map((p) => p.metadata.name as string);
    expect(pods).toHaveLength(1);
    kubelet.oomKill(pods[0]);
    await waitFor(() => broker.lines.some((l) => l.msg === 'copy container restarted in its pod' && /OOMKilled/.test(String(l.problem))), 20_000, 'the OOMKilled log line');
    // The model's readiness said why while the container restarted (logged with the phase change).
    await waitFor(() => broker.lines.some((l) => l.msg === 'model phase' && l.model === 'simple' && l.phase === 'starting' && /OOMKilled: the copy ran out of memory \(exit 137\)/.test(String(l.reason))), 20_000, 'the OOMKilled readiness reason');
    await waitFor(async () => (await readyReason(broker.url, 'simple')) === 'ready', 30_000, 'simple ready again');
    expect((await infer(broker.url, 'simple', 5)).status).toBe(200);
  });

  test('scale up and down through /scale (admin API), choosing the pod that goes', async () => {
    const name = deploymentName('simple', BROKER);
    const scale = (replicas: number) => fetch(`${broker.url}/admin/models/simple/scale`, {
      method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ replicas }),
    });
    expect((await scale(3)).status).toBe(200);
    await waitFor(() => api.deployment(NS, name)!.spec.replicas === 3, 10_000, 'replicas 3');
    expect(api.requests).toContain(`PATCH /apis/apps/v1/namespaces/${NS}/deployments/${name}/scale`);
    await waitFor(async () => {
      const st = await (await fetch(`${broker.url}/admin/models/simple`, { headers: { authorization: `Bearer ${TOKEN}` } })).json() as { status?: { copies: { state: string }[] } };
      return (st.status?.copies ?? []).filter((c) => c.state === 'ready').length === 3;
    }, 30_000, 'three ready copies');
    const answers = await Promise.all(Array.from({ length: 12 }, (_, i) => infer(broker.url, 'simple', i)));
    expect(answers.map((a) => a.status)).toEqual(Array(12).fill(200));
    expect((await scale(1)).status).toBe(200);
    await waitFor(() => api.deployment(NS, name)!.spec.replicas === 1 && api.pods(NS).filter((p) => p.metadata.labels[LABELS.model] === 'simple').length === 1, 20_000, 'one pod left');
    expect(api.requests.some((r) => r.startsWith(`PATCH /api/v1/namespaces/${NS}/pods/`))).toBe(true); // the chosen pods were marked (pod-deletion-cost)
    expect((await infer(broker.url, 'simple', 7)).status).toBe(200);
  });

  test('autoscaling on queue depth: a queue beyond scale_up_queue_per_copy raises the Deployment\'s replicas; every request is answered', async () => {
    const name = deploymentName('sleepy', BROKER);
    await waitFor(async () => (await readyReason(broker.url, 'sleepy')) === 'ready', 30_000, 'sleepy ready');
    expect(api.deployment(NS, name)!.spec.replicas).toBe(1);
    const post = () => fetch(`${broker.url}/v2/models/sleepy/infer`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [1, 4], data: [1, 2, 3, 4] }] }),
    }).then((r) => r.status);
    // 24 requests of 150 ms each on one copy: the queue stays above 2 per copy for seconds.
    const load = Promise.all(Array.from({ length: 24 }, post));
    await waitFor(() => api.deployment(NS, name)!.spec.replicas === 2, 20_000, 'sleepy scaled to 2');
    expect(await load).toEqual(Array(24).fill(200));
    const up = broker.lines.find((l) => l.model === 'sleepy' && l.msg === 'scaling decision' && l.decision === 'up');
    expect(String(up?.reason)).toMatch(/queue per copy .* > scale_up_queue_per_copy 2/);
  });

  test('scale to zero and back: the first request raises replicas from 0, idle_ttl_ms brings it back to 0', async () => {
    const name = deploymentName('zero', BROKER);
    await waitFor(() => api.deployment(NS, name)?.spec.replicas === 0, 20_000, 'zero at 0');
    expect(await readyReason(broker.url, 'zero')).toMatch(/scaled to zero/);
    const r = await infer(broker.url, 'zero', 2);
    expect(r.status).toBe(200);
    expect(r.sum![0]).toBe(4);
    expect(broker.lines.some((l) => l.model === 'zero' && l.msg === 'scaling decision' && /cold start/.test(String(l.reason)))).toBe(true);
    await waitFor(() => api.deployment(NS, name)!.spec.replicas === 0 && api.pods(NS).filter((p) => p.metadata.labels[LABELS.model] === 'zero').length === 0, 30_000, 'zero back at 0 pods');
  });

  test('a copy without the right CURVE key cannot connect, even with a real pod name and the Deployment\'s secret', async () => {
    const pod = api.pods(NS).find((p) => p.metadata.labels[LABELS.model] === 'simple')!;
    const env = kubelet.envs.get(pod.metadata.name as string)!;
    const stranger = zmq.curveKeyPair();
    const before = broker.lines.filter((l) => /failed the handshake/.test(String(l.msg)) && l.result === 'auth').length;
    const impostor = spawn(process.execPath, [SIMPLE], { env: { ...env, PATH: process.env.PATH ?? '', TB_CURVE_PUBLIC_KEY: stranger.publicKey, TB_CURVE_SECRET_KEY: stranger.secretKey } });
    try {
      await waitFor(() => broker.lines.filter((l) => /failed the handshake/.test(String(l.msg)) && l.result === 'auth').length > before, 20_000, 'the refused handshake');
    } finally {
      impostor.kill('SIGKILL');
    }
    expect((await infer(broker.url, 'simple', 1)).status).toBe(200);
  });

  test('on SIGTERM the broker removes its Deployments and Secrets (its copies do not outlive it)', async () => {
    broker.child.kill('SIGTERM');
    await exited(broker.child);
    expect(api.deployments(NS)).toEqual([]);
    expect(api.secret(NS, deploymentName('simple', BROKER))).toBeUndefined();
    await waitFor(() => kubelet.running().length === 0, 20_000, 'no model process left');
  });
});

