/**
 * Asynchronous jobs (issue 15) end to end: a real broker with real model
 * processes and a real redis-server; jobs submitted, followed and fetched over
 * REST, and extra JobService instances on the same broker for the runner's
 * life (stopped mid-job and restarted, result expiry).
 */
import fc from 'fast-check';
import pino from 'pino';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { FolderBlobStore } from '../../jobs/blob-store';
import { JobService } from '../../jobs/service';
import type { JobView } from '../../jobs/types';
import { getJson, modelMain, postJson, row, simpleBody, sleepyModel, simpleModel, startTestBroker, waitFor, waitReady, type TestBroker } from '../helpers/broker';

const SLEEPY_MS = 300;
const SLOW_MS = 3000;
const json = async (res: Response) => (await res.json()) as { error?: string; status?: string };
const ADMIN = 'jobs-admin-token';
let b: TestBroker;
let blobDir: string;

const sleepyBody = (v = 1) => ({ inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [1, 2], data: [v, v + 0.5] }] });
const submit = (model: string, body: unknown, query = '', headers: Record<string, string> = {}) =>
  postJson(`${b.url}/v2/models/${model}/jobs${query}`, body, headers);
const job = (id: string): Promise<JobView> => getJson(`${b.url}/v2/jobs/${id}`);
const waitStatus = async (id: string, status: string, timeoutMs = 30_000): Promise<JobView> => {
  let last: JobView | undefined;
  await waitFor(async () => (last = await job(id)).status === status, timeoutMs, `job ${id} ${status} (last: ${JSON.stringify(last)})`);
  return last!;
};

beforeAll(async () => {
  blobDir = await mkdtemp(path.join(os.tmpdir(), 'tb-jobs-blobs-'));
  b = await startTestBroker({
    models: {
      simple: simpleModel(),
      sleepy: sleepyModel(SLEEPY_MS),
      // Holds the worker for seconds: wide windows for what must happen while a job runs or waits.
      slow: sleepyModel(SLOW_MS),
      broken: { command: ['node', modelMain('identity')], env: { IDENTITY_FAIL: '1' }, batch_size: 4 },
    },
    // A small inline limit so the simple model's inputs and results go through the blob store too.
    config: { jobs: { enabled: true, leaseMs: 1000, blobDir, inlineMaxBytes: 64 } },
    adminToken: ADMIN,
  });
  await Promise.all(['simple', 'sleepy', 'slow', 'broken'].map((m) => waitReady(b, m)));
});

afterAll(async () => {
  await b?.stop();
  await rm(blobDir, { recursive: true, force: true });
});

/** Submits a slow job and waits until it runs: the model's worker (1 in flight) is then busy for SLOW_MS. */
async function occupyWorker(): Promise<string> {
  const r = await submit('slow', sleepyBody(), '?priority=high');
  expect(r.status).toBe(202);
  await waitStatus(r.json.id, 'running');
  return r.json.id as string;
}

test('submit, follow and fetch: 202 + Location, then the /infer response form', async () => {
  const body = simpleBody([row(16, 1)], [row(16)]);
  const r = await submit('simple', { ...body, metadata: { batch: 'archive-7' } }, '?ttl_seconds=60&max_attempts=2');
  expect(r.status).toBe(202);
  expect(r.json.id).toMatch(/^[A-Za-z0-9_-]{22}$/);
  expect(r.headers.get('location')).toBe(`/v2/jobs/${r.json.id}`);
  expect(['queued', 'running', 'succeeded']).toContain(r.json.status);
  expect(Date.parse(r.json.expires_at) - Date.parse(r.json.created_at)).toBe(60_000);

  const done = await waitStatus(r.json.id, 'succeeded');
  expect(done).toMatchObject({ model: 'simple', attempts: 1, max_attempts: 2, priority: 'normal', metadata: { batch: 'archive-7' } });
  expect(done.started_at).toBeDefined();
  expect(done.finished_at).toBeDefined();

  const res = await fetch(`${b.url}${r.headers.get('location')}/result`);
  expect(res.status).toBe(200);
  const direct = await postJson(`${b.url}/v2/models/simple/infer`, body);
  expect(await json(res)).toEqual(direct.json);
});

