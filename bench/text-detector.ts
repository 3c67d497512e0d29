/**
 * Text detector benchmark: PP-OCRv4 detection (examples/models/text-detector) called
 * directly in this process (one ONNX session, no broker) vs. through the broker (a
 * child process, process runtime, the ZeroMQ bridge; the model entries of MODELS), at
 * batch 1 and at the configured batch B: images/s, latency, queue and copy compute
 * time per request, and the batching gain.
 *
 *   npm run build && node dist/bench/text-detector.js
 *
 * Env: BENCH_TD_SECONDS (per point, default 20), BENCH_TD_BATCH (B, default 8),
 * TD_SIZE (network input side, default 640), BENCH_WRITE=0 (do not write bench/results/).
 * Runs the direct points first, then starts the broker, so the two never share the CPU.
 */
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ZmqClient, type Tensor } from '../sdk/node';
import { TextDetector } from '../examples/models/text-detector/detector';
import { demoPicture, type RenderedPicture } from '../examples/models/text-detector/pictures';
import { modelStats, startBrokerProc, statsDelta, type BrokerProc } from './broker-proc';
import { cpuMs, startRedis, type RedisProc } from './procs';
import { Samples, type LatencySummary } from './samples';

const ROOT = path.resolve(__dirname, '..', '..');
const SECONDS = Number(process.env.BENCH_TD_SECONDS ?? 20);
const BATCH = Number(process.env.BENCH_TD_BATCH ?? 8);
const SIZE = Number(process.env.TD_SIZE ?? 640);

interface Point {
  path: 'direct' | 'broker';
  /** The broker's model entry (see MODELS). */
  model?: string;
  mode: string;
  /** Pictures per model run (mean, for the broker from its statistics). */
  batch: number;
  images: number;
  seconds: number;
  imagesPerS: number;
  /** Per call (a batch call returns all its pictures at once). */
  latency: LatencySummary;
  /** Broker rows, per request, from the model's statistics: time in the queue, time the copy reported for its batch. */
  queueMs?: number;
  computeMs?: number;
  /** CPU time per image (ms) of this process (direct: all of it, ORT's threads too), and for broker rows of the broker and of the model's copies. */
  cpu: { client: number; broker?: number; copies?: number };
}

/** The copies of `model`: children of the broker whose environment names it (TB_MODEL). */
function copyPids(broker: number, model: string): number[] {
  try {
    return readFileSync(`/proc/${broker}/task/${broker}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number)
      .filter((p) => {
        try {
          return readFileSync(`/proc/${p}/environ`, 'utf8').split('\0').includes(`TB_MODEL=${model}`);
        } catch {
          return false;
        }
      });
  } catch {
    return [];
  }
}

/** CPU ms of these processes now (those gone count 0). */
const cpuOf = (pids: number[]) => pids.reduce((n, p) => n + (cpuMs(p) ?? 0), 0);
const ownCpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

const MAIN = path.join(ROOT, 'dist', 'examples', 'models', 'text-detector', 'main.js');
/** One model entry of the broker; max_wait_ms 0 (a lone request goes at once), one copy, ORT's default threads, no spinning. */
const entry = (over: Record<string, unknown> = {}, env: Record<string, string> = {}) => ({
  command: ['node', MAIN], batch_size: BATCH, max_wait_ms: 0, timeout_ms: 120_000, queue_capacity: 1024,
  ...over, env: { TD_SIZE: String(SIZE), TD_MAX_BATCH: String(BATCH), TD_SPIN: '0', ...env },
});
/**
 * The broker's model entries, all the same copy code: `text-detector` is the configuration
 * measured; `-mw5` is the before (max_wait_ms 5 and ORT's spinning threads, as this bench
 * used to run it), `-spin` changes only max_wait_ms, and `-2x1` is the CPU layout for many
 * clients: two copies of one ORT thread each, one picture per batch.
 */
const MODELS: Record<string, { entry: ReturnType<typeof entry>; what: string }> = {
  'text-detector': { entry: entry(), what: `1 copy, ORT default threads, no spinning (TD_SPIN 0), batch_size ${BATCH}, max_wait_ms 0` },
  'text-detector-mw5': { entry: entry({ max_wait_ms: 5 }, { TD_SPIN: '1' }), what: `the same with ORT's spinning threads and max_wait_ms 5 (before)` },
  'text-detector-spin': { entry: entry({}, { TD_SPIN: '1' }), what: 'the same with ORT\'s spinning threads, max_wait_ms 0' },
  'text-detector-2x1': {
    entry: entry({ batch_size: 1, min_replicas: 2, max_replicas: 2 }, { TD_THREADS: '1', TD_MAX_BATCH: '1' }),
    what: '2 copies × 1 ORT thread, no spinning, batch_size 1, max_wait_ms 0',
  },
};

let loadBefore: number[] = [];
const log = (msg: string) => process.stderr.write(`[bench:text-detector] ${msg}\n`);
const round = (v: number, d = 1) => (Number.isFinite(v) ? v.toFixed(d) : '–');

/** Runs `call` (which handles `perCall` pictures) back to back for SECONDS, after one warm-up call. */
async function closedLoop(perCall: number, concurrency: number, call: () => Promise<void>): Promise<{ images: number; seconds: number; latency: LatencySummary }> {
  await call();
  const samples = new Samples();
  const until = Date.now() + SECONDS * 1000;
  const t0 = process.hrtime.bigint();
  let calls = 0;
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (Date.now() < until) {
      const s = process.hrtime.bigint();
      await call();
      samples.add(Number(process.hrtime.bigint() - s) / 1e6);
      calls++;
    }
  }));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  return { images: calls * perCall, seconds, latency: samples.summary() };
}

