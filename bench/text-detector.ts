/**
 * Text detector benchmark: PP-OCRv4 detection (examples/models/text-detector) called
 * directly in this process (one ONNX session, no broker) vs. through the broker (a
 * child process, process runtime, one model copy, the ZeroMQ bridge), at batch 1 and
 * at the configured batch B: images/s, latency, and the batching gain.
 *
 *   npm run build && node dist/bench/text-detector.js
 *
 * Env: BENCH_TD_SECONDS (per point, default 20), BENCH_TD_BATCH (B, default 8),
 * TD_SIZE (network input side, default 640), BENCH_WRITE=0 (do not write bench/results/).
 * Runs the direct points first, then starts the broker, so the two never share the CPU.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ZmqClient, type Tensor } from '../sdk/node';
import { TextDetector } from '../examples/models/text-detector/detector';
import { demoPicture, type RenderedPicture } from '../examples/models/text-detector/pictures';
import { modelStats, startBrokerProc, type BrokerProc } from './broker-proc';
import { startRedis, type RedisProc } from './procs';
import { Samples, type LatencySummary } from './samples';

const ROOT = path.resolve(__dirname, '..', '..');
const SECONDS = Number(process.env.BENCH_TD_SECONDS ?? 20);
const BATCH = Number(process.env.BENCH_TD_BATCH ?? 8);
const SIZE = Number(process.env.TD_SIZE ?? 640);

interface Point {
  path: 'direct' | 'broker';
  mode: string;
  /** Pictures per model run (mean, for the broker from its statistics). */
  batch: number;
  images: number;
  seconds: number;
  imagesPerS: number;
  /** Per call (a batch call returns all its pictures at once). */
  latency: LatencySummary;
}

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

async function directPoints(picture: RenderedPicture): Promise<Point[]> {
  const det = await TextDetector.create({ size: SIZE });
  const pic = { data: picture.data, width: picture.width, height: picture.height };
  const points: Point[] = [];
  for (const b of [1, BATCH]) {
    log(`direct, batch ${b}: ${SECONDS} s`);
    const pics = Array.from({ length: b }, () => pic);
    const r = await closedLoop(b, 1, async () => { await det.detect(pics); });
    points.push({ path: 'direct', mode: b === 1 ? 'one picture per call' : `${b} pictures per call`, batch: b, ...r, imagesPerS: r.images / r.seconds });
  }
  await det.session.release();
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
  const runs: Array<{ mode: string; perCall: number; concurrency: number; input: Tensor }> = [
    { mode: 'one client, one picture per request', perCall: 1, concurrency: 1, input: one },
    { mode: `${BATCH} clients, one picture per request (batched by the broker)`, perCall: 1, concurrency: BATCH, input: one },
    { mode: `one client, ${BATCH} pictures per request`, perCall: BATCH, concurrency: 1, input: many },
  ];
  const points: Point[] = [];
  try {
    for (const run of runs) {
      log(`broker, ${run.mode}: ${SECONDS} s`);
      const call = async () => { await client.infer('text-detector', [run.input], { outputs }); };
      await call(); // warm-up outside the statistics window
      const before = await modelStats(broker.url, 'text-detector');
      const r = await closedLoop(run.perCall, run.concurrency, call);
      const after = await modelStats(broker.url, 'text-detector');
      const batch = (after.inference - before.inference) / Math.max(1, after.execution - before.execution);
      points.push({ path: 'broker', mode: run.mode, batch, ...r, imagesPerS: r.images / r.seconds });
    }
  } finally {
    await client.close();
  }
  return points;
}

function markdown(points: Point[], when: string, picture: RenderedPicture): string {
  const cpus = os.cpus();
  const direct1 = points.find((p) => p.path === 'direct' && p.batch === 1)!.imagesPerS;
  const broker1 = points.find((p) => p.path === 'broker' && p.mode.startsWith('one client, one'))!.imagesPerS;
  const directAt = (b: number) => points.find((p) => p.path === 'direct' && Math.round(p.batch) === b)?.imagesPerS;
  const lines = [
    `Run ${when} on ${cpus[0]?.model.trim() ?? 'unknown CPU'}, ${cpus.length} cores, Node ${process.version} (${os.platform()} ${os.release()}), ` +
      `onnxruntime-node CPU execution provider (default threads), PP-OCRv4 detection at ${SIZE}×${SIZE}, ${SECONDS} s per point after one warm-up call ` +
      `(load average before ${loadBefore.map((v) => v.toFixed(2)).join(' ')}, after ${os.loadavg().map((v) => v.toFixed(2)).join(' ')}).`,
    `Picture: ${picture.width}×${picture.height} RGB with ${picture.truth.length} text lines (the demo picture), resized/padded to the network input inside the model; ` +
      'boxes, scores and counts returned (no annotated JPEG). Broker: a child process, process runtime, one model copy, ' +
      `batch_size ${BATCH}, max_wait_ms 5, requests over the ZeroMQ bridge (ZmqClient). Direct: the same TextDetector class (sharp resize, one session.run, DB post-processing) called in one process.`,
    '',
    '| path | load | batch (mean) | images/s | latency p50 ms | p99 ms | vs direct batch 1 | batching gain |',
    '|---|---|---:|---:|---:|---:|---:|---:|',
    ...points.map((p) => {
      const base = p.path === 'direct' ? direct1 : broker1;
      const same = directAt(Math.round(p.batch));
      return `| ${p.path} | ${p.mode} | ${round(p.batch, 1)} | ${round(p.imagesPerS, 2)} | ${round(p.latency.p50, 0)} | ${round(p.latency.p99, 0)} | ` +
        `${round(p.imagesPerS / direct1, 2)}× | ${round(p.imagesPerS / base, 2)}×${same && p.path === 'broker' ? ` (direct at this batch: ${round(same, 2)}/s)` : ''} |`;
    }),
    '',
    'Latency is per call: a request of several pictures returns them all at once. Batching gain = images/s of the row / images/s at batch 1 on the same path. ' +
      'GPU figures are pending a GPU machine (the model uses the CUDA execution provider when its copy has a GPU, NVIDIA_VISIBLE_DEVICES set, and an onnxruntime-node build with CUDA).',
  ];
  return lines.join('\n');
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
      root: ROOT, dir, redisUrl: redis.url, waitFor: ['text-detector'], readyTimeoutMs: 120_000,
      models: {
        'text-detector': {
          command: ['node', path.join(ROOT, 'dist', 'examples', 'models', 'text-detector', 'main.js')],
          batch_size: BATCH, max_wait_ms: 5, timeout_ms: 120_000, queue_capacity: 1024,
          env: { TD_SIZE: String(SIZE), TD_MAX_BATCH: String(BATCH) },
        },
      },
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