test('bad submissions get clear errors', async () => {
  expect((await submit('nope', sleepyBody())).status).toBe(404);
  const badPriority = await submit('sleepy', sleepyBody(), '?priority=urgent');
  expect(badPriority.status).toBe(400);
  expect(badPriority.json.error).toMatch(/priority/);
  expect((await submit('sleepy', { ...sleepyBody(), max_attempts: 0 })).status).toBe(400);
  expect((await submit('sleepy', { ...sleepyBody(), ttl_seconds: 'soon' })).status).toBe(400);
  expect((await submit('sleepy', { inputs: [] })).status).toBe(400);
  expect((await submit('sleepy', { ...sleepyBody(), metadata: [1] })).status).toBe(400);
  // Checked against the model's metadata at submit time, as /infer does.
  const badInput = await submit('sleepy', { inputs: [{ name: 'NOPE', datatype: 'FP32', shape: [1, 1], data: [1] }] });
  expect(badInput.status).toBe(400);
  expect(badInput.json.error).toMatch(/no input named 'NOPE'/);
  const tooMany = await submit('simple', simpleBody(Array.from({ length: 9 }, () => row(16)), Array.from({ length: 9 }, () => row(16))));
  expect(tooMany.status).toBe(400);
  expect(tooMany.json.error).toMatch(/at most 8 rows/);
  const text = await fetch(`${b.url}/v2/models/sleepy/jobs`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'hi' });
  expect(text.status).toBe(415);
  expect((await fetch(`${b.url}/v2/jobs/AAAAAAAAAAAAAAAAAAAAAA`)).status).toBe(404);
  expect((await fetch(`${b.url}/v2/jobs/not-an-id/result`)).status).toBe(404);
  expect((await fetch(`${b.url}/v2/jobs/AAAAAAAAAAAAAAAAAAAAAA`, { method: 'DELETE' })).status).toBe(404);
});

test('the same Idempotency-Key returns the same job', async () => {
  const key = { 'idempotency-key': `reindex-${Date.now()}` };
  const first = await submit('simple', simpleBody([row(16)], [row(16)]), '', key);
  const again = await submit('simple', simpleBody([row(16)], [row(16)]), '', key);
  expect(first.status).toBe(202);
  expect(again.status).toBe(202);
  expect(again.json.id).toBe(first.json.id);
  expect(again.headers.get('idempotent-replayed')).toBe('true');
  const other = await submit('simple', simpleBody([row(16)], [row(16)]), '', { 'idempotency-key': `${key['idempotency-key']}-2` });
  expect(other.json.id).not.toBe(first.json.id);
  await waitStatus(first.json.id, 'succeeded');
});

test('listing jobs needs the admin token, filters by model and status, and pages with a cursor', async () => {
  expect((await fetch(`${b.url}/v2/jobs`)).status).toBe(401);
  expect((await fetch(`${b.url}/v2/jobs`, { headers: { authorization: 'Bearer wrong' } })).status).toBe(401);
  const auth = { authorization: `Bearer ${ADMIN}` };
  expect((await fetch(`${b.url}/v2/jobs?status=done`, { headers: auth })).status).toBe(400);
  expect((await fetch(`${b.url}/v2/jobs?cursor=zzz`, { headers: auth })).status).toBe(400);
  const ids = await Promise.all([1, 2, 3].map(async (i) => (await submit('simple', simpleBody([row(16, i)], [row(16)]))).json.id as string));
  await Promise.all(ids.map((id) => waitStatus(id, 'succeeded')));
  const list = async (query: string) => (await fetch(`${b.url}/v2/jobs?${query}`, { headers: auth })).json() as Promise<{ jobs: JobView[]; next_cursor?: string }>;
  const all = await list('model=simple&status=succeeded&limit=1000');
  expect(all.next_cursor).toBeUndefined();
  expect(all.jobs.every((j) => j.model === 'simple' && j.status === 'succeeded')).toBe(true);
  expect(all.jobs.map((j) => j.id)).toEqual(expect.arrayContaining(ids));
  const created = all.jobs.map((j) => Date.parse(j.created_at));
  expect(created).toEqual([...created].sort((x, y) => y - x));
  // Page by page, one job per page: the same jobs, each once, in the same order.
  const paged: string[] = [];
  for (let cursor: string | undefined = ''; cursor !== undefined;) {
    const page = await list(`model=simple&status=succeeded&limit=1${cursor ? `&cursor=${cursor}` : ''}`);
    paged.push(...page.jobs.map((j) => j.id));
    cursor = page.next_cursor;
  }
  expect(paged).toEqual(all.jobs.map((j) => j.id));
  expect((await list('model=sleepy&status=succeeded')).jobs.some((j) => ids.includes(j.id))).toBe(false);
});

