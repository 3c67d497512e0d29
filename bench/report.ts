/** Turns a benchmark result into markdown, and writes it where it belongs. */
import { stageTable, type StageRow } from './stages';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { StatsDelta } from './broker-proc';
import type { DirectPoint } from './direct';
import type { HttpPoint } from './http-load';
import type { LatencySummary } from './samples';

export interface Machine {
  cpu: string;
  cores: number;
  node: string;
  platform: string;
  loadavg: number[];
}

export interface SimpleRow {
  concurrency: number;
  broker: HttpPoint & { server: StatsDelta; brokerCpuPct?: number };
  direct: DirectPoint;
  /** A bare node:http server answering the same bytes (absent with BENCH_HTTP_FLOOR=0). */
  floor?: HttpPoint;
  addedP50Ms: number;
  throughputRatio: number;
}

/** The copy's own view of a sleepy point over an inner window of the load (see sleepyPoint in run.ts). */
export interface CopyWindow {
  seconds: number;
  batches: number;
  rowsPerBatch: number;
  /** Rows answered per second in the window. */
  reqPerS: number;
  /** The copy's measured time per batch (input + infer + output). */
  busyMsPerBatch: number;
  /** The cost model's time for the mean batch: a + b·rows. */
  costMsPerBatch: number;
  /** (window − busy) / batches: the copy waiting between batches. */
  idleMsPerBatch: number;
  busyPct: number;
}

export interface SleepyRow {
  model: string;
  batchSize: number;
  /** Batches the copy takes in flight (READY credits). */
  credits: number;
  /** SLEEPY_EXACT: the batch ends at its cost-model time, not after a setTimeout's slack. */
  exactTimer: boolean;
  concurrency: number;
  point: HttpPoint & { server: StatsDelta; brokerCpuPct?: number; copy: CopyWindow };
  idealReqPerS: number;
  pctOfIdeal: number;
}

/** One measured point of any transport through the broker, with the broker's counters over the same window. */
export interface BrokerPoint {
  connections: number;
  seconds: number;
  ok: number;
  errors: number;
  throughput: number;
  latency: LatencySummary;
  server: StatsDelta;
  brokerCpuPct?: number;
  /** CPU time of the bench process (the load generator / client) / wall time. */
  clientCpuPct?: number;
  firstError?: string;
  /** The broker's per-stage histograms over the window (bench/stages.ts). */
  stages?: StageRow[];
}

export type Bridge = 'REST JSON' | 'REST binary' | 'gRPC' | 'ZeroMQ';

export interface BridgeRow {
  concurrency: number;
  direct: DirectPoint;
  bridges: { bridge: Bridge; point: BrokerPoint; addedP50Ms: number; throughputVsRestJson: number }[];
}

export type ImageForm = 'JSON numbers' | 'binary tensor' | 'JPEG upload';

export interface ImageRow {
  concurrency: number;
  forms: { form: ImageForm; bodyBytes: number; point: BrokerPoint; throughputVsJson: number }[];
}

export interface BenchResult {
  date: string;
  machine: Machine;
  settings: { seconds: number; warmupSeconds: number; concurrency: number[]; sleepyConcurrency: number; sleepyA_ms: number; sleepyB_ms: number; sleepyRounds?: number };
  directCredits: number;
  simple: SimpleRow[];
  sleepy: SleepyRow[];
  bridges: BridgeRow[];
  bridgeSettings: { seconds: number; concurrency: number[] };
  images: ImageRow[];
  imageSettings: { seconds: number; concurrency: number[]; width: number; height: number; jpegQuality: number; jpegBytes: number; batchSize: number };
  targets: {
    addedP50AtC1Ms: number;
    addedP50AtC1Pass: boolean | null;
    sleepyPctOfIdeal: number;
    /** The % of ideal `sleepy` (batch 32, credits 2) must reach. */
    sleepyTargetPct: number;
    sleepyPass: boolean | null;
    /** ZeroMQ added p50 < REST JSON added p50, both at concurrency 1 (same direct baseline). */
    zmqAddedP50AtC1Ms: number;
    restAddedP50AtC1Ms: number;
    zmqBelowRestPass: boolean | null;
    /** Binary-tensor images/s ÷ JSON images/s at each image concurrency; pass = ≥ 5 at every one. */
    imageBinaryOverJson: { concurrency: number; ratio: number }[];
    imageBinaryPass: boolean | null;
  };
}

const f = (v: number, digits = 2) => (Number.isFinite(v) ? v.toFixed(digits) : '—');
const int = (v: number) => (Number.isFinite(v) ? Math.round(v).toLocaleString('en-US') : '—');
const pass = (ok: boolean | null) => (ok === null ? 'n/a' : ok ? '**pass**' : '**FAIL**');

