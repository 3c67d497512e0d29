/**
 * Video streams against the stateful `motion` model: S concurrent streams,
 * each one gRPC ModelStreamInfer call sending 25 frames/s (open loop: frame k
 * leaves at t0 + k × 40 ms whatever the answers) as one sequence, against
 * copies with a fixed number of slots. Reports frames/s delivered, per-frame
 * latency (send → answer), slot utilisation (sampled), backlog, mean batch
 * rows, dropped frames (an error, e.g. the per-frame deadline, or no answer)
 * and order errors (answers out of send order, or a FRAME_INDEX that does not
 * count up: the model saw the stream's frames out of order or lost its state).
 *
 *   npm run build && node dist/bench/streams.js        (npm run bench:streams)
 *
 * Env: BENCH_STREAMS (default "4,8,16,32" on one copy), BENCH_SCALE_STREAMS
 * ("16,32" with sequence_scale_up to 2 copies; "0" skips), BENCH_WAIT_STREAMS
 * ("8" on a copy with max_wait_ms BENCH_WAIT_MS = 10; "0" skips), BENCH_STREAM_SECONDS
 * (4), BENCH_FPS (25), BENCH_FRAME ("160x120"), BENCH_SLOTS (8),
 * BENCH_DEADLINE_MS (2000), BENCH_WRITE (1; 0 = print only).
 */
import * as grpc from '@grpc/grpc-js';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { MessageInitShape } from '@bufbuild/protobuf';
import { INFERENCE_SERVICE } from '../bridges/grpc/service-definition';
import type { SequenceStatus } from '../core/sequence-scheduler';
import type { ModelInferRequestSchema, ModelStreamInferResponse } from '../proto/gen/grpc_service_pb';
import { startBrokerProc, type BrokerProc } from './broker-proc';
import { startRedis } from './procs';

const ROOT = path.resolve(__dirname, '..', '..');
const env = (k: string, d: string) => process.env[k] ?? d;
const list = (s: string) => s.split(',').map(Number).filter((n) => n > 0);
const STREAMS = list(env('BENCH_STREAMS', '4,8,16,32'));
const SCALE_STREAMS = list(env('BENCH_SCALE_STREAMS', '16,32'));
const WAIT_STREAMS = list(env('BENCH_WAIT_STREAMS', '8'));
const WAIT_MS = Number(env('BENCH_WAIT_MS', '10'));
const SECONDS = Number(env('BENCH_STREAM_SECONDS', '4'));
const FPS = Number(env('BENCH_FPS', '25'));
const [FW, FH] = env('BENCH_FRAME', '160x120').split('x').map(Number);
const SLOTS = Number(env('BENCH_SLOTS', '8'));
const DEADLINE_MS = Number(env('BENCH_DEADLINE_MS', '2000'));
const WRITE = env('BENCH_WRITE', '1') !== '0';
const log = (m: string) => process.stderr.write(`[streams] ${m}\n`);

type InferInit = MessageInitShape<typeof ModelInferRequestSchema>;

const motion = (maxReplicas: number, maxWaitMs = 0) => ({
  command: ['node', path.join(ROOT, 'dist', 'examples', 'models', 'motion', 'main.js')],
  stateless: false,
  batch_size: SLOTS,
  max_sequences: SLOTS,
  min_replicas: 1,
  max_replicas: maxReplicas,
  sequence_scale_up: maxReplicas > 1,
  max_wait_ms: maxWaitMs,
  sequence_backlog: 1024,
  sequence_idle_ms: 5000,
  queue_capacity: 100_000,
  timeout_ms: 10_000,
  // A batch costs 2 ms + 0.25 ms per frame: a GPU-like fixed cost that batching amortises.
  env: { MOTION_A_MS: '2', MOTION_B_MS: '0.25' },
});

