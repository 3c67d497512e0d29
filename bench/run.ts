/**
 * `npm run bench`: one run that measures, side by side,
 *  1. REST → broker → `simple` vs. the `simple` copy driven directly over ZeroMQ,
 *     at each concurrency of BENCH_CONCURRENCY (default 1,16,64);
 *  2. `sleepy` (t = a + b·n) through the broker at BENCH_SLEEPY_CONCURRENCY (64)
 *     with batch_size 32 (credits 1 and 2, setTimeout and exact timer) and 1, against
 *     the ideal B / (a + b·B), with the copy's busy and idle time per batch;
 *  3. `simple` through each bridge (REST JSON, REST binary extension, gRPC
 *     ModelInfer with raw contents, ZeroMQ ZmqClient) at BENCH_BRIDGE_CONCURRENCY
 *     (1,64), against the same direct baseline;
 *  4. a 640×480 RGB picture to `image-info` as JSON numbers, as a binary tensor
 *     and as a JPEG upload at BENCH_IMAGE_CONCURRENCY (1,16).
 * Progress goes to stderr, the markdown table to stdout; results are written to
 * bench/results/latest.{json,md} and between the bench markers of README.md.
 * See bench/README.md.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Tensor } from '../proto/tensor';
import { modelStats, startBrokerProc, statsDelta, type BrokerProc, type StatsDelta } from './broker-proc';
import { GrpcInferClient, ZmqClient, binaryBody, grpcRawRequest, int32Values, splitBinaryReply } from './clients';
import { DirectCopy, type DirectPoint } from './direct';
import { stageDelta, stageSnapshot, type StageRow } from './stages';
import { grpcMarkdown, pythonGrpcAvailable, runGrpcBench, type GrpcBenchResult } from './grpc';
import { runHttpPoint, type HttpPoint } from './http-load';
import { makeImageBodies, meanRgb, type ImageBodies } from './images';
import { closedLoop, type LoopPoint } from './loop';
import { LOOPBACK, cpuMs, runMain, spawnChild, startRedis, waitUntil, type Cleanups, type RedisProc } from './procs';
import {
  toMarkdown, updateReadme, writeResults, type BenchResult, type BridgeRow, type BrokerPoint, type ImageForm, type ImageRow, type SimpleRow, type SleepyRow, type CopyWindow,
} from './report';

const ROOT = path.resolve(__dirname, '..', '..');
const modelMain = (m: string) => path.join(ROOT, 'dist', 'examples', 'models', m, 'main.js');

function envNum(name: string, dflt: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${name} must be a positive number (got '${v}')`);
  return n;
}

/** A comma-separated list of positive integers; `0` (alone) = an empty list, i.e. skip. */
function envList(name: string, dflt: string): number[] {
  const v = (process.env[name] || dflt).trim();
  if (v === '0') return [];
  return v.split(',').map((s) => {
    const n = Number(s.trim());
    if (!Number.isInteger(n) || n < 1) throw new Error(`${name}: '${s}' is not a positive integer`);
    return n;
  });
}

const SECONDS = envNum('BENCH_SECONDS', 5);
const WARMUP = envNum('BENCH_WARMUP_SECONDS', 1);
const CONCURRENCY = envList('BENCH_CONCURRENCY', '1,16,64');
const BRIDGE_C = envList('BENCH_BRIDGE_CONCURRENCY', '1,64');
const BRIDGE_SECONDS = envNum('BENCH_BRIDGE_SECONDS', SECONDS);
const IMAGE_C = envList('BENCH_IMAGE_CONCURRENCY', '1,16');
const GRPC_C = envList('BENCH_GRPC_CONCURRENCY', '1,64');
const IMAGE_SECONDS = envNum('BENCH_IMAGE_SECONDS', 3);
const IMAGE_BATCH = 8;
const SLEEPY_C = envNum('BENCH_SLEEPY_CONCURRENCY', 64);
const HTTP_FLOOR = process.env.BENCH_HTTP_FLOOR !== '0';
const SLEEPY_A = 5;
const SLEEPY_B = 0.5;
/**
 * The sleepy rows: the same copy code behind one model entry each, so the before and after of
 * each change is measured in one run. `credits` 2 = the next batch waits at the copy while one
 * runs (the SDK runs them one after the other); `exact` = SLEEPY_EXACT, the batch ends at its
 * cost-model time instead of after a setTimeout's slack. `sleepy` is the headline row.
 */
