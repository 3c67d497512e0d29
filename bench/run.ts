/**
 * `npm run bench`: one run that measures, side by side,
 *  1. REST → broker → `simple` vs. the `simple` copy driven directly over ZeroMQ,
 *     at each concurrency of BENCH_CONCURRENCY (default 1,16,64);
 *  2. `sleepy` (t = a + b·n) through the broker at BENCH_SLEEPY_CONCURRENCY (64)
 *     with batch_size 32 and 1, against the ideal B / (a + b·B).
 * Progress goes to stderr, the markdown table to stdout; results are written to
 * bench/results/latest.{json,md} and between the bench markers of README.md.
 * See bench/README.md.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Tensor } from '../core/tensor';
import { modelStats, startBrokerProc, statsDelta, type BrokerProc, type StatsDelta } from './broker-proc';
import { DirectCopy } from './direct';
import { runHttpPoint, type HttpPoint } from './http-load';
import { LOOPBACK, cpuMs, spawnChild, startRedis, waitUntil, type RedisProc } from './procs';
import { toMarkdown, updateReadme, writeResults, type BenchResult, type SimpleRow, type SleepyRow } from './report';

const ROOT = path.resolve(__dirname, '..', '..');
const modelMain = (m: string) => path.join(ROOT, 'dist', 'examples', 'models', m, 'main.js');

function envNum(name: string, dflt: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${name} must be a positive number (got '${v}')`);
  return n;
}

const SECONDS = envNum('BENCH_SECONDS', 5);
const WARMUP = envNum('BENCH_WARMUP_SECONDS', 1);
const CONCURRENCY = (process.env.BENCH_CONCURRENCY || '1,16,64').split(',').map((s) => {
  const n = Number(s.trim());
  if (!Number.isInteger(n) || n < 1) throw new Error(`BENCH_CONCURRENCY: '${s}' is not a positive integer`);
  return n;
});
const SLEEPY_C = envNum('BENCH_SLEEPY_CONCURRENCY', 64);
const HTTP_FLOOR = process.env.BENCH_HTTP_FLOOR !== '0';
const SLEEPY_A = 5;
const SLEEPY_B = 0.5;
const SLEEPY_BATCHES = [32, 1];

const log = (msg: string) => process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);

const WIDTH = 16;
const row0 = Array.from({ length: WIDTH }, (_, i) => i);
const row1 = Array.from({ length: WIDTH }, () => 1);
const simpleBody = JSON.stringify({
  inputs: [
    { name: 'INPUT0', datatype: 'INT32', shape: [1, WIDTH], data: row0 },
    { name: 'INPUT1', datatype: 'INT32', shape: [1, WIDTH], data: row1 },
  ],
});
const sleepyBody = JSON.stringify({ inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [1, WIDTH], data: row0.map((x) => x / 2) }] });
const int32Tensor = (name: string, values: number[]): Tensor => ({
  name, datatype: 'INT32', shape: [1, values.length], data: Buffer.from(new Int32Array(values).buffer),
});
const simpleTensors = [int32Tensor('INPUT0', row0), int32Tensor('INPUT1', row1)];

const sleepyName = (b: number) => (b === 32 ? 'sleepy' : `sleepy-b${b}`);

function machine() {
  const cpus = os.cpus();
  return { cpu: cpus[0]?.model.trim() ?? 'unknown', cores: cpus.length, node: process.version, platform: `${os.platform()} ${os.release()}`, loadavg: os.loadavg() };
}

/** One request through the broker, checked, so a broken setup fails before any timing. */
async function checkRest(url: string, model: string, body: string, expect: (outputs: { name: string; data: number[] }[]) => boolean): Promise<string> {
  const res = await fetch(`${url}/v2/models/${model}/infer`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`${model}: infer answered ${res.status}: ${text.slice(0, 300)}`);
  const json = JSON.parse(text) as { outputs: { name: string; data: number[] }[] };
  if (!expect(json.outputs)) throw new Error(`${model}: unexpected reply ${text.slice(0, 300)}`);
  return text;
}

/** The bare HTTP server of bare-http.ts as a child process answering `reply`; resolves to its URL. */
async function startHttpFloor(reply: string, cleanups: (() => Promise<void>)[]): Promise<string> {
  const h = spawnChild(process.execPath, [path.join(__dirname, 'bare-http.js')], { ...process.env, BENCH_REPLY: reply });
  cleanups.push(() => h.stop(2000));
  let port = 0;
  await waitUntil(async () => {
    port = Number(/^(\d+)$/m.exec(h.output())?.[1] ?? 0);
    return port > 0;
  }, 'the bare HTTP server', 10_000, () => !h.exited());
  return `http://${LOOPBACK}:${port}/v2/models/simple/infer`;
}