/** In this process: ORT's defaults (spinning threads) at batch 1, then no spinning (as the copies run) at batch 1 and B. */
async function directPoints(picture: RenderedPicture): Promise<Point[]> {
  const pic = { data: picture.data, width: picture.width, height: picture.height };
  const points: Point[] = [];
  for (const [spin, batches] of [[true, [1]], [false, [1, BATCH]]] as const) {
    const det = await TextDetector.create({ size: SIZE, spin });
    for (const b of batches) {
      log(`direct, ${spin ? 'spinning' : 'no spinning'}, batch ${b}: ${SECONDS} s`);
      const pics = Array.from({ length: b }, () => pic);
      const c0 = ownCpuMs();
      const r = await closedLoop(b, 1, async () => { await det.detect(pics); });
      const mode = `${b === 1 ? 'one picture per call' : `${b} pictures per call`}, ${spin ? 'ORT defaults (spinning)' : 'no spinning'}`;
      // The warm-up call is in the CPU window: count its pictures too.
      points.push({ path: 'direct', mode, batch: b, ...r, imagesPerS: r.images / r.seconds, cpu: { client: (ownCpuMs() - c0) / (r.images + b) } });
    }
    await det.session.release();
  }
  return points;
}

async function brokerPoints(picture: RenderedPicture, broker: BrokerProc): Promise<Point[]> {
  const client = new ZmqClient(broker.zmqEndpoint, { window: 64, timeoutMs: 120_000 });
  const tensor = (n: number): Tensor => ({
    name: 'IMAGE', datatype: 'UINT8', shape: [n, picture.height, picture.width, 3],
    data: n === 1 ? picture.data : Buffer.concat(Array.from({ length: n }, () => picture.data)),
  });
  const one = tensor(1);
  const many = tensor(BATCH);
  const outputs = ['BOXES', 'SCORES', 'COUNT'];
  const runs: Array<{ model: string; mode: string; perCall: number; concurrency: number; input: Tensor }> = [
    { model: 'text-detector-mw5', mode: 'one client, one picture per request', perCall: 1, concurrency: 1, input: one },
    { model: 'text-detector-spin', mode: 'one client, one picture per request', perCall: 1, concurrency: 1, input: one },
    { model: 'text-detector', mode: 'one client, one picture per request', perCall: 1, concurrency: 1, input: one },
    { model: 'text-detector', mode: `${BATCH} clients, one picture per request (batched by the broker)`, perCall: 1, concurrency: BATCH, input: one },
    { model: 'text-detector-2x1', mode: `${BATCH} clients, one picture per request`, perCall: 1, concurrency: BATCH, input: one },
    { model: 'text-detector', mode: `one client, ${BATCH} pictures per request`, perCall: BATCH, concurrency: 1, input: many },
  ];
  const points: Point[] = [];
  try {
    for (const run of runs) {
      log(`broker ${run.model}, ${run.mode}: ${SECONDS} s`);
      const call = async () => { await client.infer(run.model, [run.input], { outputs }); };
      await Promise.all(Array.from({ length: run.concurrency }, call)); // warm-up outside the statistics window (every copy)
      const copies = copyPids(broker.pid!, run.model);
      const before = await modelStats(broker.url, run.model);
      const cpu0 = { client: ownCpuMs(), broker: cpuMs(broker.pid) ?? NaN, copies: cpuOf(copies) };
      const r = await closedLoop(run.perCall, run.concurrency, call);
      const cpu1 = { client: ownCpuMs(), broker: cpuMs(broker.pid) ?? NaN, copies: cpuOf(copies) };
      const after = await modelStats(broker.url, run.model);
      const d = statsDelta(before, after);
      // closedLoop's own warm-up call is inside the CPU window: count its pictures too.
      const n = r.images + run.perCall;
      points.push({
        path: 'broker', model: run.model, mode: run.mode, batch: d.meanRowsPerBatch, ...r, imagesPerS: r.images / r.seconds,
        queueMs: d.queueMeanMs, computeMs: d.computeMeanMs,
        cpu: { client: (cpu1.client - cpu0.client) / n, broker: (cpu1.broker - cpu0.broker) / n, copies: copies.length > 0 ? (cpu1.copies - cpu0.copies) / n : NaN },
      });
    }
  } finally {
    await client.close();
  }
  return points;
}

