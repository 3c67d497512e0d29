/**
 * Durability of asynchronous jobs (issue 15) with real processes: brokers run
 * as `tensorbroker serve` children (process runtime) on a real redis-server
 * with AOF (appendfsync always). A broker killed with kill -9 mid-job and
 * restarted, a model copy killed mid-job, Redis restarted, dead letters after
 * max_attempts, bounded streams, TTL expiry, scale from zero on the backlog,
 * and random submit / cancel / kill sequences (fast-check). Leases are 1 s so
 * the retries come quickly; every wait is on a condition. Needs `npm run build`.
 */
import fc from 'fast-check';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Redis from 'ioredis';
import { exited, startCliBroker, type CliBroker } from '../helpers/cli-broker';
import { ROOT, getJson, modelMain, postJson, row, simpleBody, waitFor } from '../helpers/broker';
import { startRedisServer, type RedisServer } from '../helpers/redis';

const haveDist = fs.existsSync(path.join(ROOT, 'dist/app/cli.js')) && fs.existsSync(modelMain('sleepy'));
const describeDist = haveDist ? describe : describe.skip;
if (!haveDist) console.warn('SKIPPING jobs-durability: run `npm run build` first');

const HOLD_MS = 1500; // a 'hold' job runs this long: a window to kill something under it
const LONG_MS = 3000;
const AOF = ['--appendonly', 'yes', '--appendfsync', 'always', '--save', ''];
interface Job { id: string; status: string; attempts: number; last_error?: string; started_at?: string; finished_at?: string }
interface Instance { id: string; model: string; state: string; pid?: number; inFlight?: number }

