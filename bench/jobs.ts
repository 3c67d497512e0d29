/**
 * Jobs benchmark (issue 15), one broker child process (process runtime, jobs
 * on, one redis-server), everything measured side by side in one run:
 *
 *  1. Throughput on the same model (`simple`, batch 8): direct `/infer`
 *     (closed loop, C connections) against jobs through the broker (N jobs
 *     submitted over REST by C submitters, timed until the last one finished).
 *  2. Live latency under a deep backlog on `work` (sleepy, 20 ms per batch of
 *     up to 8): live p50/p99 of a closed loop with no job waiting, then the
 *     same load while BACKLOG jobs wait (jobs use what live traffic leaves
 *     idle, as background requests in the batcher). Depth at the start and end of the
 *     window and jobs finished during it are reported with the figures.
 *
 *   npm run build && npm run bench:jobs
 *
 * Env: BENCH_JOBS_SECONDS (per point, default 10), BENCH_JOBS_N (default 5000),
 * BENCH_JOBS_BACKLOG (default 10000), BENCH_JOBS_CONNECTIONS (default 16),
 * BENCH_JOBS_LIVE_RESERVE (--jobs-live-reserve, default 0), BENCH_WRITE=0 (do not write bench/results/).
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startBrokerProc, type BrokerProc } from './broker-proc';
import { runHttpPoint, type HttpPoint } from './http-load';
import { cpuMs, runMain, startRedis, type RedisProc } from './procs';

const ROOT = path.resolve(__dirname, '..', '..');
const SECONDS = Number(process.env.BENCH_JOBS_SECONDS ?? 10);
const N = Number(process.env.BENCH_JOBS_N ?? 5000);
const BACKLOG = Number(process.env.BENCH_JOBS_BACKLOG ?? 10_000);
const C = Number(process.env.BENCH_JOBS_CONNECTIONS ?? 16);
const LIVE_C = 4;
const RESERVE = process.env.BENCH_JOBS_LIVE_RESERVE ?? '0';
const WORK_MS = 20;
const log = (m: string) => process.stderr.write(`[bench:jobs] ${m}\n`);

const simpleBody = JSON.stringify({
  inputs: [
    { name: 'INPUT0', datatype: 'INT32', shape: [1, 16], data: Array.from({ length: 16 }, (_, i) => i) },
    { name: 'INPUT1', datatype: 'INT32', shape: [1, 16], data: Array.from({ length: 16 }, () => 1) },
  ],
});
const workBody = JSON.stringify({ inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [1, 4], data: [1, 2, 3, 4] }] });

interface Queue { depth: { high: number; normal: number; low: number }; running: number; dead_lettered: number }
const queue = async (b: BrokerProc, model: string): Promise<Queue> => (await fetch(`${b.url}/v2/models/${model}/jobs/queue`)).json() as Promise<Queue>;
const waiting = (q: Queue) => q.depth.high + q.depth.normal + q.depth.low;

/** Submits `n` jobs with `c` concurrent submitters; returns their ids and the submit rate. */
async function submitJobs(b: BrokerProc, model: string, body: string, n: number, c: number): Promise<{ ids: string[]; perS: number }> {
  const ids: string[] = [];
  let next = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: c }, async () => {
    while (next < n) {
      next++;
      const res = await fetch(`${b.url}/v2/models/${model}/jobs`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
      if (res.status !== 202) throw new Error(`submit answered ${res.status}: ${await res.text()}`);
      ids.push(((await res.json()) as { id: string }).id);
    }
  }));
  return { ids, perS: n / ((performance.now() - t0) / 1000) };
}