export function toMarkdown(r: BenchResult): string {
  const m = r.machine;
  const s = r.settings;
  const out: string[] = [];
  out.push(`Run ${r.date} on ${m.cpu}, ${m.cores} cores, Node ${m.node} (${m.platform}, load avg ${m.loadavg.map((x) => x.toFixed(2)).join(' ')}).`);
  out.push(`${s.seconds} s per point after ${s.warmupSeconds} s of warm-up; broker = child process (process runtime) with its own redis-server; everything on 127.0.0.1; load from autocannon in the bench process.`);
  out.push('');
  out.push('**1. `simple`, one row per request: REST → broker → copy vs. the copy called directly over ZeroMQ**');
  out.push('');
  out.push('| concurrency | broker req/s | broker p50 ms | broker p99 ms | direct req/s | direct p50 ms | direct p99 ms | added p50 ms | req/s ratio broker/direct | HTTP floor req/s | HTTP floor p50 ms | rows/batch | broker CPU |');
  out.push('|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const row of r.simple) {
    const b = row.broker;
    const d = row.direct;
    out.push(
      `| ${row.concurrency} | ${int(b.throughput)} | ${f(b.latency.p50, 3)} | ${f(b.latency.p99, 3)} | ${int(d.throughput)} | ${f(d.latency.p50, 3)} | ${f(d.latency.p99, 3)} | ${f(row.addedP50Ms, 3)} | ${f(row.throughputRatio)} | ${row.floor ? int(row.floor.throughput) : '—'} | ${row.floor ? f(row.floor.latency.p50, 3) : '—'} | ${f(b.server.meanRowsPerBatch)} | ${b.brokerCpuPct === undefined ? '—' : `${Math.round(b.brokerCpuPct)} %`} |`,
    );
  }
  out.push('');
  out.push(
    `Direct = the bench's own ROUTER → one \`simple\` copy, one row per BATCH, no batching; the copy grants ${r.directCredits} credit(s), so at most ${r.directCredits} batch(es) are outstanding at the copy and the other callers queue in the bench (their latency includes that wait). ` +
      'Added p50 = broker p50 − direct p50: HTTP + JSON + scheduling + the broker\'s ZeroMQ hop. ' +
      'HTTP floor = a bare node:http server in its own process answering the same reply bytes, loaded by the same client: the part of "added" no HTTP broker in Node can avoid. ' +
      'Broker CPU = broker process CPU time / wall time (100 % = one core).',
  );
  out.push('');
  out.push(`**2. \`sleepy\` (a = ${s.sleepyA_ms} ms, b = ${s.sleepyB_ms} ms per row) through the broker at concurrency ${s.sleepyConcurrency}, max_wait_ms 0**`);
  out.push('');
  out.push('| model | batch_size | credits | timer | req/s | ideal B/(a+b·B) | % of ideal | rows/batch | copy busy ms/batch | a+b·rows ms | copy idle ms/batch | copy busy % | p50 ms | p99 ms | errors |');
  out.push('|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const row of r.sleepy) {
    const p = row.point;
    const w = p.copy;
    out.push(
      `| \`${row.model}\` | ${row.batchSize} | ${row.credits} | ${row.exactTimer ? 'exact' : 'setTimeout'} | ${int(p.throughput)} | ${int(row.idealReqPerS)} | ${f(row.pctOfIdeal, 1)} % | ${f(w.rowsPerBatch)} | ` +
        `${f(w.busyMsPerBatch, 2)} | ${f(w.costMsPerBatch, 2)} | ${f(w.idleMsPerBatch, 3)} | ${f(w.busyPct, 1)} % | ${f(p.latency.p50, 2)} | ${f(p.latency.p99, 2)} | ${p.non2xx + p.errors + p.timeouts} |`,
    );
  }
  out.push('');
  out.push(
    `One copy per model, max_wait_ms 0; the entries ran in turn, ${r.settings.sleepyRounds ?? 1} round(s) of ${r.settings.seconds} s each, summed per row (p50: the median round's, p99: the worst round's). ` +
      'Rows/batch, copy busy and idle are taken over an inner window (0.5 s after the load starts to 0.5 s before it ends) from ' +
      '`/v2/models/{model}/stats`: rows/batch = Δinference_count / Δexecution_count; copy busy = Σ compute_input + compute_infer + compute_output of batch_stats ' +
      '(the copy\'s own timing) per batch; copy idle = (window − busy) / batches, the copy waiting for its next batch. Busy above a+b·rows is the model\'s timer slack. ' +
      'Credits 2: the broker sends the next (full) batch while one runs and the SDK runs them one after the other. Exact timer: SLEEPY_EXACT=1.',
  );
  out.push('');
  const cpu = (p: BrokerPoint) => (p.brokerCpuPct === undefined ? '—' : `${Math.round(p.brokerCpuPct)} %`);
  const errs = (p: BrokerPoint) => p.errors;
  const ccpu = (p: BrokerPoint) => (p.clientCpuPct === undefined ? '—' : `${Math.round(p.clientCpuPct)} %`);
  if (r.bridges.length > 0) {
    const bs = r.bridgeSettings;
    out.push(`**3. \`simple\`, one row per request, through each bridge** (${bs.seconds} s per point; added p50 = bridge p50 − direct p50 of the same concurrency)`);
    out.push('');
    out.push('| concurrency | path | req/s | p50 ms | p99 ms | added p50 ms | req/s vs REST JSON | rows/batch | broker CPU | client CPU | errors |');
    out.push('|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const row of r.bridges) {
      const d = row.direct;
      out.push(`| ${row.concurrency} | direct ZeroMQ → copy | ${int(d.throughput)} | ${f(d.latency.p50, 3)} | ${f(d.latency.p99, 3)} | — | — | 1.00 | — | — | ${d.errors} |`);
      for (const b of row.bridges) {
        const p = b.point;
        out.push(
          `| ${row.concurrency} | ${b.bridge} | ${int(p.throughput)} | ${f(p.latency.p50, 3)} | ${f(p.latency.p99, 3)} | ${f(b.addedP50Ms, 3)} | ${f(b.throughputVsRestJson)} | ${f(p.server.meanRowsPerBatch)} | ${cpu(p)} | ${ccpu(p)} | ${errs(p)} |`,
        );
      }
    }
    out.push('');
    out.push(
      'REST JSON = the row of table 1 (same run, same direct baseline). REST binary = the binary tensor extension both ways (inputs after an `Inference-Header-Content-Length` JSON header, `binary_data_output: true`). ' +
        'gRPC = unary `ModelInfer` with `raw_input_contents`, grpc-js, all calls on one channel (concurrency = calls outstanding). ' +
        'ZeroMQ = `ZmqClient` (one DEALER, window = concurrency) to the broker\'s ROUTER over TCP. All clients run in the bench process; client CPU = its CPU time / wall time (100 % = one core).',
    );
    out.push('');
  }
  if (r.images.length > 0) {
    const is = r.imageSettings;
    out.push(`**4. A ${is.width}×${is.height} RGB picture to \`image-info\` through REST, three encodings** (${is.seconds} s per point; batch_size ${is.batchSize}, max_wait_ms 0; JPEG quality ${is.jpegQuality}, ${int(is.jpegBytes)} bytes)`);
    out.push('');
    out.push('| concurrency | body | body bytes | images/s | p50 ms | p99 ms | images/s vs JSON | rows/batch | broker CPU | client CPU | errors |');
    out.push('|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const row of r.images) {
      for (const x of row.forms) {
        const p = x.point;
        out.push(
          `| ${row.concurrency} | ${x.form} | ${int(x.bodyBytes)} | ${f(p.throughput, 1)} | ${f(p.latency.p50, 2)} | ${f(p.latency.p99, 2)} | ${f(x.throughputVsJson)} | ${f(p.server.meanRowsPerBatch)} | ${cpu(p)} | ${ccpu(p)} | ${errs(p)} |`,
        );
      }
    }
    out.push('');
    out.push(
      'JSON numbers = KServe v2 JSON, IMAGE UINT8 `[1,480,640,3]` as a flat `data` array. Binary tensor = the same bytes after an `Inference-Header-Content-Length` header (`binary_data_size`). ' +
        'JPEG upload = `Content-Type: image/jpeg`, decoded by the broker with sharp into UINT8 `[1,H,W,3]`. Replies are JSON in all three (three small outputs).',
    );
    out.push('');
  }
  out.push(...stageSection(r));
  const t = r.targets;
  const ratios = t.imageBinaryOverJson.map((x) => `${f(x.ratio, 1)}× at c=${x.concurrency}`).join(', ');
  out.push(
    `Targets: added p50 at concurrency 1 < 0.3 ms: ${pass(t.addedP50AtC1Pass)} (${f(t.addedP50AtC1Ms, 3)} ms); ` +
      `sleepy batch 32 ≥ ${t.sleepyTargetPct} % of ideal: ${pass(t.sleepyPass)} (${f(t.sleepyPctOfIdeal, 1)} %); ` +
      `ZeroMQ added p50 at concurrency 1 below REST's: ${pass(t.zmqBelowRestPass)} (${f(t.zmqAddedP50AtC1Ms, 3)} vs ${f(t.restAddedP50AtC1Ms, 3)} ms); ` +
      `image binary ≥ 5× JSON images/s: ${pass(t.imageBinaryPass)} (${ratios || '—'}).`,
  );
  return out.join('\n') + '\n';
}

