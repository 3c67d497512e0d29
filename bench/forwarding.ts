/**
 * `npm run bench:forwarding`: what a forwarded request costs (README "Several
 * brokers"). Two brokers on one Redis; sequences of the stateful `motion` model
 * are started on broker A (which then owns them); their later requests are sent,
 * in alternating rounds of the same run, straight to A ("direct") and to B, which
 * forwards each one to A and relays the answer ("forwarded"). Per point: req/s,
 * latency, and CPU time per request of each broker process (from /proc), which
 * the shared machine's noise moves less than latency. Results in
 * bench/results/forwarding.{json,md}.
 * Env: BENCH_FWD_CONCURRENCY (1,8), BENCH_FWD_SECONDS (3), BENCH_FWD_ROUNDS (2).
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startBrokerProc, type BrokerProc } from './broker-proc';
import { closedLoop, type LoopPoint } from './loop';
import { cpuMs, runMain, startRedis } from './procs';

const ROOT = path.resolve(__dirname, '..', '..');
const modelMain = (m: string) => path.join(ROOT, 'dist', 'examples', 'models', m, 'main.js');
const list = (name: string, dflt: string) => (process.env[name] || dflt).split(',').map(Number);
const CONCURRENCY = list('BENCH_FWD_CONCURRENCY', '1,8');
const SECONDS = Number(process.env.BENCH_FWD_SECONDS || 3);
const ROUNDS = Number(process.env.BENCH_FWD_ROUNDS || 2);
const FRAME = Array.from({ length: 8 * 8 * 3 }, (_, i) => i & 255);

interface Point {
  path: 'direct' | 'forwarded';
  concurrency: number;
  round: number;
  loop: LoopPoint;
  /** CPU ms per request of the owner (A) and of the forwarding broker (B). */
  cpuA: number;
  cpuB: number;
}

async function frame(url: string, id: string, start: boolean): Promise<void> {
  const res = await fetch(`${url}/v2/models/motion/infer`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ inputs: [{ name: 'FRAME', datatype: 'UINT8', shape: [1, 8, 8, 3], data: FRAME }], parameters: { sequence_id: id, sequence_start: start } }),
  });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${text.slice(0, 200)}`);
}

async function point(a: BrokerProc, b: BrokerProc, via: BrokerProc, ids: string[], round: number): Promise<Point> {
  const free = [...ids];
  const a0 = cpuMs(a.pid) ?? 0;
  const b0 = cpuMs(b.pid) ?? 0;
  const loop = await closedLoop(async () => {
    const id = free.pop()!;
    try {
      await frame(via.url, id, false);
    } finally {
      free.push(id);
    }
  }, ids.length, SECONDS);
  const n = Math.max(1, loop.ok);
  return { path: via === a ? 'direct' : 'forwarded', concurrency: ids.length, round, loop, cpuA: ((cpuMs(a.pid) ?? 0) - a0) / n, cpuB: ((cpuMs(b.pid) ?? 0) - b0) / n };
}

function markdown(points: Point[]): string {
  const rows = ['| concurrency | path | round | req/s | p50 ms | p99 ms | CPU ms/req owner A | CPU ms/req broker B | errors |', '|---|---|---|---|---|---|---|---|---|'];
  for (const p of points) {
    rows.push(`| ${p.concurrency} | ${p.path} | ${p.round} | ${p.loop.throughput.toFixed(0)} | ${p.loop.latency.p50.toFixed(3)} | ${p.loop.latency.p99.toFixed(3)} | ${p.cpuA.toFixed(3)} | ${p.cpuB.toFixed(3)} | ${p.loop.errors} |`);
  }
  const sum = ['', '| concurrency | forwarded / direct: req/s | p50 | CPU per request, both brokers |', '|---|---|---|---|'];
  for (const c of CONCURRENCY) {
    const of = (path: Point['path']) => points.filter((p) => p.concurrency === c && p.path === path);
    const mean = (ps: Point[], f: (p: Point) => number) => ps.reduce((s, p) => s + f(p), 0) / ps.length;
    const d = of('direct');
    const f = of('forwarded');
    sum.push(`| ${c} | ${(mean(f, (p) => p.loop.throughput) / mean(d, (p) => p.loop.throughput)).toFixed(2)} | ${(mean(f, (p) => p.loop.latency.p50) / mean(d, (p) => p.loop.latency.p50)).toFixed(2)} | ` +
      `${(mean(f, (p) => p.cpuA + p.cpuB) / mean(d, (p) => p.cpuA + p.cpuB)).toFixed(2)} |`);
  }
  return [...rows, ...sum].join('\n');
}

runMain(async (cleanups) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tb-bench-fwd-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const redis = await startRedis(dir);
  cleanups.push(() => redis.stop());
  const models = {
    motion: { command: [process.execPath, modelMain('motion')], stateless: false, batch_size: 8, max_sequences: 32, min_replicas: 1, max_replicas: 2, sequence_idle_ms: 600_000 },
  };
  const start = async (id: string) => {
    await mkdir(path.join(dir, id));
    const b = await startBrokerProc({ root: ROOT, dir: path.join(dir, id), redisUrl: redis.url, models, waitFor: ['motion'], brokerId: id, extraArgs: ['--socket-dir', path.join(dir, 'sock')] });
    cleanups.push(() => b.stop());
    return b;
  };
  const a = await start('a');
  const b = await start('b');
  const points: Point[] = [];
  for (const c of CONCURRENCY) {
    const ids = Array.from({ length: c }, (_, i) => `bench-${c}-${i}`);
    for (const id of ids) await frame(a.url, id, true); // A owns them
    for (let round = 1; round <= ROUNDS; round++) {
      for (const via of [a, b]) {
        const p = await point(a, b, via, ids, round);
        process.stderr.write(`c=${c} ${p.path} round ${round}: ${p.loop.throughput.toFixed(0)} req/s, p50 ${p.loop.latency.p50.toFixed(3)} ms, CPU/req A ${p.cpuA.toFixed(3)} B ${p.cpuB.toFixed(3)} ms, errors ${p.loop.errors}${p.loop.firstError ? ` (${p.loop.firstError})` : ''}\n`);
        points.push(p);
      }
    }
  }
  const load = os.loadavg().map((l) => l.toFixed(1)).join(' / ');
  const md = markdown(points);
  process.stdout.write(`${md}\n`);
  const out = path.join(ROOT, 'bench', 'results');
  await writeFile(path.join(out, 'forwarding.json'), JSON.stringify({ at: new Date().toISOString(), cpus: os.cpus().length, loadavg: os.loadavg(), seconds: SECONDS, points }, null, 2));
  await writeFile(path.join(out, 'forwarding.md'), `# Forwarded vs direct requests (bench/forwarding.ts)\n\nRun ${new Date().toISOString()} on ${os.cpus().length} CPUs (load average at the end ${load}: other work on the machine moves latency and req/s far more than CPU time per request), ${SECONDS} s per point, rounds alternating direct / forwarded in one run. CPU ms per request are each broker process's user + system time over the point divided by the answers.\n\n${md}\n`);
}, (m) => process.stderr.write(`${m}\n`));