function markdown(points: Point[], when: string, picture: RenderedPicture): string {
  const cpus = os.cpus();
  // The baseline: the faster of the two in-process batch-1 rows.
  const direct1 = Math.max(...points.filter((p) => p.path === 'direct' && p.batch === 1).map((p) => p.imagesPerS));
  const broker1 = points.find((p) => p.model === 'text-detector' && p.mode.startsWith('one client, one'))!.imagesPerS;
  const directAt = (b: number) => (b === 1 ? direct1 : points.find((p) => p.path === 'direct' && Math.round(p.batch) === b)?.imagesPerS);
  const lines = [
    `Run ${when} on ${cpus[0]?.model.trim() ?? 'unknown CPU'}, ${cpus.length} cores, Node ${process.version} (${os.platform()} ${os.release()}), ` +
      `onnxruntime-node CPU execution provider (intra-op threads: one per core unless named), PP-OCRv4 detection at ${SIZE}×${SIZE}, ${SECONDS} s per point after one warm-up call ` +
      `(load average before ${loadBefore.map((v) => v.toFixed(2)).join(' ')}, after ${os.loadavg().map((v) => v.toFixed(2)).join(' ')}).`,
    `Picture: ${picture.width}×${picture.height} RGB with ${picture.truth.length} text lines (the demo picture), resized/padded to the network input inside the model; ` +
      'boxes, scores and counts returned (no annotated JPEG). Broker: a child process, process runtime, ' +
      'requests over the ZeroMQ bridge (ZmqClient); its model entries: ' +
      `${Object.entries(MODELS).map(([m, x]) => `\`${m}\` = ${x.what}`).join('; ')}. ` +
      'Direct: the same TextDetector class (sharp resize, one session.run, DB post-processing) called in one process.',
    '',
    '| path | model entry | load | batch (mean) | images/s | latency p50 ms | p99 ms | queue ms | copy compute ms | CPU ms/image: client · broker · copies | vs direct batch 1 | batching gain |',
    '|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...points.map((p) => {
      const base = p.path === 'direct' ? direct1 : broker1;
      const same = directAt(Math.round(p.batch));
      return `| ${p.path} | ${p.model ? `\`${p.model}\`` : '—'} | ${p.mode} | ${round(p.batch, 1)} | ${round(p.imagesPerS, 2)} | ${round(p.latency.p50, 0)} | ${round(p.latency.p99, 0)} | ` +
        `${p.queueMs === undefined ? '—' : round(p.queueMs, 1)} | ${p.computeMs === undefined ? '—' : round(p.computeMs, 1)} | ` +
        `${p.path === 'direct' ? `${round(p.cpu.client, 1)} (all, in process)` : `${round(p.cpu.client, 1)} · ${round(p.cpu.broker ?? NaN, 1)} · ${round(p.cpu.copies ?? NaN, 1)}`} | ` +
        `${round(p.imagesPerS / direct1, 2)}× | ${round(p.imagesPerS / base, 2)}×${same && p.path === 'broker' ? ` (direct at this batch: ${round(same, 2)}/s)` : ''} |`;
    }),
    '',
    '',
    targetLine(points, direct1),
    '',
    'Latency is per call: a request of several pictures returns them all at once. Queue ms and copy compute ms are per request from `/v2/models/{m}/stats` ' +
      '(compute = the copy\'s predictBatch time of the request\'s batch: preprocessing, session.run, post-processing); latency − queue − compute is the hops ' +
      '(client → broker → copy and back, 921,600 bytes in each request). CPU ms/image = CPU time (user + system, all threads) / images of the load generator ' +
      '(the ZmqClient; direct: the whole in-process detector), the broker process and the model\'s copy processes over the point: unlike wall times, ' +
      'it hardly moves with the machine\'s load, so broker + client + copies − direct is what the path costs. "vs direct batch 1" divides by the faster in-process batch-1 row. Batching gain = images/s of the row / images/s at batch 1 on the same path (broker: `text-detector`). ' +
      'GPU figures are pending a GPU machine (the model uses the CUDA execution provider when its copy has a GPU, NVIDIA_VISIBLE_DEVICES set, and an onnxruntime-node build with CUDA).',
  ];
  return lines.join('\n');
}

/** Issue 16, target 5: `text-detector` at one client ≥ 0.95× in-process batch 1; eight clients ≥ 1.0× (each entry's figure shown). */
function targetLine(points: Point[], direct1: number): string {
  const pass = (ok: boolean) => (ok ? 'pass' : '**FAIL**');
  const one = points.find((p) => p.model === 'text-detector' && p.mode.startsWith('one client, one'));
  const many = points.filter((p) => p.path === 'broker' && p.mode.startsWith(`${BATCH} clients`));
  const r1 = one ? one.imagesPerS / direct1 : NaN;
  const best = many.reduce<Point | undefined>((a, p) => (!a || p.imagesPerS > a.imagesPerS ? p : a), undefined);
  const rb = best ? best.imagesPerS / direct1 : NaN;
  return `Targets: \`text-detector\`, one client, one picture ≥ 0.95× in-process batch 1: ${pass(r1 >= 0.95)} (${round(r1, 2)}×); ` +
    `${BATCH} clients ≥ 1.0× in-process batch 1: ${pass(rb >= 1)} (${many.map((p) => `\`${p.model}\` ${round(p.imagesPerS / direct1, 2)}×`).join(', ')}).`;
}

/** Other work on the box (tests, other benchmarks) skews CPU-bound figures: wait up to BENCH_TD_QUIET_S for the load to settle. */
async function waitQuiet(): Promise<number[]> {
  const until = Date.now() + Number(process.env.BENCH_TD_QUIET_S ?? 120) * 1000;
  const limit = Math.max(0.5, os.cpus().length * 0.25);
  while (os.loadavg()[0] > limit && Date.now() < until) {
    log(`load average ${os.loadavg()[0].toFixed(2)} > ${limit}: waiting for a quiet machine`);
    await new Promise((r) => setTimeout(r, 10_000));
  }
  return os.loadavg();
}

async function main(): Promise<void> {
  const picture = await demoPicture(640, 480);
  loadBefore = await waitQuiet();
  const when = new Date().toISOString();
  const points = await directPoints(picture);

  const dir = await mkdtemp(path.join(os.tmpdir(), 'tb-bench-td-'));
  let redis: RedisProc | undefined;
  let broker: BrokerProc | undefined;
  try {
    redis = await startRedis(dir);
    broker = await startBrokerProc({
      root: ROOT, dir, redisUrl: redis.url, waitFor: Object.keys(MODELS), readyTimeoutMs: 180_000,
      models: Object.fromEntries(Object.entries(MODELS).map(([m, x]) => [m, x.entry])),
    });
    points.push(...(await brokerPoints(picture, broker)));
  } finally {
    await broker?.stop();
    await redis?.stop();
    await rm(dir, { recursive: true, force: true });
  }

  const md = markdown(points, when, picture);
  process.stdout.write(`${md}\n`);
  if (process.env.BENCH_WRITE !== '0') {
    const out = path.join(ROOT, 'bench', 'results');
    await mkdir(out, { recursive: true });
    await writeFile(path.join(out, 'text-detector.md'), `${md}\n`);
    await writeFile(path.join(out, 'text-detector.json'), `${JSON.stringify({ when, size: SIZE, batch: BATCH, seconds: SECONDS, points }, null, 2)}\n`);
    log(`wrote bench/results/text-detector.{md,json}`);
  }
}

main().catch((e: Error) => {
  process.stderr.write(`${e.stack ?? e.message}\n`);
  process.exit(1);
});