test('queued jobs run in priority order: high, then normal, then low', async () => {
  // Queued by a service without workers, so all three wait before any worker looks; then one worker drains them.
  const prefix = `${b.config.redisPrefix}prio:`;
  const opts = { redisUrl: b.redis.url, prefix, broker: b.running.broker, logger: pino({ level: 'silent' }), blobs: new FolderBlobStore(blobDir) };
  const submitter = new JobService({ ...opts, workers: false });
  const input = [{ name: 'INPUT0', datatype: 'FP32' as const, shape: [1, 1], data: Buffer.alloc(4) }];
  const ids: Record<string, string> = {};
  const plan = [['low', 'low'], ['normal', 'normal'], ['high', 'high'], ['low2', 'low'], ['high2', 'high']] as const;
  for (const [label, priority] of plan) ids[label] = (await submitter.submit({ model: 'sleepy', priority, inputs: input })).job.id;
  expect((await submitter.queue('sleepy')).depth).toEqual({ high: 2, normal: 1, low: 2 });
  const worker = new JobService(opts);
  worker.start();
  try {
    await waitFor(async () => (await Promise.all(Object.values(ids).map((id) => submitter.get(id)))).every((j) => j.status === 'succeeded'), 20_000, 'all done');
    const order = (await Promise.all(Object.entries(ids).map(async ([k, id]) => [k, Date.parse((await submitter.get(id)).started_at!)] as const)))
      .sort((x, y) => x[1] - y[1]).map(([k]) => k);
    expect(order).toEqual(['high', 'high2', 'normal', 'low', 'low2']);
  } finally {
    await Promise.all([worker.stop(), submitter.stop()]);
  }
});

test('cancel: a queued job never runs; a running job\'s result is dropped', async () => {
  const running = await occupyWorker();
  const queued = await submit('slow', sleepyBody());
  const after = await submit('slow', sleepyBody());
  const c1 = await fetch(`${b.url}/v2/jobs/${queued.json.id}`, { method: 'DELETE' });
  expect(c1.status).toBe(200);
  expect((await json(c1)).status).toBe('cancelled');
  const c2 = await fetch(`${b.url}/v2/jobs/${running}`, { method: 'DELETE' });
  expect((await json(c2)).status).toBe('cancelled');

  // The job submitted after both ran, so the worker has seen the cancelled ones.
  await waitStatus(after.json.id, 'succeeded');
  const q = await job(queued.json.id);
  expect(q).toMatchObject({ status: 'cancelled', attempts: 0 });
  expect(q.started_at).toBeUndefined();
  expect((await job(running)).status).toBe('cancelled');
  for (const id of [queued.json.id, running]) {
    const res = await fetch(`${b.url}/v2/jobs/${id}/result`);
    expect(res.status).toBe(410);
    expect((await json(res)).error).toMatch(/cancelled/);
  }
  // Cancelling a finished job changes nothing.
  const again = await fetch(`${b.url}/v2/jobs/${after.json.id}`, { method: 'DELETE' });
  expect((await json(again)).status).toBe('succeeded');
});

test('a job past ttl_seconds in the queue expires and is never run; pending results answer 202', async () => {
  await occupyWorker();
  const short = await submit('slow', { ...sleepyBody(), ttl_seconds: 0.05 });
  const pending = await fetch(`${b.url}/v2/jobs/${short.json.id}/result`);
  if (pending.status === 202) expect(pending.headers.get('retry-after')).toBe('1');
  else expect(pending.status).toBe(410); // already past its 50 ms on a slow machine
  const after = await submit('slow', sleepyBody());
  await waitStatus(short.json.id, 'expired');
  await waitStatus(after.json.id, 'succeeded');
  const j = await job(short.json.id);
  expect(j).toMatchObject({ status: 'expired', attempts: 0 });
  expect(j.last_error).toMatch(/ttl_seconds/);
  expect((await fetch(`${b.url}/v2/jobs/${short.json.id}/result`)).status).toBe(410);
});