describeDist('jobs survive kill -9 of brokers and copies, and Redis restarts', () => {
  let redis: RedisServer;
  let base: string;
  let models: string;
  let broker: CliBroker;
  const prefix = `tbj-${process.pid}:`;
  const pids = new Set<number>(); // copies seen: killed at the end if a killed broker left them behind

  const args = () => ['--runtime', 'process', '--models', models, '--redis-url', redis.url, '--redis-prefix', prefix,
    '--socket-dir', base, '--broker-id', 'jobs-a', '--heartbeat-ms', '200', '--autoscale-interval-ms', '200',
    '--jobs', 'true', '--jobs-lease-ms', '1000', '--jobs-blob-dir', path.join(base, 'blobs'), '--jobs-dead-max-len', '2'];
  const url = () => broker.url;
  const submit = async (model: string, body: unknown, query = ''): Promise<Job> => {
    const r = await postJson(`${url()}/v2/models/${model}/jobs${query}`, body);
    expect(r.status).toBe(202);
    return r.json as Job;
  };
  const job = (id: string): Promise<Job> => getJson(`${url()}/v2/jobs/${id}`);
  const waitStatus = async (id: string, status: string, ms = 30_000): Promise<Job> => {
    let last: Job | undefined;
    await waitFor(async () => (last = await job(id).catch(() => undefined))?.status === status, ms, `job ${id} ${status} (last: ${JSON.stringify(last)})`);
    return last!;
  };
  const hold = (v = 1) => ({ inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [1, 2], data: [v, v] }] });
  const instances = async (model?: string): Promise<Instance[]> => {
    const all = ((await getJson(`${url()}/admin/instances`)) as { instances: Instance[] }).instances;
    for (const i of all) if (i.pid) pids.add(i.pid);
    return all.filter((i) => model === undefined || i.model === model);
  };
  const readyCopies = async (model: string) => (await instances(model)).filter((i) => i.state === 'ready');

  let stopping = false;
  const start = async () => {
    const b = await startCliBroker(args());
    broker = b;
    // A broker that exits without being killed here is a failure: show why.
    b.child.once('exit', (code, signal) => {
      if (!stopping && signal !== 'SIGKILL') console.error(`broker exited (${code}, ${signal})`, JSON.stringify(b.lines.slice(-15)));
    });
    await waitFor(async () => (await fetch(`${url()}/v2/health/ready`)).status === 200, 60_000, 'broker ready');
  };
  const kill9 = async () => {
    await instances().catch(() => undefined); // its copies: the process runtime leaves them running after a kill -9
    broker.child.kill('SIGKILL');
    await exited(broker.child);
  };

  beforeAll(async () => {
    base = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-jobsd-'));
    models = path.join(base, 'models.yaml');
    const node = JSON.stringify(process.execPath);
    const sleepy = (aMs: number) => `[${node}, ${JSON.stringify(modelMain('sleepy'))}]\n    batch_size: 1\n    env: { SLEEPY_A_MS: '${aMs}', SLEEPY_B_MS: '0' }`;
    fs.writeFileSync(models, [
      'models:',
      `  hold:\n    command: ${sleepy(HOLD_MS)}`,
      `  long:\n    command: ${sleepy(LONG_MS)}`,
      `  quick:\n    command: ${sleepy(20)}`,
      `  simple:\n    command: [${node}, ${JSON.stringify(modelMain('simple'))}]\n    batch_size: 8`,
      // At zero until jobs wait; the backlog alone (one job runs at a time) asks for the second copy.
      `  zero:\n    command: ${sleepy(300)}\n    min_replicas: 0\n    max_replicas: 2\n    scale_up_queue_per_copy: 1\n    scale_up_cooldown_ms: 0\n    idle_ttl_ms: 300000`,
      '',
    ].join('\n'));
    redis = await startRedisServer({ args: AOF });
    await start();
  });

  afterAll(async () => {
    stopping = true;
    if (broker && broker.child.exitCode === null && broker.child.signalCode === null) {
      broker.child.kill('SIGTERM');
      await exited(broker.child);
    }
    for (const pid of pids) {
      try {
        // Only a copy of this suite still running under that pid (never a reused pid of another process).
        if (fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(path.join(ROOT, 'dist/examples/models'))) process.kill(pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
    await redis?.stop();
    fs.rmSync(base, { recursive: true, force: true });
  });

  test('a broker killed with kill -9 mid-job: after the restart the job is retried and completes once', async () => {
    const j = await submit('hold', hold(3));
    await waitStatus(j.id, 'running');
    await kill9();
    await start();
    const done = await waitStatus(j.id, 'succeeded');
    expect(done.attempts).toBe(2);
    const res = await fetch(`${url()}/v2/jobs/${j.id}/result`);
    expect(res.status).toBe(200);
    const body = (await res.json()) as { outputs: { name: string; data: number[] }[] };
    expect(body.outputs.find((o) => o.name === 'OUTPUT0')!.data).toEqual([3, 3]);
    // Taken over once, by the restarted broker, and stored once: it stays succeeded at attempt 2.
    expect(broker.lines.filter((l) => l.job === j.id && l.msg === 'reclaimed a job whose worker stopped answering')).toHaveLength(1);
    expect(await job(j.id)).toMatchObject({ status: 'succeeded', attempts: 2 });
  });

  test('a model copy killed mid-job: the job is retried on a new copy and completes', async () => {
    await waitFor(async () => (await readyCopies('long')).length === 1, 30_000, 'a ready copy of long');
    const [copy] = await readyCopies('long');
    const j = await submit('long', hold(5));
    await waitStatus(j.id, 'running');
    // Mid-job: the copy holds its batch.
    await waitFor(async () => (await instances('long')).some((c) => c.id === copy.id && c.inFlight === 1), 10_000, 'the job on the copy');
    process.kill(copy.pid!, 'SIGKILL');
    // The batch fails with the copy (retryable): run again, by the core on the next copy or as the job's next attempt.
    const done = await waitStatus(j.id, 'succeeded');
    expect(done.attempts).toBeLessThanOrEqual(2);
    const res = (await (await fetch(`${url()}/v2/jobs/${j.id}/result`)).json()) as { outputs: { name: string; data: number[] }[] };
    expect(res.outputs.find((o) => o.name === 'OUTPUT0')!.data).toEqual([5, 5]);
    expect((await readyCopies('long')).some((c) => c.id !== copy.id)).toBe(true);
    expect(broker.lines.some((l) => l.copy === copy.id && Number(l.level) >= 50)).toBe(true); // its death, logged as an error
  });

  test('Redis restarted with AOF on: no job is lost, queued ones run after it is back', async () => {
    const ids = [];
    for (let i = 0; i < 4; i++) ids.push((await submit('hold', hold(i))).id);
    await waitStatus(ids[0], 'running');
    // kill -9: no final save; every write is in the AOF (appendfsync always).
    const port = redis.port;
    const dir = redis.dir;
    const r = new Redis(redis.url);
    const pid = Number(/process_id:(\d+)/.exec(await r.info('server'))![1]);
    r.disconnect();
    process.kill(pid, 'SIGKILL');
    await redis.stop();
    redis = await startRedisServer({ port, dir, args: AOF });
    for (const id of ids) expect((await waitStatus(id, 'succeeded', 60_000)).attempts).toBeGreaterThanOrEqual(1);
  });

  test('dead-lettered after max_attempts with the reason; the dead-letter stream is trimmed', async () => {
    const redisC = new Redis(redis.url);
    try {
      const dead = `${prefix}jobs:dead:hold`;
      for (let n = 0; n < 3; n++) {
        const j = await submit('hold', hold(n), '?max_attempts=1');
        await waitStatus(j.id, 'running');
        await kill9();
        await start();
        const failed = await waitStatus(j.id, 'failed');
        expect(failed.attempts).toBe(1);
        expect(failed.last_error).toMatch(/stopped answering 1 time/);
        const entries = (await redisC.xrange(dead, '-', '+')) as [string, string[]][];
        const last = entries[entries.length - 1][1];
        expect(last[last.indexOf('id') + 1]).toBe(j.id);
        expect(last[last.indexOf('reason') + 1]).toMatch(/stopped answering/);
        // --jobs-dead-max-len 2: never more than two dead letters kept.
        expect(entries.length).toBe(Math.min(2, n + 1));
      }
      expect((await getJson(`${url()}/v2/models/hold/jobs/queue`)).dead_lettered).toBe(2);
    } finally {
      redisC.disconnect();
    }
  });

  test('streams stay bounded: after many jobs they hold nothing', async () => {
    const ids = await Promise.all(Array.from({ length: 300 }, (_, i) => submit('simple', simpleBody([row(16, i % 7)], [row(16)]), i % 3 === 0 ? '?priority=low' : '')));
    const queue = await getJson(`${url()}/v2/models/simple/jobs/queue`);
    expect(queue.depth.normal + queue.depth.low + queue.running).toBeGreaterThan(0); // measured while they were there
    for (const j of ids) await waitStatus(j.id, 'succeeded');
    const r = new Redis(redis.url);
    try {
      for (const p of ['high', 'normal', 'low']) expect(await r.xlen(`${prefix}jobs:stream:simple:${p}`)).toBe(0);
      const info = (await r.call('XINFO', 'STREAM', `${prefix}jobs:stream:simple:normal`)) as unknown[];
      expect(Number(info[info.indexOf('entries-added') + 1])).toBeGreaterThanOrEqual(200);
    } finally {
      r.disconnect();
    }
  });

  test('a job past its ttl_seconds in the queue expires and is never run', async () => {
    const blocker = await submit('hold', hold(1));
    await waitStatus(blocker.id, 'running');
    const short = await submit('hold', hold(2), '?ttl_seconds=0.2');
    const after = await submit('hold', hold(3));
    await waitStatus(short.id, 'expired');
    await waitStatus(after.id, 'succeeded');
    const j = await job(short.id);
    expect(j).toMatchObject({ status: 'expired', attempts: 0 });
    expect(j.started_at).toBeUndefined();
    expect((await fetch(`${url()}/v2/jobs/${short.id}/result`)).status).toBe(410);
  });

  test('scale from zero on the backlog: jobs waiting start copies, up to what the backlog asks', async () => {
    expect(await readyCopies('zero')).toHaveLength(0);
    const ids = [];
    for (let i = 0; i < 8; i++) ids.push((await submit('zero', hold(i))).id);
    // One job runs at a time on one copy (batch 1): only the waiting ones can ask for the second copy.
    await waitFor(async () => (await readyCopies('zero')).length === 2, 60_000, 'two copies of zero');
    for (const id of ids) await waitStatus(id, 'succeeded');
    const metrics = await (await fetch(broker.metricsUrl)).text();
    expect(metrics).toMatch(/tb_jobs_waiting\{model="zero",priority="normal"\} 0/);
    expect(metrics).toMatch(/tb_jobs_running\{model="zero"\} 0/);
    expect(metrics).toMatch(/tb_jobs_oldest_age_seconds\{model="zero"\} 0/);
    expect(metrics).toMatch(/tb_jobs_dead_lettered\{model="hold"\} 2/);
  });

  test('property: random submit, cancel and kill sequences end with every job in exactly one final state', async () => {
    const op = fc.oneof(
      { weight: 4, arbitrary: fc.record({ kind: fc.constant('submit' as const), model: fc.constantFrom('quick', 'hold', 'simple') }) },
      { weight: 2, arbitrary: fc.record({ kind: fc.constant('cancel' as const), pick: fc.nat() }) },
      { weight: 1, arbitrary: fc.constant({ kind: 'kill-broker' as const }) },
      { weight: 1, arbitrary: fc.constant({ kind: 'kill-copy' as const }) },
    );
    await fc.assert(fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 6 }), async (ops) => {
      const ids: string[] = [];
      const cancelled = new Set<string>();
      let kills = 0;
      for (const o of ops) {
        if (o.kind === 'submit') {
          const body = o.model === 'simple' ? simpleBody([row(16)], [row(16)]) : hold();
          ids.push((await submit(o.model, body, '?max_attempts=10')).id);
        } else if (o.kind === 'cancel') {
          if (ids.length === 0) continue;
          const id = ids[o.pick % ids.length];
          const res = await fetch(`${url()}/v2/jobs/${id}`, { method: 'DELETE' });
          expect(res.status).toBe(200);
          if (((await res.json()) as Job).status === 'cancelled') cancelled.add(id);
        } else if (o.kind === 'kill-broker') {
          kills++;
          await kill9();
          await start();
        } else {
          const copy = (await readyCopies('hold'))[0];
          if (!copy) continue;
          kills++;
          process.kill(copy.pid!, 'SIGKILL');
        }
      }
      const finals = new Set(['succeeded', 'cancelled']);
      await waitFor(async () => (await Promise.all(ids.map(job))).every((j) => finals.has(j.status)), 90_000, 'every job final');
      for (const id of ids) {
        const j = await job(id);
        expect(j.status).toBe(cancelled.has(id) ? 'cancelled' : 'succeeded');
        expect(j.attempts).toBeLessThanOrEqual(kills + 1);
        const res = await fetch(`${url()}/v2/jobs/${id}/result`);
        expect(res.status).toBe(j.status === 'succeeded' ? 200 : 410);
      }
    }), { numRuns: 4 });
  });
});