/**
 * autocannon drops its connections when a run ends; the broker cancels those
 * requests. Let the batches already at the copy come back before reading the
 * counters, so each window holds the same edge effects.
 */
const settle = () => new Promise((r) => setTimeout(r, 300));

/** An HTTP point with the broker's own counters and CPU over the same window. */
async function brokerPoint(broker: BrokerProc, model: string, body: string, connections: number): Promise<HttpPoint & { server: StatsDelta; brokerCpuPct?: number }> {
  const url = `${broker.url}/v2/models/${model}/infer`;
  await runHttpPoint({ url, body, connections, seconds: WARMUP });
  await settle();
  const before = await modelStats(broker.url, model);
  const cpu0 = cpuMs(broker.pid);
  const p = await runHttpPoint({ url, body, connections, seconds: SECONDS });
  const cpu1 = cpuMs(broker.pid);
  await settle();
  const after = await modelStats(broker.url, model);
  const brokerCpuPct = cpu0 !== undefined && cpu1 !== undefined ? ((cpu1 - cpu0) / (p.seconds * 1000)) * 100 : undefined;
  if (p.non2xx + p.errors + p.timeouts > 0) log(`  ${model} c=${connections}: ${p.non2xx} non-2xx, ${p.errors} errors, ${p.timeouts} timeouts`);
  return { ...p, server: statsDelta(before, after), brokerCpuPct };
}