test('a model\'s own error fails the job at once, without a retry or a dead letter', async () => {
  const r = await submit('broken', { inputs: [{ name: 'IN_INT32', datatype: 'INT32', shape: [1, 1], data: [1] }] }, '?max_attempts=3');
  const failed = await waitStatus(r.json.id, 'failed');
  expect(failed.attempts).toBe(1);
  expect(failed.last_error).toMatch(/identity asked to fail/);
  const res = await fetch(`${b.url}/v2/jobs/${r.json.id}/result`);
  expect(res.status).toBeGreaterThanOrEqual(400);
  expect((await json(res)).error).toMatch(/identity asked to fail/);
  expect((await getJson(`${b.url}/v2/models/broken/jobs/queue`)).dead_lettered).toBe(0);
});

test('timeouts are retried up to max_attempts, then the job is dead-lettered with its reason', async () => {
  const r = await submit('sleepy', { ...sleepyBody(), timeout_seconds: 0.05, max_attempts: 2 });
  const failed = await waitStatus(r.json.id, 'failed');
  expect(failed.attempts).toBe(2);
  const res = await fetch(`${b.url}/v2/jobs/${r.json.id}/result`);
  expect(res.status).toBe(504);
  const queue = await getJson(`${b.url}/v2/models/sleepy/jobs/queue`);
  expect(queue.dead_lettered).toBe(1);
  expect(queue).toMatchObject({ model: 'sleepy', depth: { high: 0, normal: 0, low: 0 }, running: 0 });
  const jobs = b.running.jobs!;
  const { default: Redis } = await import('ioredis');
  const redis = new Redis(b.redis.url);
  const dead = (await redis.xrange(jobs.keys.dead('sleepy'), '-', '+')) as [string, string[]][];
  await redis.quit();
  const fields = Object.fromEntries(dead[0][1].reduce<[string, string][]>((acc, v, i, a) => (i % 2 ? acc : [...acc, [v, a[i + 1]]]), []));
  expect(fields).toMatchObject({ id: r.json.id, model: 'sleepy', attempts: '2' });
  expect(fields.reason).toMatch(/2 attempt\(s\) failed/);
  const metrics = await (await fetch(b.metricsUrl)).text();
  expect(metrics).toContain('tb_jobs_dead_lettered{model="sleepy"} 1');
  expect(metrics).toContain('tb_jobs_waiting{model="sleepy",priority="high"} 0');
  expect(metrics).toMatch(/tb_jobs_running\{model="simple"\} 0/);
});

test('jobs use idle capacity only: a job waits while live requests are queued', async () => {
  const live = (n: number) => Array.from({ length: n }, () =>
    postJson(`${b.url}/v2/models/sleepy/infer`, sleepyBody()).then((r) => {
      expect(r.status).toBe(200);
      return Date.now();
    }));
  const first = live(6); // 1.8 s of live queue: burst B arrives well within it
  await waitFor(() => b.running.broker.load().find((l) => l.model === 'sleepy')!.queued > 0, 10_000, 'a live queue');
  const r = await submit('sleepy', sleepyBody());
  const second = live(3);
  const answered = await Promise.all([...first, ...second]);
  const done = await waitStatus(r.json.id, 'succeeded');
  // Submitted while live requests were queued: it ran only after the last of them was dispatched.
  expect(Date.parse(done.finished_at!)).toBeGreaterThanOrEqual(Math.max(...answered) - 5);
});

test('property: random submit and cancel sequences end with every job in exactly one final state', async () => {
  const op = fc.oneof(
    fc.record({ kind: fc.constant('submit' as const), model: fc.constantFrom('simple', 'sleepy'), priority: fc.constantFrom('high', 'normal', 'low') }),
    fc.record({ kind: fc.constant('cancel' as const), pick: fc.nat() }),
  );
  await fc.assert(fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 6 }), async (ops) => {
    const ids: string[] = [];
    const cancelled = new Set<string>(); // DELETE answered 'cancelled': nothing may overturn it
    for (const o of ops) {
      if (o.kind === 'submit') {
        const body = o.model === 'simple' ? simpleBody([row(16)], [row(16)]) : sleepyBody();
        const r = await submit(o.model, body, `?priority=${o.priority}`);
        expect(r.status).toBe(202);
        ids.push(r.json.id);
      } else if (ids.length > 0) {
        const id = ids[o.pick % ids.length];
        const res = await fetch(`${b.url}/v2/jobs/${id}`, { method: 'DELETE' });
        expect(res.status).toBe(200);
        if ((await json(res)).status === 'cancelled') cancelled.add(id);
      }
    }
    const finals = new Set(['succeeded', 'cancelled']);
    await waitFor(async () => (await Promise.all(ids.map(job))).every((j) => finals.has(j.status)), 30_000, 'every job final');
    for (const id of ids) {
      const j = await job(id);
      expect(j.status).toBe(cancelled.has(id) ? 'cancelled' : 'succeeded');
      const res = await fetch(`${b.url}/v2/jobs/${id}/result`);
      expect(res.status).toBe(j.status === 'succeeded' ? 200 : 410);
      expect(j.attempts).toBeLessThanOrEqual(1);
    }
  }), { numRuns: 6 });
});

