/**
 * Fault tests of the Redis registry with a real redis-server and real model
 * processes: Redis restarted empty (no persistence, as in the quick start)
 * and restarted with AOF, both under load. Every request must be answered
 * exactly once, with the right sums, and the models must stay served.
 */
import { rm } from 'node:fs/promises';
import Redis from 'ioredis';
import { simpleBody, simpleModel, startTestBroker, waitFor, waitReady, row, type TestBroker } from '../helpers/broker';
import { startRedisServer, type RedisServer } from '../helpers/redis';

jest.setTimeout(120_000);

const TOKEN = 'fault-token';

interface Load {
  sent: number;
  /** status -> count */
  statuses: Map<number, number>;
  errors: string[];
  wrong: number;
  stop(): Promise<void>;
}

/** `workers` loops posting to the models in turn until stop(); each answer is checked and counted once. */
function startLoad(b: TestBroker, models: string[], workers = 6): Load {
  let running = true;
  const load: Load = { sent: 0, statuses: new Map(), errors: [], wrong: 0, stop: async () => undefined };
  const loop = async (w: number) => {
    for (let i = 0; running; i++) {
      const model = models[(w + i) % models.length];
      const id = `w${w}-${i}`;
      load.sent++;
      try {
        const res = await fetch(`${b.url}/v2/models/${model}/infer`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(simpleBody([row(16, i)], [row(16)], { id })),
        });
        const json = (await res.json()) as { id?: string; outputs?: { name: string; data: number[] }[]; error?: string };
        load.statuses.set(res.status, (load.statuses.get(res.status) ?? 0) + 1);
        if (res.status === 200) {
          const out0 = json.outputs?.find((o) => o.name === 'OUTPUT0')?.data;
          if (json.id !== id || out0?.[0] !== i || out0?.[15] !== i + 30) load.wrong++;
        } else if (load.errors.length < 5) load.errors.push(`${res.status} ${json.error}`);
      } catch (e) {
        if (load.errors.length < 5) load.errors.push(`request failed: ${(e as Error).message}`);
      }
    }
  };
  const all = Promise.all(Array.from({ length: workers }, (_, w) => loop(w)));
  load.stop = async () => {
    running = false;
    await all;
  };
  return load;
}

const answered = (l: Load) => [...l.statuses.values()].reduce((a, b) => a + b, 0);

let redis: RedisServer | undefined;
let broker: TestBroker | undefined;
let raw: Redis | undefined;
let load: Load | undefined;

afterEach(async () => {
  await load?.stop();
  load = undefined;
  raw?.disconnect();
  await broker?.stop();
  await redis?.stop();
  if (redis) await rm(redis.dir, { recursive: true, force: true });
  raw = undefined;
  broker = undefined;
  redis = undefined;
});

/** A broker with two file models; `simple` is then patched through the admin API (source api). */
async function setUp(redisArgs: string[]): Promise<{ lines: string[] }> {
  redis = await startRedisServer({ args: redisArgs });
  const lines: string[] = [];
  broker = await startTestBroker({
    models: { simple: simpleModel(), other: simpleModel() },
    redis,
    adminToken: TOKEN,
    logSink: (l) => lines.push(l),
  });
  const res = await fetch(`${broker.url}/admin/models/simple`, {
    method: 'PATCH',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}` },
    body: JSON.stringify({ max_wait_ms: 1 }),
  });
  expect(res.status).toBe(200);
  await Promise.all([waitReady(broker, 'simple'), waitReady(broker, 'other')]);
  raw = new Redis(redis.url, { maxRetriesPerRequest: null });
  return { lines };
}

async function restartRedis(): Promise<void> {
  const { port, dir } = redis!;
  await redis!.stop();
  redis = await startRedisServer({ port, dir, args: redisArgsOf.get(port) });
}
const redisArgsOf = new Map<number, string[]>();

async function record(name: string): Promise<{ source?: string; max_wait_ms?: number } | null> {
  const text = await raw!.get(`${broker!.config.redisPrefix}model:${name}`).catch(() => null);
  return text ? (JSON.parse(text) as { source?: string; max_wait_ms?: number }) : null;
}

/** Lets the load go on for 50 more answers, stops it, and checks every request got exactly one right answer. */
async function finishLoad(what: string): Promise<void> {
  const after = answered(load!);
  await waitFor(() => answered(load!) >= after + 50, 30_000, what);
  await load!.stop();
  const l = load!;
  load = undefined;
  expect(l.errors).toEqual([]);
  expect(answered(l)).toBe(l.sent);
  expect(l.statuses.get(200)).toBe(l.sent);
  expect(l.wrong).toBe(0);
}

test('Redis restarted empty under load: nothing is removed, file models are re-seeded, the API model is written back', async () => {
  const args = ['--save', '', '--appendonly', 'no'];
  const { lines } = await setUp(args);
  redisArgsOf.set(redis!.port, args);
  load = startLoad(broker!, ['simple', 'other']);
  await waitFor(() => answered(load!) >= 50, 30_000, 'load before the restart');

  await restartRedis();
  expect(await raw!.exists(`${broker!.config.redisPrefix}models`)).toBe(0); // it did come back empty

  await waitFor(() => lines.some((l) => l.includes('came back without the model registry')), 30_000, 'the recovery log line');
  await waitFor(async () => (await record('simple'))?.source === 'api' && (await record('other'))?.source === 'file', 20_000, 'records back in Redis');
  await finishLoad('load after the recovery');
  expect(await record('simple')).toMatchObject({ source: 'api', max_wait_ms: 1 });
  expect(broker!.running.registry.list().map((s) => s.name)).toEqual(['other', 'simple']);
  const recovery = lines.find((l) => l.includes('came back without the model registry'))!;
  expect(JSON.parse(recovery)).toMatchObject({ level: 40, restored: 2 });
  expect(lines.some((l) => l.includes('"msg":"model deleted"') || l.includes('no longer in models.yaml'))).toBe(false);
});

test('Redis restarted with AOF under load: the data comes back, every request is answered', async () => {
  const args = ['--save', '', '--appendonly', 'yes', '--appendfsync', 'always'];
  const { lines } = await setUp(args);
  redisArgsOf.set(redis!.port, args);
  load = startLoad(broker!, ['simple', 'other']);
  await waitFor(() => answered(load!) >= 50, 30_000, 'load before the restart');

  await restartRedis();
  expect((await record('simple'))?.source).toBe('api'); // AOF kept it

  await waitFor(() => lines.some((l) => l.includes('redis connection back')), 30_000, 'the reconnect');
  await finishLoad('load after the restart');
  expect(lines.some((l) => l.includes('came back without the model registry'))).toBe(false);
  expect(broker!.running.registry.list().map((s) => [s.name, s.source])).toEqual([
    ['other', 'file'],
    ['simple', 'api'],
  ]);
});