/** Waits (polling the queue figures, 50 ms) until no job of `model` waits or runs. */
async function drained(b: BrokerProc, model: string, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const q = await queue(b, model);
    if (waiting(q) === 0 && q.running === 0) return;
    if (Date.now() > until) throw new Error(`jobs of ${model} not done after ${timeoutMs} ms: ${JSON.stringify(q)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function statuses(b: BrokerProc, ids: string[]): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (let i = 0; i < ids.length; i += 64) {
    const views = await Promise.all(ids.slice(i, i + 64).map(async (id) => ((await (await fetch(`${b.url}/v2/jobs/${id}`)).json()) as { status: string }).status));
    for (const s of views) out[s] = (out[s] ?? 0) + 1;
  }
  return out;
}

const fmt = (n: number, d = 1) => n.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d });

async function main(cleanups: (() => Promise<void>)[]): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tb-bench-jobs-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const redis: RedisProc = await startRedis(dir);
  cleanups.push(() => redis.stop());
  const broker = await startBrokerProc({
    root: ROOT, dir, redisUrl: redis.url,
    models: {
      simple: { command: [process.execPath, path.join(ROOT, 'dist/examples/models/simple/main.js')], batch_size: 8 },
      work: { command: [process.execPath, path.join(ROOT, 'dist/examples/models/sleepy/main.js')], batch_size: 8, max_wait_ms: 2,
        env: { SLEEPY_A_MS: String(WORK_MS), SLEEPY_B_MS: '0' } },
    },
    waitFor: ['simple', 'work'],
    extraArgs: ['--jobs', 'true', '--jobs-blob-dir', path.join(dir, 'blobs'), '--jobs-live-reserve', RESERVE, '--jobs-max-queued', String(Math.max(100_000, BACKLOG * 2))],
  });
  cleanups.push(() => broker.stop());
  log(`broker up (pid ${broker.pid}); ${SECONDS} s per point, ${N} jobs, backlog ${BACKLOG}, live reserve ${RESERVE}`);

  // Warm-up: both paths once.
  await runHttpPoint({ url: `${broker.url}/v2/models/simple/infer`, body: simpleBody, connections: C, seconds: 2 });
  await submitJobs(broker, 'simple', simpleBody, 200, C);
  await drained(broker, 'simple', 60_000);

  // 1. Same model, same connections: /infer against jobs.
  const cpu0 = cpuMs(broker.pid);
  const direct: HttpPoint = await runHttpPoint({ url: `${broker.url}/v2/models/simple/infer`, body: simpleBody, connections: C, seconds: SECONDS });
  const cpu1 = cpuMs(broker.pid);
  log(`direct /infer: ${fmt(direct.throughput)} req/s`);
  const t0 = performance.now();
  const sub = await submitJobs(broker, 'simple', simpleBody, N, C);
  await drained(broker, 'simple', 600_000);
  const jobsS = (performance.now() - t0) / 1000;
  const cpu2 = cpuMs(broker.pid);
  const done = await statuses(broker, sub.ids);
  log(`jobs: ${fmt(N / jobsS)} jobs/s (submitted at ${fmt(sub.perS)}/s), ${JSON.stringify(done)}`);

  // 2. Live latency on `work`, without and with a deep backlog.
  const live = () => runHttpPoint({ url: `${broker.url}/v2/models/work/infer`, body: workBody, connections: LIVE_C, seconds: SECONDS });
  const baseline = await live();
  log(`live, no backlog: p50 ${fmt(baseline.latency.p50, 2)} ms, p99 ${fmt(baseline.latency.p99, 2)} ms`);
  const backlogSub = await submitJobs(broker, 'work', workBody, BACKLOG, 32);
  const before = waiting(await queue(broker, 'work'));
  const under = await live();
  const after = waiting(await queue(broker, 'work'));
  log(`live, ${before} -> ${after} jobs waiting: p50 ${fmt(under.latency.p50, 2)} ms, p99 ${fmt(under.latency.p99, 2)} ms`);
  await drained(broker, 'work', 900_000);
  const workDone = await statuses(broker, backlogSub.ids);

  const result = {
    when: new Date().toISOString(), cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model, seconds: SECONDS, connections: C, liveReserve: RESERVE,
    throughput: {
      direct: { reqPerS: direct.throughput, p99Ms: direct.latency.p99, brokerCpuMsPerReq: cpu0 !== undefined && cpu1 !== undefined ? (cpu1 - cpu0) / direct.ok : undefined, non2xx: direct.non2xx },
      jobs: { n: N, jobsPerS: N / jobsS, submitPerS: sub.perS, statuses: done, brokerCpuMsPerJob: cpu1 !== undefined && cpu2 !== undefined ? (cpu2 - cpu1) / N : undefined },
    },
    live: {
      model: `work (sleepy, ${WORK_MS} ms per batch of up to 8)`, connections: LIVE_C,
      baseline: { reqPerS: baseline.throughput, p50Ms: baseline.latency.p50, p99Ms: baseline.latency.p99, non2xx: baseline.non2xx },
      backlog: { submitted: BACKLOG, waitingAtStart: before, waitingAtEnd: after, reqPerS: under.throughput, p50Ms: under.latency.p50, p99Ms: under.latency.p99, non2xx: under.non2xx, statuses: workDone },
    },
  };
  const t = result.throughput;
  const md = [
    '# Jobs benchmark (`npm run bench:jobs`)',
    '',
    `${result.when}, ${result.cpus} CPUs (${result.cpuModel}), a shared machine: compare the rows of one run, not across runs.`,
    `One broker child process (process runtime, --jobs true, --jobs-live-reserve ${RESERVE}), one redis-server, ${SECONDS} s per point.`,
    '',
    '## Throughput on the same model (`simple`, batch 8)',
    '',
    '| Path | Rate | Broker CPU | Note |',
    '|---|---:|---:|---|',
    `| direct \`/infer\`, ${C} connections | ${fmt(t.direct.reqPerS)} req/s | ${t.direct.brokerCpuMsPerReq !== undefined ? `${fmt(t.direct.brokerCpuMsPerReq, 3)} ms/req` : 'n/a'} | p99 ${fmt(t.direct.p99Ms, 2)} ms |`,
    `| jobs, ${N} submitted by ${C} clients, until the last finished | ${fmt(t.jobs.jobsPerS)} jobs/s | ${t.jobs.brokerCpuMsPerJob !== undefined ? `${fmt(t.jobs.brokerCpuMsPerJob, 3)} ms/job` : 'n/a'} | submits at ${fmt(t.jobs.submitPerS)}/s; ${JSON.stringify(t.jobs.statuses)} |`,
    `| ratio jobs / direct | ${fmt(t.jobs.jobsPerS / t.direct.reqPerS, 3)} | | |`,
    '',
    `## Live latency under a job backlog (${result.live.model}, ${LIVE_C} live connections)`,
    '',
    '| Point | Live req/s | p50 | p99 | Jobs waiting (start -> end) |',
    '|---|---:|---:|---:|---|',
    `| no backlog | ${fmt(result.live.baseline.reqPerS)} | ${fmt(result.live.baseline.p50Ms, 2)} ms | ${fmt(result.live.baseline.p99Ms, 2)} ms | 0 |`,
    `| ${BACKLOG} jobs submitted | ${fmt(result.live.backlog.reqPerS)} | ${fmt(result.live.backlog.p50Ms, 2)} ms | ${fmt(result.live.backlog.p99Ms, 2)} ms | ${before} -> ${after} |`,
    `| ratio backlog / none | ${fmt(result.live.backlog.reqPerS / result.live.baseline.reqPerS, 3)} | ${fmt(result.live.backlog.p50Ms / result.live.baseline.p50Ms, 3)} | ${fmt(result.live.backlog.p99Ms / result.live.baseline.p99Ms, 3)} | |`,
    '',
    `Backlog jobs at the end: ${JSON.stringify(workDone)}. Non-2xx live answers: ${result.live.baseline.non2xx} / ${result.live.backlog.non2xx}.`,
    '',
  ].join('\n');
  process.stdout.write(`${md}\n`);
  if (process.env.BENCH_WRITE !== '0') {
    await mkdir(path.join(ROOT, 'bench', 'results'), { recursive: true });
    await writeFile(path.join(ROOT, 'bench', 'results', 'jobs.json'), `${JSON.stringify(result, null, 2)}\n`);
    await writeFile(path.join(ROOT, 'bench', 'results', 'jobs.md'), md);
    log('wrote bench/results/jobs.{md,json}');
  }
}

runMain(main, log);