const SLEEPY_VARIANTS = [
  { model: 'sleepy-c1', batch: 32, credits: 1, exact: false },
  { model: 'sleepy-c1x', batch: 32, credits: 1, exact: true },
  { model: 'sleepy-c2', batch: 32, credits: 2, exact: false },
  { model: 'sleepy', batch: 32, credits: 2, exact: true },
  { model: 'sleepy-b1', batch: 1, credits: 2, exact: true },
];
const SLEEPY_TARGET_PCT = 95;
/** The sleepy entries run in turn this many times and each row sums its rounds, so load on a shared machine hits every entry alike. */
const SLEEPY_ROUNDS = envNum('BENCH_SLEEPY_ROUNDS', 3);

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
async function startHttpFloor(reply: string, cleanups: Cleanups): Promise<string> {
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

/** Runs `run` with the broker's counters and CPU time read around it. */
async function brokerWindow<P extends { seconds: number }>(
  broker: BrokerProc, model: string, run: () => Promise<P>,
): Promise<P & { server: StatsDelta; brokerCpuPct?: number; clientCpuPct: number; stages: StageRow[] }> {
  const before = await modelStats(broker.url, model);
  const stages0 = await stageSnapshot(broker.metricsUrl);
  const cpu0 = cpuMs(broker.pid);
  const own0 = process.cpuUsage();
  const p = await run();
  const own = process.cpuUsage(own0);
  const cpu1 = cpuMs(broker.pid);
  await settle();
  const after = await modelStats(broker.url, model);
  const server = statsDelta(before, after);
  const stages = stageDelta(stages0, await stageSnapshot(broker.metricsUrl), server.requests);
  const brokerCpuPct = cpu0 !== undefined && cpu1 !== undefined ? ((cpu1 - cpu0) / (p.seconds * 1000)) * 100 : undefined;
  const clientCpuPct = ((own.user + own.system) / 1000 / (p.seconds * 1000)) * 100;
  return { ...p, server, brokerCpuPct, clientCpuPct, stages };
}

/** An HTTP point with the broker's own counters and CPU over the same window. */
async function brokerPoint(
  broker: BrokerProc, model: string, body: string | Buffer, connections: number,
  seconds = SECONDS, headers?: Record<string, string>,
): Promise<HttpPoint & { server: StatsDelta; brokerCpuPct?: number; clientCpuPct: number; stages: StageRow[] }> {
  const url = `${broker.url}/v2/models/${model}/infer`;
  await runHttpPoint({ url, body, headers, connections, seconds: WARMUP });
  await settle();
  const p = await brokerWindow(broker, model, () => runHttpPoint({ url, body, headers, connections, seconds }));
  if (p.non2xx + p.errors + p.timeouts > 0) log(`  ${model} c=${connections}: ${p.non2xx} non-2xx, ${p.errors} errors, ${p.timeouts} timeouts`);
  return p;
}

/** An HTTP point in the common shape of every transport (errors = non-2xx + errors + timeouts). */
function fromHttp(p: HttpPoint & { server: StatsDelta; brokerCpuPct?: number; clientCpuPct: number; stages: StageRow[] }): BrokerPoint {
  return {
    connections: p.connections, seconds: p.seconds, ok: p.ok, errors: p.non2xx + p.errors + p.timeouts,
    throughput: p.throughput, latency: p.latency, server: p.server, brokerCpuPct: p.brokerCpuPct, clientCpuPct: p.clientCpuPct, stages: p.stages,
  };
}

/**
 * A `sleepy` point: the HTTP point plus the copy's own view over an inner window (0.5 s after
 * the load starts to 0.5 s before it ends, so no ramp or drain is in it): rows per batch, the
 * copy's busy time per batch (Σ compute_input + compute_infer + compute_output of batch_stats,
 * what the copy itself measured) and its idle time per batch = (window − busy) / batches. One
 * copy per model, so idle is the time the copy spent waiting between two batches.
 */
async function sleepyPoint(broker: BrokerProc, model: string, connections: number): Promise<SleepyRow['point']> {
  const url = `${broker.url}/v2/models/${model}/infer`;
  await runHttpPoint({ url, body: sleepyBody, connections, seconds: WARMUP });
  await settle();
  const p = await brokerWindow(broker, model, async () => {
    const window = async (): Promise<CopyWindow> => {
      await sleep(500);
      const a = await modelStats(broker.url, model);
      const t0 = process.hrtime.bigint();
      await sleep(Math.max(500, SECONDS * 1000 - 1000));
      const b = await modelStats(broker.url, model);
      const ns = Number(process.hrtime.bigint() - t0);
      const batches = b.execution - a.execution;
      const rows = b.inference - a.inference;
      const busyNs = b.batchBusyNs - a.batchBusyNs;
      const rowsPerBatch = batches > 0 ? rows / batches : NaN;
      return {
        seconds: ns / 1e9, batches, rowsPerBatch, reqPerS: rows / (ns / 1e9),
        busyMsPerBatch: busyNs / batches / 1e6, costMsPerBatch: SLEEPY_A + SLEEPY_B * rowsPerBatch,
        idleMsPerBatch: (ns - busyNs) / batches / 1e6, busyPct: (busyNs / ns) * 100,
      };
    };
    const [hp, copy] = await Promise.all([runHttpPoint({ url, body: sleepyBody, connections, seconds: SECONDS }), window()]);
    return { ...hp, copy };
  });
  if (p.non2xx + p.errors + p.timeouts > 0) log(`  ${model} c=${connections}: ${p.non2xx} non-2xx, ${p.errors} errors, ${p.timeouts} timeouts`);
  return p;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One sleepy row from its rounds: counts and times summed; latency = the median round's p50 and the worst round's p99. */
function sumRounds(ps: SleepyRow['point'][]): SleepyRow['point'] {
  const sum = (f: (p: SleepyRow['point']) => number) => ps.reduce((n, p) => n + f(p), 0);
  const mid = <T>(xs: T[], by: (x: T) => number) => [...xs].sort((a, b) => by(a) - by(b))[Math.floor(xs.length / 2)];
  const seconds = sum((p) => p.seconds);
  const ok = sum((p) => p.ok);
  const w = (f: (c: CopyWindow) => number) => sum((p) => f(p.copy));
  const batches = w((c) => c.batches);
  const windowS = w((c) => c.seconds);
  const busyMs = w((c) => c.busyMsPerBatch * c.batches);
  const rows = w((c) => c.rowsPerBatch * c.batches);
  const rowsPerBatch = rows / batches;
  const median = mid(ps, (p) => p.latency.p50);
  return {
    ...median,
    seconds, ok, throughput: ok / seconds,
    non2xx: sum((p) => p.non2xx), errors: sum((p) => p.errors), timeouts: sum((p) => p.timeouts),
    latency: { ...median.latency, p99: Math.max(...ps.map((p) => p.latency.p99)) },
    copy: {
      seconds: windowS, batches, rowsPerBatch, reqPerS: rows / windowS, busyMsPerBatch: busyMs / batches,
      costMsPerBatch: SLEEPY_A + SLEEPY_B * rowsPerBatch, idleMsPerBatch: (windowS * 1000 - busyMs) / batches, busyPct: (busyMs / (windowS * 1000)) * 100,
    },
  };
}

/** A closed-loop point of a non-HTTP client (gRPC, ZeroMQ) with the broker's counters and CPU. */
async function loopPoint(broker: BrokerProc, model: string, call: () => Promise<unknown>, connections: number, seconds: number): Promise<BrokerPoint> {
  await closedLoop(call, connections, WARMUP);
  await settle();
  const p: LoopPoint & { server: StatsDelta; brokerCpuPct?: number; clientCpuPct: number; stages: StageRow[] } = await brokerWindow(broker, model, () => closedLoop(call, connections, seconds));
  if (p.errors > 0) log(`  ${model} c=${connections}: ${p.errors} errors (first: ${p.firstError})`);
  return p;
}

const fmt = (p: { throughput: number; latency: { p50: number; p99: number } }, unit = 'req/s') =>
  `${p.throughput >= 100 ? Math.round(p.throughput) : p.throughput.toFixed(1)} ${unit}, p50 ${p.latency.p50.toFixed(3)} ms, p99 ${p.latency.p99.toFixed(3)} ms`;

const expectOutput0 = row0.map((x) => x + 1).join();

/** One REST binary-extension request to `simple`, checked (binary outputs). */
async function checkRestBinary(url: string, body: Buffer, headerLength: number): Promise<void> {
  const res = await fetch(`${url}/v2/models/simple/infer`, {
    method: 'POST',
    headers: { 'content-type': 'application/octet-stream', 'inference-header-content-length': String(headerLength) },
    body,
  });
  const bytes = Buffer.from(await res.arrayBuffer());
  if (res.status !== 200) throw new Error(`simple (binary): infer answered ${res.status}: ${bytes.toString().slice(0, 300)}`);
  const { header, binary } = splitBinaryReply(bytes, Number(res.headers.get('inference-header-content-length')));
  let off = 0;
  for (const o of header.outputs) {
    const n = o.parameters?.binary_data_size ?? 0;
    if (o.name === 'OUTPUT0') {
      const got = int32Values(binary.subarray(off, off + n)).join();
      if (got !== expectOutput0) throw new Error(`simple (binary): OUTPUT0 = ${got}`);
      return;
    }
    off += n;
  }
  throw new Error(`simple (binary): no binary OUTPUT0 in ${JSON.stringify(header)}`);
}

/** One image-info request, checked: 480×640 and the channel means (within `tol`). */
async function checkImage(url: string, what: string, body: string | Buffer, headers: Record<string, string>, img: ImageBodies, tol: number): Promise<void> {
  const res = await fetch(`${url}/v2/models/image-info/infer`, { method: 'POST', headers, body });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`image-info (${what}): infer answered ${res.status}: ${text.slice(0, 300)}`);
  const outs = (JSON.parse(text) as { outputs: { name: string; data: number[] }[] }).outputs;
  const get = (n: string) => outs.find((o) => o.name === n)?.data ?? [];
  const want = meanRgb(img.rgb);
  const mean = get('MEAN_RGB');
  if (get('HEIGHT')[0] !== img.height || get('WIDTH')[0] !== img.width || mean.length !== 3 || mean.some((m, i) => Math.abs(m - want[i]) > tol)) {
    throw new Error(`image-info (${what}): unexpected reply ${text.slice(0, 300)} (want means ${want.map((m) => m.toFixed(2)).join()})`);
  }
}

async function main(cleanups: Cleanups): Promise<void> {
  const m = machine();
  log(`machine: ${m.cpu}, ${m.cores} cores, Node ${m.node}; ${SECONDS} s per point, warm-up ${WARMUP} s`);
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tb-bench-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));

  log('starting redis-server');
  const redis: RedisProc = await startRedis(dir);
  cleanups.push(() => redis.stop());

  const sleepyModel = (v: (typeof SLEEPY_VARIANTS)[number]) => ({
    command: [process.execPath, modelMain('sleepy')],
    batch_size: v.batch,
    max_wait_ms: 0,
    queue_capacity: 4096,
    timeout_ms: 30_000,
    env: {
      SLEEPY_A_MS: String(SLEEPY_A), SLEEPY_B_MS: String(SLEEPY_B), SLEEPY_MAX_BATCH: '32',
      SLEEPY_CREDITS: String(v.credits), SLEEPY_EXACT: v.exact ? '1' : '0',
    },
  });
  const models: Record<string, unknown> = {
    simple: { command: [process.execPath, modelMain('simple')], batch_size: 8, max_wait_ms: 0, queue_capacity: 1024, timeout_ms: 10_000 },
  };
  for (const v of SLEEPY_VARIANTS) models[v.model] = sleepyModel(v);
  if (IMAGE_C.length > 0) {
    models['image-info'] = { command: [process.execPath, modelMain('image-info')], batch_size: IMAGE_BATCH, max_wait_ms: 0, queue_capacity: 1024, timeout_ms: 60_000 };
  }

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
  await checkRest(broker.url, 'sleepy', sleepyBody, (o) => o[0]?.data.length === WIDTH);
  const out = await direct.infer(simpleTensors);
  const sum = int32Values(out[0]).join();
  if (sum !== expectOutput0) throw new Error(`direct copy returned ${sum}`);

  // The other bridges on `simple`, each checked once (gRPC and ZeroMQ bind after HTTP: retry until they answer).
  const bin = binaryBody(simpleTensors, true);
  const binHeaders = { 'content-type': 'application/octet-stream', 'inference-header-content-length': String(bin.headerLength) };
  const grpcReq = grpcRawRequest('simple', simpleTensors);
  const grpcClient = new GrpcInferClient(broker.grpcPort);
  cleanups.push(async () => grpcClient.close());
  if (BRIDGE_C.length > 0) {
    await checkRestBinary(broker.url, bin.body, bin.headerLength);
    let lastErr = '';
    await waitUntil(async () => {
      try {
        const r = await grpcClient.infer(grpcReq, 2000);
        const i = r.outputs.findIndex((o) => o.name === 'OUTPUT0');
        const got = i < 0 ? `no OUTPUT0 in ${r.outputs.map((o) => o.name).join()}` : int32Values(r.rawOutputContents[i]).join();
        if (got !== expectOutput0) throw new Error(`gRPC OUTPUT0 = ${got}`);
        return true;
      } catch (e) {
        lastErr = (e as Error).message;
        return false;
      }
    }, 'a gRPC answer', 15_000, broker.alive).catch((e: Error) => {
      throw new Error(`${e.message}: ${lastErr}`);
    });
    const zc = new ZmqClient(broker.zmqEndpoint, { window: 1, timeoutMs: 2000 });
    try {
      await waitUntil(async () => {
        try {
          const r = await zc.infer('simple', simpleTensors);
          const o = r.outputs.find((t) => t.name === 'OUTPUT0');
          const got = o ? int32Values(o.data).join() : 'no OUTPUT0';
          if (got !== expectOutput0) throw new Error(`ZeroMQ OUTPUT0 = ${got}`);
          return true;
        } catch (e) {
          lastErr = (e as Error).message;
          return false;
        }
      }, 'a ZeroMQ answer', 15_000, broker.alive).catch((e: Error) => {
        throw new Error(`${e.message}: ${lastErr}`);
      });
    } finally {
      await zc.close();
    }
  }

  const floorUrl = HTTP_FLOOR ? await startHttpFloor(simpleReply, cleanups) : undefined;

  log('global warm-up');
  await runHttpPoint({ url: `${broker.url}/v2/models/simple/infer`, body: simpleBody, connections: 16, seconds: WARMUP * 2 });
  await direct.runPoint(simpleTensors, 16, WARMUP * 2);

  const simple: SimpleRow[] = [];
  const bridges: BridgeRow[] = [];
  const allC = [...new Set([...CONCURRENCY, ...BRIDGE_C])].sort((a, b) => a - b);
  for (const c of allC) {
    log(`simple c=${c}: direct ZeroMQ`);
    await direct.runPoint(simpleTensors, c, WARMUP);
    const d: DirectPoint = await direct.runPoint(simpleTensors, c, SECONDS);
    log(`  direct  ${fmt(d)}`);
    let restJson: HttpPoint & { server: StatsDelta; brokerCpuPct?: number; clientCpuPct: number; stages: StageRow[] };
    if (!CONCURRENCY.includes(c)) {
      log(`simple c=${c}: REST JSON → broker`);
      restJson = await brokerPoint(broker, 'simple', simpleBody, c, BRIDGE_SECONDS);
      log(`  REST    ${fmt(restJson)}`);
    } else {
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
      restJson = b;
    }
    if (!BRIDGE_C.includes(c)) continue;

    log(`simple c=${c}: REST binary extension → broker`);
    const rb = fromHttp(await brokerPoint(broker, 'simple', bin.body, c, BRIDGE_SECONDS, binHeaders));
    log(`  binary  ${fmt(rb)}`);
    log(`simple c=${c}: gRPC ModelInfer (raw contents, one channel) → broker`);
    const g = await loopPoint(broker, 'simple', () => grpcClient.infer(grpcReq), c, BRIDGE_SECONDS);
    log(`  gRPC    ${fmt(g)}`);
    log(`simple c=${c}: ZeroMQ ZmqClient (window ${c}) → broker`);
    const zc = new ZmqClient(broker.zmqEndpoint, { window: c, timeoutMs: 30_000 });
    let z: BrokerPoint;
    try {
      z = await loopPoint(broker, 'simple', () => zc.infer('simple', simpleTensors), c, BRIDGE_SECONDS);
    } finally {
      await zc.close();
    }
    log(`  ZeroMQ  ${fmt(z)}`);
    const rj = fromHttp(restJson);
    bridges.push({
      concurrency: c,
      direct: d,
      bridges: ([['REST JSON', rj], ['REST binary', rb], ['gRPC', g], ['ZeroMQ', z]] as const).map(([bridge, point]) => ({
        bridge, point, addedP50Ms: point.latency.p50 - d.latency.p50, throughputVsRestJson: point.throughput / rj.throughput,
      })),
    });
  }

  // gRPC against its own floor (bench/grpc.ts).
  const grpcTable: GrpcBenchResult | undefined = GRPC_C.length === 0 ? undefined : await runGrpcBench({
    brokers: [{ proc: broker }], direct, model: 'simple', tensors: simpleTensors, concurrency: GRPC_C, seconds: BRIDGE_SECONDS, warmupSeconds: WARMUP, log, cleanups,
    python: process.env.BENCH_GRPC_PYTHON !== '0' && pythonGrpcAvailable(),
    check(outputs) {
      const o = outputs.find((t) => t.name === 'OUTPUT0');
      if (!o || int32Values(o.data).join() !== expectOutput0) throw new Error(`gRPC OUTPUT0 = ${o ? int32Values(o.data).join() : 'none'}`);
    },
  });

  const sleepy: SleepyRow[] = [];
  const rounds = new Map<string, SleepyRow['point'][]>();
  for (let r = 0; r < SLEEPY_ROUNDS; r++) {
    for (const v of SLEEPY_VARIANTS) {
      log(`${v.model}: batch_size ${v.batch}, credits ${v.credits}, ${v.exact ? 'exact' : 'setTimeout'} timer, c=${SLEEPY_C} (round ${r + 1}/${SLEEPY_ROUNDS})`);
      const p = await sleepyPoint(broker, v.model, SLEEPY_C);
      log(`  ${Math.round(p.throughput)} req/s, copy busy ${p.copy.busyMsPerBatch.toFixed(2)} + idle ${p.copy.idleMsPerBatch.toFixed(3)} ms per batch`);
      rounds.set(v.model, [...(rounds.get(v.model) ?? []), p]);
    }
  }
  for (const v of SLEEPY_VARIANTS) {
    const B = v.batch;
    const p = sumRounds(rounds.get(v.model)!);
    const ideal = (B / (SLEEPY_A + SLEEPY_B * B)) * 1000;
    const w = p.copy;
    log(`  ${Math.round(p.throughput)} req/s of ideal ${Math.round(ideal)} (${((p.throughput / ideal) * 100).toFixed(1)} %), ${w.rowsPerBatch.toFixed(2)} rows/batch, ` +
      `copy busy ${w.busyMsPerBatch.toFixed(2)} ms (cost ${w.costMsPerBatch.toFixed(2)}) + idle ${w.idleMsPerBatch.toFixed(3)} ms per batch`);
    sleepy.push({
      model: v.model, batchSize: B, credits: v.credits, exactTimer: v.exact, concurrency: SLEEPY_C, point: p, idealReqPerS: ideal, pctOfIdeal: (p.throughput / ideal) * 100,
    });
  }

  const images: ImageRow[] = [];
  let img: ImageBodies | undefined;
  if (IMAGE_C.length > 0) {
    img = await makeImageBodies();
    const forms: { form: ImageForm; body: string | Buffer; headers: Record<string, string>; tol: number }[] = [
      { form: 'JSON numbers', body: img.json, headers: { 'content-type': 'application/json' }, tol: 0.01 },
      { form: 'binary tensor', body: img.binary, headers: { 'content-type': 'application/octet-stream', 'inference-header-content-length': String(img.binaryHeaderLength) }, tol: 0.01 },
      { form: 'JPEG upload', body: img.jpeg, headers: { 'content-type': 'image/jpeg' }, tol: 3 },
    ];
    log(`image: ${img.width}×${img.height} RGB; JSON ${img.json.length} B, binary ${img.binary.length} B, JPEG q${img.jpegQuality} ${img.jpeg.length} B`);
    for (const x of forms) await checkImage(broker.url, x.form, x.body, x.headers, img, x.tol);
    for (const c of IMAGE_C) {
      const row: ImageRow = { concurrency: c, forms: [] };
      for (const x of forms) {
        log(`image-info c=${c}: ${x.form}`);
        const p = fromHttp(await brokerPoint(broker, 'image-info', x.body, c, IMAGE_SECONDS, x.headers));
        log(`  ${fmt(p, 'images/s')}, ${p.server.meanRowsPerBatch.toFixed(2)} rows/batch`);
        row.forms.push({ form: x.form, bodyBytes: typeof x.body === 'string' ? Buffer.byteLength(x.body) : x.body.length, point: p, throughputVsJson: NaN });
      }
      const json = row.forms[0].point.throughput;
      for (const x of row.forms) x.throughputVsJson = x.point.throughput / json;
      images.push(row);
    }
  }

  const c1 = simple.find((r) => r.concurrency === 1);
  const s32 = sleepy.find((r) => r.model === 'sleepy');
  const b1 = bridges.find((r) => r.concurrency === 1);
  const zmqC1 = b1?.bridges.find((x) => x.bridge === 'ZeroMQ')?.addedP50Ms ?? NaN;
  const restC1 = b1?.bridges.find((x) => x.bridge === 'REST JSON')?.addedP50Ms ?? NaN;
  const imageRatios = images.map((r) => ({ concurrency: r.concurrency, ratio: r.forms.find((x) => x.form === 'binary tensor')?.throughputVsJson ?? NaN }));
  const result: BenchResult & { grpc?: GrpcBenchResult } = {
    date: new Date().toISOString(),
    machine: m,
    settings: { seconds: SECONDS, warmupSeconds: WARMUP, concurrency: CONCURRENCY, sleepyConcurrency: SLEEPY_C, sleepyA_ms: SLEEPY_A, sleepyB_ms: SLEEPY_B, sleepyRounds: SLEEPY_ROUNDS },
    directCredits: direct.credits,
    simple,
    sleepy,
    bridges,
    bridgeSettings: { seconds: BRIDGE_SECONDS, concurrency: BRIDGE_C },
    images,
    imageSettings: {
      seconds: IMAGE_SECONDS, concurrency: IMAGE_C, width: img?.width ?? 0, height: img?.height ?? 0,
      jpegQuality: img?.jpegQuality ?? 0, jpegBytes: img?.jpeg.length ?? 0, batchSize: IMAGE_BATCH,
    },
    targets: {
      addedP50AtC1Ms: c1?.addedP50Ms ?? NaN,
      addedP50AtC1Pass: c1 ? c1.addedP50Ms < 0.3 : null,
      sleepyPctOfIdeal: s32?.pctOfIdeal ?? NaN,
      sleepyTargetPct: SLEEPY_TARGET_PCT,
      sleepyPass: s32 ? s32.pctOfIdeal >= SLEEPY_TARGET_PCT : null,
      zmqAddedP50AtC1Ms: zmqC1,
      restAddedP50AtC1Ms: restC1,
      zmqBelowRestPass: b1 ? zmqC1 < restC1 : null,
      imageBinaryOverJson: imageRatios,
      imageBinaryPass: imageRatios.length > 0 ? imageRatios.every((r) => r.ratio >= 5) : null,
    },
    grpc: grpcTable,
  };
  const md = toMarkdown(result) + (grpcTable ? `\n${grpcMarkdown(grpcTable)}` : '');
  process.stdout.write(md);
  if (process.env.BENCH_WRITE === '0') {
    log('BENCH_WRITE=0: results not written, README.md left alone');
    return;
  }
  for (const p of await writeResults(ROOT, result, md)) log(`wrote ${path.relative(ROOT, p)}`);
  log(await updateReadme(path.join(ROOT, 'README.md'), md));
}

if (require.main === module) runMain(main, log);