async function main(cleanups: (() => Promise<void>)[]): Promise<void> {
  const m = machine();
  log(`machine: ${m.cpu}, ${m.cores} cores, Node ${m.node}; ${SECONDS} s per point, warm-up ${WARMUP} s`);
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tb-bench-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));

  log('starting redis-server');
  const redis: RedisProc = await startRedis(dir);
  cleanups.push(() => redis.stop());

  const sleepyModel = (batch: number) => ({
    command: [process.execPath, modelMain('sleepy')],
    batch_size: batch,
    max_wait_ms: 0,
    queue_capacity: 4096,
    timeout_ms: 30_000,
    env: { SLEEPY_A_MS: String(SLEEPY_A), SLEEPY_B_MS: String(SLEEPY_B), SLEEPY_MAX_BATCH: '32' },
  });
  const models: Record<string, unknown> = {
    simple: { command: [process.execPath, modelMain('simple')], batch_size: 8, max_wait_ms: 0, queue_capacity: 1024, timeout_ms: 10_000 },
  };
  for (const b of SLEEPY_BATCHES) models[sleepyName(b)] = sleepyModel(b);

  log(`starting the broker (process runtime) with ${Object.keys(models).join(', ')}`);
  const broker = await startBrokerProc({ root: ROOT, dir, redisUrl: redis.url, models, waitFor: Object.keys(models) });
  cleanups.push(() => broker.stop());
  log(`broker ready at ${broker.url} (pid ${broker.pid})`);

  log('starting the direct simple copy');
  const direct = await DirectCopy.start({ dir, main: modelMain('simple'), model: 'simple' });
  cleanups.push(() => direct.close());
  log(`direct copy ready: credits ${direct.credits}, max batch ${direct.maxBatch}`);

  // Sanity: both paths compute the right thing.
  const simpleReply = await checkRest(broker.url, 'simple', simpleBody, (o) => o.find((t) => t.name === 'OUTPUT0')?.data.join() === row0.map((x) => x + 1).join());
  await checkRest(broker.url, sleepyName(32), sleepyBody, (o) => o[0]?.data.length === WIDTH);
  const out = await direct.infer(simpleTensors);
  const sum = new Int32Array(out[0].buffer.slice(out[0].byteOffset, out[0].byteOffset + out[0].byteLength));
  if ([...sum].join() !== row0.map((x) => x + 1).join()) throw new Error(`direct copy returned ${[...sum].join()}`);

  const floorUrl = HTTP_FLOOR ? await startHttpFloor(simpleReply, cleanups) : undefined;

  log('global warm-up');
  await runHttpPoint({ url: `${broker.url}/v2/models/simple/infer`, body: simpleBody, connections: 16, seconds: WARMUP * 2 });
  await direct.runPoint(simpleTensors, 16, WARMUP * 2);

  const simple: SimpleRow[] = [];
  for (const c of CONCURRENCY) {
    log(`simple c=${c}: direct ZeroMQ`);
    await direct.runPoint(simpleTensors, c, WARMUP);
    const d = await direct.runPoint(simpleTensors, c, SECONDS);
    log(`  direct  ${Math.round(d.throughput)} req/s, p50 ${d.latency.p50.toFixed(3)} ms, p99 ${d.latency.p99.toFixed(3)} ms`);
    let floor: HttpPoint | undefined;
    if (floorUrl) {
      log(`simple c=${c}: HTTP floor (bare node:http server, fixed reply)`);
      await runHttpPoint({ url: floorUrl, body: simpleBody, connections: c, seconds: WARMUP });
      floor = await runHttpPoint({ url: floorUrl, body: simpleBody, connections: c, seconds: SECONDS });
      log(`  floor   ${Math.round(floor.throughput)} req/s, p50 ${floor.latency.p50.toFixed(3)} ms, p99 ${floor.latency.p99.toFixed(3)} ms`);
    }
    log(`simple c=${c}: REST → broker`);
    const b = await brokerPoint(broker, 'simple', simpleBody, c);
    log(`  broker  ${Math.round(b.throughput)} req/s, p50 ${b.latency.p50.toFixed(3)} ms, p99 ${b.latency.p99.toFixed(3)} ms, ${b.server.meanRowsPerBatch.toFixed(2)} rows/batch`);
    simple.push({ concurrency: c, broker: b, direct: d, floor, addedP50Ms: b.latency.p50 - d.latency.p50, throughputRatio: b.throughput / d.throughput });
  }

  const sleepy: SleepyRow[] = [];
  for (const B of SLEEPY_BATCHES) {
    const model = sleepyName(B);
    log(`sleepy batch_size ${B} c=${SLEEPY_C}`);
    const p = await brokerPoint(broker, model, sleepyBody, SLEEPY_C);
    const ideal = (B / (SLEEPY_A + SLEEPY_B * B)) * 1000;
    log(`  ${Math.round(p.throughput)} req/s of ideal ${Math.round(ideal)} (${((p.throughput / ideal) * 100).toFixed(1)} %), ${p.server.meanRowsPerBatch.toFixed(2)} rows/batch`);
    sleepy.push({ model, batchSize: B, concurrency: SLEEPY_C, point: p, idealReqPerS: ideal, pctOfIdeal: (p.throughput / ideal) * 100 });
  }

  const c1 = simple.find((r) => r.concurrency === 1);
  const s32 = sleepy.find((r) => r.batchSize === 32);
  const result: BenchResult = {
    date: new Date().toISOString(),
    machine: m,
    settings: { seconds: SECONDS, warmupSeconds: WARMUP, concurrency: CONCURRENCY, sleepyConcurrency: SLEEPY_C, sleepyA_ms: SLEEPY_A, sleepyB_ms: SLEEPY_B },
    directCredits: direct.credits,
    simple,
    sleepy,
    targets: {
      addedP50AtC1Ms: c1?.addedP50Ms ?? NaN,
      addedP50AtC1Pass: c1 ? c1.addedP50Ms < 0.3 : null,
      sleepyPctOfIdeal: s32?.pctOfIdeal ?? NaN,
      sleepyPass: s32 ? s32.pctOfIdeal >= 90 : null,
    },
  };
  const md = toMarkdown(result);
  process.stdout.write(md);
  for (const p of await writeResults(ROOT, result, md)) log(`wrote ${path.relative(ROOT, p)}`);
  log(await updateReadme(path.join(ROOT, 'README.md'), md));
}

/** Runs the cleanups newest first; each one is awaited and its failure only logged. */
async function cleanup(cleanups: (() => Promise<void>)[]): Promise<void> {
  while (cleanups.length > 0) {
    const c = cleanups.pop()!;
    await c().catch((e: Error) => log(`cleanup: ${e.message}`));
  }
}

if (require.main === module) {
  const cleanups: (() => Promise<void>)[] = [];
  let exiting = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (exiting) return;
    exiting = true;
    log(`${sig}: cleaning up`);
    void cleanup(cleanups).then(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  main(cleanups)
    .then(
      () => 0,
      (e: Error) => {
        log(`failed: ${e.stack ?? e.message}`);
        return 1;
      },
    )
    .then(async (code) => {
      if (exiting) return;
      exiting = true;
      log('cleaning up');
      await cleanup(cleanups);
      process.exit(code);
    });
}