describe('the job runner stopped mid-job', () => {
  // Each test's runners stop with it, so no runner of an earlier test takes the next test's jobs.
  const services: JobService[] = [];
  afterEach(() => Promise.all(services.splice(0).map((s) => s.stop())));
  const service = (extra: Partial<ConstructorParameters<typeof JobService>[0]> = {}) => {
    const s = new JobService({
      redisUrl: b.redis.url, prefix: `${b.config.redisPrefix}other:`, broker: b.running.broker, logger: pino({ level: 'silent' }),
      blobs: new FolderBlobStore(blobDir), leaseMs: 500, ...extra,
    });
    services.push(s);
    s.start();
    return s;
  };

  test('a restarted runner reclaims the job after its lease and completes it once', async () => {
    const a = service({ consumer: 'a' });
    const { job: submitted } = await a.submit({ model: 'sleepy', inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [1, 1], data: Buffer.from(new Float32Array([7]).buffer) }] });
    await waitFor(async () => (await a.get(submitted.id)).status === 'running', 10_000, 'running on a');
    await a.stop(); // as if killed: no verdict, no ack
    const reader = service({ workers: false });
    expect((await reader.get(submitted.id)).status).toBe('running');
    // The dead worker's entry is pending: counted as running, not waiting, until it is reclaimed.
    expect(await reader.queue('sleepy')).toMatchObject({ running: 1, depth: { high: 0, normal: 0, low: 0 } });
    expect((await reader.queue('sleepy')).oldest_age_seconds).toBeGreaterThan(0);

    const bSvc = service({ consumer: 'b' });
    await waitFor(async () => (await bSvc.get(submitted.id)).status === 'succeeded', 20_000, 'succeeded on b');
    const j = await bSvc.get(submitted.id);
    expect(j.attempts).toBe(2);
    const r = await bSvc.result(submitted.id);
    expect(r.state).toBe('succeeded');
    if (r.state === 'succeeded' && r.result) expect(new Float32Array(new Uint8Array(r.result.outputs[0].data).buffer)[0]).toBe(7);
    expect((await bSvc.queue('sleepy')).dead_lettered).toBe(0);
  });

  test('a job whose runner dies on every attempt is dead-lettered after max_attempts', async () => {
    const first = service({ consumer: 'x1' });
    const { job: submitted } = await first.submit({ model: 'sleepy', maxAttempts: 1, inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [1, 1], data: Buffer.alloc(4) }] });
    await waitFor(async () => (await first.get(submitted.id)).status === 'running', 10_000, 'running');
    await first.stop();
    const next = service({ consumer: 'x2' });
    await waitFor(async () => (await next.get(submitted.id)).status === 'failed', 20_000, 'failed');
    const j = await next.get(submitted.id);
    expect(j.attempts).toBe(1);
    expect(j.last_error).toMatch(/stopped answering/);
    expect((await next.queue('sleepy')).dead_lettered).toBe(1);
  });

  test('results expire after result_ttl: 410, while the job record remains', async () => {
    const s = service({ resultTtlMs: 300 });
    const { job: submitted } = await s.submit({ model: 'sleepy', inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [1, 1], data: Buffer.alloc(4) }] });
    await waitFor(async () => (await s.result(submitted.id)).state === 'succeeded', 10_000, 'a result');
    await waitFor(async () => (await s.result(submitted.id)).state === 'gone', 10_000, 'the result expired');
    const r = await s.result(submitted.id);
    expect(r.state === 'gone' && r.reason).toMatch(/expired/);
    expect((await s.get(submitted.id)).status).toBe('succeeded');
  });
});