interface Row {
  label: string;
  streams: number;
  slots: string;
  sent: number;
  delivered: number;
  dropped: number;
  orderErrors: number;
  fps: number;
  p50: number;
  p99: number;
  max: number;
  utilisation: number;
  maxBacklog: number;
  batchRows: number;
  capacity: number;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

async function status(url: string, model: string): Promise<SequenceStatus> {
  return (await fetch(`${url}/v2/models/${model}/sequences`)).json() as Promise<SequenceStatus>;
}

async function batchCounters(url: string, model: string): Promise<{ inference: number; execution: number }> {
  const s = ((await (await fetch(`${url}/v2/models/${model}/stats`)).json()) as { model_stats: { inference_count: number; execution_count: number }[] }).model_stats[0];
  return { inference: s.inference_count, execution: s.execution_count };
}

/** One camera: a ModelStreamInfer call sending `frames` frames at FPS as one sequence. */
function stream(client: grpc.Client, model: string, id: string, frames: number, latencies: number[], t0: number): Promise<{ delivered: number; dropped: number; orderErrors: number }> {
  const def = INFERENCE_SERVICE.ModelStreamInfer;
  const call = client.makeBidiStreamRequest(def.path, def.requestSerialize as (r: InferInit) => Buffer,
    def.responseDeserialize as (b: Buffer) => ModelStreamInferResponse, new grpc.Metadata(), {});
  const sentAt = new Map<string, number>();
  let delivered = 0;
  let dropped = 0;
  let orderErrors = 0;
  let lastPos = -1;
  let lastIndex = -1;
  const pixels = Buffer.alloc(FW * FH * 3);
  return new Promise((resolve) => {
    call.on('data', (msg: ModelStreamInferResponse) => {
      const rid = msg.inferResponse?.id ?? '';
      const at = sentAt.get(rid);
      if (at === undefined) return;
      sentAt.delete(rid);
      if (msg.errorMessage) dropped++;
      else {
        latencies.push(performance.now() - at);
        delivered++;
        const r = msg.inferResponse!;
        const i = r.outputs.findIndex((o) => o.name === 'FRAME_INDEX');
        const raw = r.rawOutputContents[i];
        const index = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength).readInt32LE(0);
        const pos = Number(rid.slice(rid.lastIndexOf('-') + 1));
        // In send order, and the model's count of this stream's frames goes up (dropped frames it never saw are not counted).
        if (pos <= lastPos || index <= lastIndex || index > pos || (dropped === 0 && index !== pos)) orderErrors++;
        lastPos = pos;
        lastIndex = index;
      }
    });
    call.on('error', () => undefined);
    call.on('end', () => resolve({ delivered, dropped: dropped + sentAt.size, orderErrors }));
    const phase = Math.random() * (1000 / FPS);
    let k = 0;
    const next = () => {
      if (k === frames) {
        call.end();
        return;
      }
      const rid = `${id}-${k}`;
      pixels.fill((k * 5) & 255);
      sentAt.set(rid, performance.now());
      call.write({
        modelName: model,
        id: rid,
        inputs: [{ name: 'FRAME', datatype: 'UINT8', shape: [1n, BigInt(FH), BigInt(FW), 3n] }],
        rawInputContents: [pixels],
        outputs: [{ name: 'FRAME_INDEX' }, { name: 'MOTION' }],
        parameters: {
          sequence_id: { parameterChoice: { case: 'stringParam', value: id } },
          sequence_start: { parameterChoice: { case: 'boolParam', value: k === 0 } },
          sequence_end: { parameterChoice: { case: 'boolParam', value: k === frames - 1 } },
          timeout: { parameterChoice: { case: 'int64Param', value: BigInt(DEADLINE_MS * 1000) } },
        },
      } as InferInit);
      k++;
      // Open loop, no drift: frame k is due at t0 + phase + k / FPS.
      setTimeout(next, Math.max(0, t0 + phase + (k * 1000) / FPS - performance.now()));
    };
    setTimeout(next, Math.max(0, t0 + phase - performance.now()));
  });
}

async function scenario(broker: BrokerProc, model: string, label: string, S: number, copies: number): Promise<Row> {
  const client = new grpc.Client(`127.0.0.1:${broker.grpcPort}`, grpc.credentials.createInsecure(), { 'grpc.max_send_message_length': 64 << 20 });
  const frames = Math.round(SECONDS * FPS);
  const latencies: number[] = [];
  const before = await batchCounters(broker.url, model);
  const samples: { used: number; slots: number; backlog: number }[] = [];
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const st = await status(broker.url, model);
      samples.push({ used: st.active, slots: st.slots, backlog: st.backlog });
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  const t0 = performance.now() + 100;
  const results = await Promise.all(Array.from({ length: S }, (_, i) => stream(client, model, `${label}-${S}-cam${i}`, frames, latencies, t0)));
  const wall = (performance.now() - t0) / 1000;
  sampling = false;
  await sampler;
  const after = await batchCounters(broker.url, model);
  client.close();
  latencies.sort((a, b) => a - b);
  // Utilisation while streams were running: the share of the copies' slots holding a sequence.
  const busy = samples.filter((s) => s.used > 0 || s.backlog > 0);
  const utilisation = busy.length > 0 ? busy.reduce((n, s) => n + s.used / Math.max(1, s.slots), 0) / busy.length : 0;
  const delivered = results.reduce((n, r) => n + r.delivered, 0);
  const slotsSeen = [...new Set(samples.map((s) => s.slots))].sort((a, b) => a - b).join('→');
  return {
    label, streams: S, slots: slotsSeen,
    sent: S * frames, delivered,
    dropped: results.reduce((n, r) => n + r.dropped, 0),
    orderErrors: results.reduce((n, r) => n + r.orderErrors, 0),
    fps: delivered / wall,
    p50: percentile(latencies, 50), p99: percentile(latencies, 99), max: latencies[latencies.length - 1] ?? NaN,
    utilisation,
    maxBacklog: Math.max(0, ...samples.map((s) => s.backlog)),
    batchRows: (after.inference - before.inference) / Math.max(1, after.execution - before.execution),
    capacity: copies * SLOTS,
  };
}

