/**
 * Two brokers with `--runtime kubernetes` on one real redis-server, against the
 * loopback FAKE API server and FAKE kubelet (fakes, not Kubernetes; the pods are
 * real `simple` model processes over the CURVE link): each broker has its own
 * Deployment of the model, and their replicas together stay within
 * max_replicas, through the shared copy budget (README "Several brokers").
 * Needs `npm run build` and Node >= 22.19.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { modelMain, waitFor } from '../helpers/broker';
import { exited, startCliBroker, type CliBroker } from '../helpers/cli-broker';
import { FakeKubeApi, kubeRuntimeSuite } from '../helpers/fake-kube-api';
import { FakeKubelet } from '../helpers/fake-kubelet';
import { startRedis, type RedisHandle } from '../helpers/redis';
import { deploymentName } from '../../task-manager/kubernetes/manifests';

const suite = kubeRuntimeSuite();

const NS = 'models';
const TOKEN = 'k8s-brokers-token';
const SIMPLE = modelMain('simple');
const MODELS = `
simple:
  image: tensorbroker/simple:dev
  batch_size: 4
  min_replicas: 0
  max_replicas: 2
  idle_ttl_ms: 600000
`;

suite('two brokers on the kubernetes runtime share max_replicas (FAKE API server, real redis-server)', () => {
  let api: FakeKubeApi;
  let kubelet: FakeKubelet;
  let redis: RedisHandle;
  let dir: string;
  const brokers: Record<'a' | 'b', CliBroker> = {} as Record<'a' | 'b', CliBroker>;
  const replicas = (id: string) => api.deployment(NS, deploymentName('simple', id))?.spec.replicas;
  const scale = (b: CliBroker, n: number) => fetch(`${b.url}/admin/models/simple/scale`, {
    method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ replicas: n }),
  }).then((r) => r.status);

  beforeAll(async () => {
    if (!fs.existsSync(SIMPLE)) throw new Error(`${SIMPLE} is missing: run npm run build first`);
    api = new FakeKubeApi();
    await api.start();
    kubelet = new FakeKubelet(api, { images: { 'tensorbroker/simple:dev': [process.execPath, SIMPLE] }, baseEnv: { PATH: process.env.PATH ?? '' }, backoffMs: 300 });
    redis = await startRedis();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-k8s-brokers-'));
    fs.writeFileSync(path.join(dir, 'models.yaml'), MODELS);
    for (const id of ['a', 'b'] as const) {
      brokers[id] = await startCliBroker(['--models', path.join(dir, 'models.yaml'), '--runtime', 'kubernetes', '--broker-id', `broker-${id}`,
        '--redis-url', redis.url, '--redis-prefix', `tbk-${process.pid}:`], {
        TB_K8S_API_SERVER: api.url, TB_K8S_NAMESPACE: NS, TB_ADMIN_TOKEN: TOKEN, TB_AUTOSCALE_INTERVAL_MS: '200', TB_HEARTBEAT_MS: '200',
      });
    }
    await waitFor(() => replicas('broker-a') === 0 && replicas('broker-b') === 0, 20_000, 'both Deployments at zero');
  }, 90_000);

  afterAll(async () => {
    for (const b of Object.values(brokers)) {
      if (b.child.exitCode === null) {
        b.child.kill('SIGKILL');
        await exited(b.child);
      }
    }
    await kubelet?.close();
    await api?.close();
    await redis?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  test('a scale-up beyond what the other broker left is refused by the budget; a place freed by one broker goes to the other', async () => {
    expect(await scale(brokers.a, 2)).toBe(200);
    await waitFor(() => replicas('broker-a') === 2, 20_000, 'broker-a at 2 replicas');
    // Every place is taken: broker-b's scale-up is refused by the shared budget and its Deployment stays at 0.
    expect(await scale(brokers.b, 1)).toBe(200);
    await waitFor(() => brokers.b.lines.some((l) => l.msg === 'the shared copy budget (several brokers) is taken: scaling up less'), 20_000, 'broker-b refused');
    expect(replicas('broker-b')).toBe(0);
    // broker-a gives one place back: broker-b gets it.
    expect(await scale(brokers.a, 1)).toBe(200);
    await waitFor(() => replicas('broker-a') === 1, 20_000, 'broker-a at 1 replica');
    expect(await scale(brokers.b, 1)).toBe(200);
    await waitFor(() => replicas('broker-b') === 1, 20_000, 'broker-b at 1 replica');
    expect((replicas('broker-a') ?? 0) + (replicas('broker-b') ?? 0)).toBe(2);
  });
});