/** Broker CPU time per answered request, µs (all its threads). */
const cpuUsPerRequest = (p: BrokerPoint) =>
  p.brokerCpuPct === undefined || p.throughput <= 0 ? NaN : ((p.brokerCpuPct / 100) * 1e6) / p.throughput;

/**
 * 5. Where the time goes: the broker's per-stage histograms over each bridge
 * point, broker CPU per request, and issue 16's target 1 (REST JSON c=1 ≤
 * HTTP floor + direct + 0.1 ms; ZeroMQ c=1 ≤ direct + 0.05 ms).
 */
function stageSection(r: BenchResult): string[] {
  const points: { label: string; point: BrokerPoint }[] = [];
  for (const row of r.bridges) for (const b of row.bridges) if (b.point.stages?.length) points.push({ label: `${b.bridge} c=${row.concurrency}`, point: b.point });
  if (points.length === 0) return [];
  const out: string[] = [];
  out.push('**5. Where the time goes: the broker\'s per-stage histograms (`tb_stage_seconds`) over each point of table 3**');
  out.push('');
  out.push(stageTable(points.map((p) => ({ label: p.label, rows: p.point.stages ?? [] }))));
  out.push('');
  out.push(`Broker CPU per request (all threads, µs): ${points.map((p) => `${p.label} ${f(cpuUsPerRequest(p.point), 0)}`).join('; ')}.`);
  out.push('');
  out.push(
    'Stages: parse = handler start → InferRequest; admit = broker.infer() until queued; queue = queued → batch cut; batch = joining and encoding the batch; ' +
      'link_send = handed to the link → zeromq send resolved; compute = the copy\'s own time; link_receive = send resolved → RESULT back, minus compute (both wires, the copy\'s decode/encode, wake-ups); ' +
      'debatch = RESULT → outputs settled; encode = result → reply bytes; write = reply handed to the socket (REST: fastify\'s onSend hooks and the socket write). ' +
      'p50 ≤ = upper bound of the bucket holding the median. Time not in any stage: HTTP/ZeroMQ receive, event-loop turns and microtask hops between stages.',
  );
  out.push('');
  const c1 = r.simple.find((x) => x.concurrency === 1);
  const b1 = r.bridges.find((x) => x.concurrency === 1);
  const zmq = b1?.bridges.find((x) => x.bridge === 'ZeroMQ');
  if (c1?.floor) {
    const limit = c1.floor.latency.p50 + c1.direct.latency.p50 + 0.1;
    out.push(`Issue 16 target 1: REST JSON c=1 p50 ≤ HTTP floor p50 + direct p50 + 0.1 ms: ${pass(c1.broker.latency.p50 <= limit)} (${f(c1.broker.latency.p50, 3)} vs ${f(limit, 3)} ms)` +
      (zmq && b1 ? `; ZeroMQ c=1 p50 ≤ direct p50 + 0.05 ms: ${pass(zmq.point.latency.p50 <= b1.direct.latency.p50 + 0.05)} (${f(zmq.point.latency.p50, 3)} vs ${f(b1.direct.latency.p50 + 0.05, 3)} ms).` : '.'));
    out.push('');
  }
  return out;
}