function table(rows: Row[]): string {
  const f = (n: number, d = 1) => (Number.isFinite(n) ? n.toFixed(d) : '–');
  const head = '| setup | streams | slots | frames sent | delivered | frames/s | p50 ms | p99 ms | max ms | slot utilisation | max backlog | mean batch rows | dropped | order errors |\n' +
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|';
  return [head, ...rows.map((r) =>
    `| ${r.label} | ${r.streams} | ${r.slots} | ${r.sent} | ${r.delivered} | ${f(r.fps)} | ${f(r.p50)} | ${f(r.p99)} | ${f(r.max)} | ${f(r.utilisation * 100, 0)} % | ${r.maxBacklog} | ${f(r.batchRows, 2)} | ${r.dropped} | ${r.orderErrors} |`)].join('\n');
}

async function main(): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tb-bench-streams-'));
  const redis = await startRedis(dir);
  let broker: BrokerProc | undefined;
  const rows: Row[] = [];
  try {
    const models: Record<string, unknown> = { motion: motion(1) };
    if (SCALE_STREAMS.length > 0) models['motion-scale'] = motion(2);
    if (WAIT_STREAMS.length > 0) models['motion-wait'] = motion(1, WAIT_MS);
    broker = await startBrokerProc({ root: ROOT, dir, redisUrl: redis.url, models, waitFor: Object.keys(models) });
    // Warm-up: one short stream.
    await scenario(broker, 'motion', 'warm-up', 2, 1);
    for (const S of STREAMS) {
      log(`${S} streams on 1 copy (${SLOTS} slots)`);
      rows.push(await scenario(broker, 'motion', `1 copy × ${SLOTS} slots`, S, 1));
    }
    for (const S of WAIT_STREAMS) {
      log(`${S} streams on 1 copy, max_wait_ms ${WAIT_MS}`);
      rows.push(await scenario(broker, 'motion-wait', `1 copy × ${SLOTS} slots, max_wait_ms ${WAIT_MS}`, S, 1));
    }
    for (const S of SCALE_STREAMS) {
      log(`${S} streams, sequence_scale_up to 2 copies`);
      rows.push(await scenario(broker, 'motion-scale', `scale-up to 2 copies × ${SLOTS}`, S, 2));
    }
  } finally {
    await broker?.stop();
    await redis.stop();
    await rm(dir, { recursive: true, force: true });
  }
  const cpu = os.cpus();
  const md = [
    '# Video streams against the stateful `motion` model',
    '',
    `Run ${new Date().toISOString()} on ${cpu[0]?.model ?? 'unknown CPU'}, ${cpu.length} cores, Node ${process.version} (load avg before ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}).`,
    `Each stream is one gRPC ModelStreamInfer call sending ${FPS} frames/s (open loop) for ${SECONDS} s as one sequence: ` +
      `${Math.round(SECONDS * FPS)} frames of ${FW}x${FH} RGB (UINT8 [1,${FH},${FW},3]), start on the first, end on the last, a per-frame deadline of ${DEADLINE_MS} ms. ` +
      `The motion model (process runtime, batch_size ${SLOTS}, max_sequences ${SLOTS}) costs 2 ms + 0.25 ms per frame per batch. ` +
      'Broker, copies and load generator share the machine; everything on 127.0.0.1.',
    '',
    table(rows),
    '',
    'frames/s = answered frames / wall time from the first frame sent to the last answer. Latency = send → answer per frame (exact percentiles). ' +
      'Slot utilisation = mean of (sequences holding a slot / slots of the ready copies), sampled every 50 ms while streams ran. ' +
      'Max backlog = most sequences waiting for a slot at once. Dropped = frames answered with an error (the deadline, mostly) or not at all. ' +
      'Order errors = answers of a stream that came out of send order, or whose FRAME_INDEX (the model\'s count of the frames it saw in the sequence) did not go up by one per frame it saw (must be 0). ' +
      'Streams beyond the slots wait in the backlog until earlier streams end (Triton\'s Direct strategy); with sequence_scale_up a second copy is started for them. ' +
      `With max_wait_ms 0 (the default) a frame is sent the moment the copy is free, so spread-out streams make small batches; max_wait_ms ${WAIT_MS} trades up to ${WAIT_MS} ms of latency for fuller batches.`,
    '',
  ].join('\n');
  process.stdout.write(`${md}\n`);
  if (WRITE) {
    await writeFile(path.join(ROOT, 'bench', 'results', 'streams.md'), md);
    await writeFile(path.join(ROOT, 'bench', 'results', 'streams.json'), JSON.stringify({ rows, fps: FPS, seconds: SECONDS, frame: [FW, FH], slots: SLOTS }, null, 2));
    log('wrote bench/results/streams.md and streams.json');
  }
}

main().catch((e) => {
  process.stderr.write(`${(e as Error).stack ?? e}\n`);
  process.exit(1);
});