export const MARK_START = '<!-- bench:start -->';
export const MARK_END = '<!-- bench:end -->';

/** Writes bench/results/latest.{json,md}; returns the paths. */
export async function writeResults(root: string, r: BenchResult, md: string): Promise<string[]> {
  const dir = path.join(root, 'bench', 'results');
  await mkdir(dir, { recursive: true });
  const json = path.join(dir, 'latest.json');
  const mdPath = path.join(dir, 'latest.md');
  await writeFile(json, JSON.stringify(r, null, 2) + '\n');
  await writeFile(mdPath, `# Tensor Broker benchmark — latest run\n\n${md}`);
  return [json, mdPath];
}

/**
 * Replaces what lies between the bench markers of README.md. Returns a note
 * when the README or its markers are missing (then the file is left alone).
 */
export async function updateReadme(readme: string, md: string): Promise<string> {
  if (!existsSync(readme)) return `${readme} does not exist: add a section with ${MARK_START} … ${MARK_END} to have the results inserted.`;
  const text = await readFile(readme, 'utf8');
  const a = text.indexOf(MARK_START);
  const b = a < 0 ? -1 : text.indexOf(MARK_END, a + MARK_START.length);
  if (a < 0 || b < 0) return `${readme} has no ${MARK_START} … ${MARK_END} markers: left unchanged.`;
  const next = text.slice(0, a + MARK_START.length) + '\n' + md + text.slice(b);
  if (next !== text) await writeFile(readme, next);
  return `${readme}: benchmark section updated.`;
}
