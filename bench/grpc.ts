/**
 * gRPC against its own floor, side by side in one run (issue 16, target 2):
 *
 * - **direct**: the bench's own ZeroMQ ROUTER → one `simple` copy (direct.ts);
 * - **floor**: a bare grpc-js server in its own process (bare-grpc.ts) answering
 *   the very reply bytes the broker answers, unary and on a stream;
 * - **broker**: `ModelInfer` and `ModelStreamInfer` into the broker.
 *
 * The same grpc-js client drives floor and broker: requests pre-encoded once
 * (identity serializer), replies not decoded in the timed loop (the first one is
 * checked), so the client's own cost is as small as grpc-js allows and equal for
 * both. `npm run bench:grpc` runs it alone (its own redis, broker and copy);
 * `npm run bench` runs it after its bridge table (BENCH_GRPC_CONCURRENCY).
 * See bench/README.md, "gRPC".
 */
import * as grpc from '@grpc/grpc-js';
import { spawn, spawnSync } from 'node:child_process';
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Tensor } from '../proto/tensor';
import { ModelInferRequestSchema, ModelInferResponseSchema, ModelStreamInferResponseSchema } from '../proto/gen/grpc_service_pb';
import { modelStats, startBrokerProc, statsDelta, type BrokerProc } from './broker-proc';
import { DirectCopy } from './direct';
import { closedLoop, type LoopPoint } from './loop';
import { LOOPBACK, cpuMs, runMain, spawnChild, startRedis, waitUntil, type Cleanups } from './procs';

const SERVICE = '/inference.GRPCInferenceService';
const same = (b: Buffer) => b;
const MAX_MESSAGE = 64 * 1024 * 1024;

/** The id of a ModelStreamInferResponse (infer_response.id), and its error_message; a minimal wire walk. */
export function streamReplyId(b: Buffer): { id: string; error: string } {
  let id = '';
  let error = '';
  const varint = (buf: Buffer, at: { i: number }) => {
    let v = 0;
    let shift = 0;
    for (;;) {
      const byte = buf[at.i++];
      v += (byte & 0x7f) * 2 ** shift;
      if (byte < 0x80) return v;
      shift += 7;
    }
  };
  const walk = (buf: Buffer, from: number, to: number, onField: (field: number, start: number, end: number) => void) => {
    const at = { i: from };
    while (at.i < to) {
      const tag = varint(buf, at);
      const wire = tag & 7;
      if (wire === 2) {
        const len = varint(buf, at);
        onField(tag >>> 3, at.i, at.i + len);
        at.i += len;
      } else if (wire === 0) varint(buf, at);
      else if (wire === 1) at.i += 8;
      else if (wire === 5) at.i += 4;
      else throw new Error(`wire type ${wire} in a stream reply`);
    }
  };
  walk(b, 0, b.length, (f, s, e) => {
    if (f === 1) error = b.toString('utf8', s, e);
    else if (f === 2) walk(b, s, e, (g, s2, e2) => {
      if (g === 3) id = b.toString('utf8', s2, e2);
    });
  });
  return { id, error };
}

interface Pending {
  resolve(b: Buffer): void;
  reject(e: Error): void;
}

/**
 * One bidi ModelStreamInfer stream; `infer(bytes, id)` sends a pre-encoded
 * request whose id is `id` and resolves with the raw answer carrying that id.
 * An answer without an id (the floor's fixed reply) goes to the oldest caller
 * (a Map iterates in insertion order).
 */
export class RawStream {
  private readonly pending = new Map<string, Pending>();
  private failed?: Error;

  constructor(private readonly call: grpc.ClientDuplexStream<Buffer, Buffer>) {
    call.on('data', (b: Buffer) => {
      const { id, error } = streamReplyId(b);
      const key = id !== '' ? id : this.pending.keys().next().value;
      const p = key === undefined ? undefined : this.pending.get(key);
      if (!p) return;
      this.pending.delete(key!);
      if (error !== '') p.reject(new Error(`stream answer: ${error}`));
      else p.resolve(b);
    });
    call.on('error', (e: Error) => this.fail(e));
    call.on('end', () => this.fail(new Error('the stream ended')));
  }

  private fail(e: Error): void {
    this.failed ??= e;
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }

  infer(bytes: Buffer, id: string): Promise<Buffer> {
    if (this.failed) return Promise.reject(this.failed);
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.call.write(bytes);
    });
  }

  close(): void {
    this.call.end();
  }
}

/**
 * grpc-js channels to one server with the messages left as bytes. `channels` > 1
 * opens that many HTTP/2 connections (a local subchannel pool each) and spreads
 * the calls over them round-robin.
 */
export class RawGrpcClient {
  private readonly clients: grpc.Client[];
  private next = 0;

  constructor(port: number, channels = 1) {
    this.clients = Array.from({ length: channels }, () => new grpc.Client(`${LOOPBACK}:${port}`, grpc.credentials.createInsecure(), {
      'grpc.max_receive_message_length': MAX_MESSAGE,
      'grpc.max_send_message_length': MAX_MESSAGE,
      ...(channels > 1 ? { 'grpc.use_local_subchannel_pool': 1 } : {}),
      // e.g. {"grpc.enable_retries":0,"grpc.enable_channelz":0}: client settings to try, the same for floor and broker.
      ...(JSON.parse(process.env.BENCH_GRPC_CLIENT_OPTIONS ?? '{}') as grpc.ChannelOptions),
    }));
  }

  private client(): grpc.Client {
    const c = this.clients[this.next];
    this.next = (this.next + 1) % this.clients.length;
    return c;
  }

  /** One unary ModelInfer with a deadline (as tritonclient's `client_timeout` sets one). */
  infer(bytes: Buffer, deadlineMs = 30_000): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.client().makeUnaryRequest(`${SERVICE}/ModelInfer`, same, same, bytes, new grpc.Metadata(), { deadline: Date.now() + deadlineMs },
        (err, res) => (err ? reject(err) : resolve(res!)));
    });
  }

  stream(): RawStream {
    return new RawStream(this.client().makeBidiStreamRequest(`${SERVICE}/ModelStreamInfer`, same, same, new grpc.Metadata()));
  }

  close(): void {
    for (const c of this.clients) c.close();
  }
}

export type GrpcPath = 'direct ZeroMQ → copy' | 'gRPC floor, unary' | 'gRPC floor, stream' | 'broker, unary' | 'broker, stream';

export interface GrpcPoint extends LoopPoint {
  path: GrpcPath;
  /** Which broker build (only when a second, "before" build is measured in the same run). */
  build?: string;
  /** The load generator: grpc-js in the bench process (default), or Python grpcio in its own process (grpc_load.py). */
  client?: 'grpcio';
  rowsPerBatch?: number;
  /** CPU time of the server process (broker or floor; the copy for direct) / wall time, 100 % = one core. */
  serverCpuPct?: number;
  clientCpuPct: number;
}

export interface GrpcTargets {
  /** Unary c=1: broker p50 ≤ floor p50 + direct p50 + 0.1 ms. */
  c1LimitMs: number;
  c1BrokerP50Ms: number;
  c1Pass: boolean | null;
  /** c=64 (the highest concurrency): broker req/s ≥ 85 % of the floor's. */
  highC: number;
  highRatio: number;
  highPass: boolean | null;
  /** ModelStreamInfer at least as fast as unary: p50 at c=1 and req/s at the highest concurrency. */
  streamC1P50Ms: number;
  streamHighReqPerS: number;
  streamPass: boolean | null;
}

export interface GrpcBenchResult {
  seconds: number;
  channels: number;
  concurrency: number[];
  points: GrpcPoint[];
  targets: GrpcTargets;
}

export interface BrokerUnderTest {
  /** e.g. 'after' / 'before'; the first one is the one the targets are about. */
  build?: string;
  proc: BrokerProc;
}

export interface GrpcBenchOptions {
  brokers: BrokerUnderTest[];
  direct: DirectCopy;
  model: string;
  tensors: Tensor[];
  /** Checks one decoded reply (throws when wrong). */
  check(outputs: { name: string; data: Uint8Array }[]): void;
  concurrency: number[];
  seconds: number;
  warmupSeconds: number;
  channels?: number;
  /** Also drive unary floor and broker from Python grpcio (grpc_load.py), a second client library in its own process. */
  python?: boolean;
  log(msg: string): void;
  cleanups: Cleanups;
}

const requestBytes = (model: string, tensors: Tensor[], id = '') => {
  const b = toBinary(ModelInferRequestSchema, create(ModelInferRequestSchema, {
    modelName: model, id,
    inputs: tensors.map((t) => ({ name: t.name, datatype: t.datatype, shape: t.shape.map(BigInt) })),
    rawInputContents: tensors.map((t) => t.data),
  }));
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength);
};

async function startFloor(reply: Buffer, streamReply: Buffer, cleanups: Cleanups): Promise<{ port: number; pid?: number }> {
  const h = spawnChild(process.execPath, [path.join(__dirname, 'bare-grpc.js')], {
    ...process.env, BENCH_GRPC_REPLY: reply.toString('base64'), BENCH_GRPC_STREAM_REPLY: streamReply.toString('base64'),
  });
  cleanups.push(() => h.stop(2000));
  let port = 0;
  await waitUntil(async () => {
    port = Number(/^(\d+)$/m.exec(h.output())?.[1] ?? 0);
    return port > 0;
  }, 'the bare gRPC server', 10_000, () => !h.exited());
  return { port, pid: h.child.pid };
}

/** Runs the table; returns every point and the targets. */
export async function runGrpcBench(o: GrpcBenchOptions): Promise<GrpcBenchResult> {
  const channels = o.channels ?? 1;
  const unaryReq = requestBytes(o.model, o.tensors);
  const maxC = Math.max(...o.concurrency);
  const slotReq = Array.from({ length: maxC }, (_, k) => requestBytes(o.model, o.tensors, `s${k}`));

  // One checked call of each kind into the (first) broker; its exact reply bytes become the floor's.
  const first = o.brokers[0].proc;
  const probe = new RawGrpcClient(first.grpcPort);
  let reply: Buffer = Buffer.alloc(0);
  let lastErr = '';
  await waitUntil(async () => {
    try {
      reply = await probe.infer(unaryReq, 2000);
      return true;
    } catch (e) {
      lastErr = (e as Error).message;
      return false;
    }
  }, 'a gRPC answer', 15_000, first.alive).catch((e: Error) => {
    throw new Error(`${e.message}: ${lastErr}`);
  });
  const checkReply = (r: { outputs: { name: string }[]; rawOutputContents: Uint8Array[] }) =>
    o.check(r.outputs.map((t, i) => ({ name: t.name, data: r.rawOutputContents[i] })));
  checkReply(fromBinary(ModelInferResponseSchema, reply));
  const s = probe.stream();
  const streamReply = await s.infer(slotReq[0], 's0');
  s.close();
  const sr = fromBinary(ModelStreamInferResponseSchema, streamReply);
  if (!sr.inferResponse) throw new Error('stream answer without infer_response');
  checkReply(sr.inferResponse);
  probe.close();
  // The floor's stream answer is the broker's without the id (2 bytes less): the client matches it oldest first.
  sr.inferResponse.id = '';
  const floorStreamReply = Buffer.from(toBinary(ModelStreamInferResponseSchema, sr));

  const floor = await startFloor(reply, floorStreamReply, o.cleanups);
  o.log(`gRPC floor (bare grpc-js, fixed ${reply.length}-byte reply) on port ${floor.port}`);

  const points: GrpcPoint[] = [];
  const measure = async (p: GrpcPath, build: string | undefined, server: { pid?: number; url?: string }, c: number, call: () => Promise<unknown>): Promise<void> => {
    await closedLoop(call, c, o.warmupSeconds);
    await new Promise((r) => setTimeout(r, 200));
    const stats0 = server.url ? await modelStats(server.url, o.model) : undefined;
    const cpu0 = cpuMs(server.pid);
    const own0 = process.cpuUsage();
    const lp = await closedLoop(call, c, o.seconds);
    const own = process.cpuUsage(own0);
    const cpu1 = cpuMs(server.pid);
    await new Promise((r) => setTimeout(r, 200));
    const rows = stats0 && server.url ? statsDelta(stats0, await modelStats(server.url, o.model)).meanRowsPerBatch : undefined;
    const wall = lp.seconds * 1000;
    const point: GrpcPoint = {
      ...lp, path: p, build, rowsPerBatch: rows,
      serverCpuPct: cpu0 !== undefined && cpu1 !== undefined ? ((cpu1 - cpu0) / wall) * 100 : undefined,
      clientCpuPct: ((own.user + own.system) / 1000 / wall) * 100,
    };
    if (lp.errors > 0) o.log(`  ${p} c=${c}: ${lp.errors} errors (first: ${lp.firstError})`);
    o.log(`  ${(build ? `${p} [${build}]` : p).padEnd(34)} ${Math.round(lp.throughput)} req/s, p50 ${lp.latency.p50.toFixed(3)} ms, p99 ${lp.latency.p99.toFixed(3)} ms` +
      `${rows !== undefined ? `, ${rows.toFixed(2)} rows/batch` : ''}, server CPU ${point.serverCpuPct?.toFixed(0) ?? '—'} % (${perReq(point.serverCpuPct, lp)} µs/req), client CPU ${point.clientCpuPct.toFixed(0)} % (${perReq(point.clientCpuPct, lp)} µs/req)`);
    points.push(point);
  };

  /** The same closed loop from Python grpcio in its own process; its CPU is that process's. */
  const measurePython = async (p: GrpcPath, server: { pid?: number; url?: string }, port: number, c: number): Promise<void> => {
    const stats0 = server.url ? await modelStats(server.url, o.model) : undefined;
    const cpu0 = cpuMs(server.pid);
    const t0 = Date.now();
    const r = await pythonLoad(port, c, o.seconds, o.warmupSeconds, unaryReq);
    const cpu1 = cpuMs(server.pid);
    const rows = stats0 && server.url ? statsDelta(stats0, await modelStats(server.url, o.model)).meanRowsPerBatch : undefined;
    // The server's CPU window also holds the warm-up: scale by the measured share of the wall time.
    const wall = Date.now() - t0;
    const lat = { count: r.ok, mean: r.mean, p50: r.p50, p90: NaN, p99: r.p99, max: NaN };
    const point: GrpcPoint = {
      connections: c, seconds: r.seconds, ok: r.ok, errors: r.errors, throughput: r.ok / r.seconds, latency: lat, firstError: r.firstError ?? undefined,
      path: p, client: 'grpcio', rowsPerBatch: rows,
      serverCpuPct: cpu0 !== undefined && cpu1 !== undefined ? ((cpu1 - cpu0) / wall) * 100 : undefined,
      clientCpuPct: (r.cpuSeconds / r.seconds) * 100,
    };
    o.log(`  ${`${p} [grpcio]`.padEnd(34)} ${Math.round(point.throughput)} req/s, p50 ${r.p50.toFixed(3)} ms, p99 ${r.p99.toFixed(3)} ms, server CPU ${point.serverCpuPct?.toFixed(0) ?? '—'} %, client CPU ${point.clientCpuPct.toFixed(0)} % (${perReq(point.clientCpuPct, point)} µs/req)`);
    points.push(point);
  };

  /** c callers over one stream: each takes a free slot (its own request id) per call. */
  const streamCaller = (st: RawStream, c: number) => {
    const free = Array.from({ length: c }, (_, k) => k);
    return async () => {
      const k = free.pop()!;
      try {
        return await st.infer(slotReq[k], `s${k}`);
      } finally {
        free.push(k);
      }
    };
  };
  const floorClient = new RawGrpcClient(floor.port, channels);
  const brokerClients = o.brokers.map((b) => new RawGrpcClient(b.proc.grpcPort, channels));
  try {
    for (const c of o.concurrency) {
      o.log(`gRPC c=${c} (${channels} channel${channels > 1 ? 's' : ''})`);
      await measure('direct ZeroMQ → copy', undefined, {}, c, () => o.direct.infer(o.tensors));
      await measure('gRPC floor, unary', undefined, floor, c, () => floorClient.infer(unaryReq));
      for (const [i, b] of o.brokers.entries()) {
        await measure('broker, unary', b.build, { pid: b.proc.pid, url: b.proc.url }, c, () => brokerClients[i].infer(unaryReq));
      }
      // Streams: the floor answers in order without ids (matched oldest first), the broker by id.
      const fs = floorClient.stream();
      await measure('gRPC floor, stream', undefined, floor, c, streamCaller(fs, c));
      fs.close();
      for (const [i, b] of o.brokers.entries()) {
        const bs = brokerClients[i].stream();
        await measure('broker, stream', b.build, { pid: b.proc.pid, url: b.proc.url }, c, streamCaller(bs, c));
        bs.close();
      }
      if (o.python) {
        await measurePython('gRPC floor, unary', floor, floor.port, c);
        await measurePython('broker, unary', { pid: first.pid, url: first.url }, first.grpcPort, c);
      }
    }
  } finally {
    floorClient.close();
    for (const b of brokerClients) b.close();
  }
  return { seconds: o.seconds, channels, concurrency: o.concurrency, points, targets: targets(points, o.brokers[0].build) };
}

interface PythonResult {
  ok: number;
  errors: number;
  firstError: string | null;
  seconds: number;
  p50: number;
  p99: number;
  mean: number;
  cpuSeconds: number;
}

/** Whether /usr/bin/python3 (or BENCH_PYTHON) can import grpc. */
export function pythonGrpcAvailable(): boolean {
  return spawnSync(PYTHON, ['-c', 'import grpc'], { stdio: 'ignore' }).status === 0;
}

const PYTHON = process.env.BENCH_PYTHON ?? '/usr/bin/python3';

function pythonLoad(port: number, c: number, seconds: number, warmup: number, request: Buffer): Promise<PythonResult> {
  return new Promise((resolve, reject) => {
    const src = path.resolve(__dirname, '..', '..', 'bench', 'grpc_load.py');
    const child = spawn(PYTHON, [src, String(port), String(c), String(seconds), String(warmup)], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-2000)));
    child.once('error', reject);
    child.once('exit', (code) => {
      if (code !== 0) return reject(new Error(`grpc_load.py exited ${code}: ${err}`));
      resolve(JSON.parse(out) as PythonResult);
    });
    child.stdin.end(request.toString('hex'));
  });
}

function targets(points: GrpcPoint[], build: string | undefined): GrpcTargets {
  const at = (p: GrpcPath, c: number) => points.find((x) => x.path === p && x.connections === c && !x.client && (p.startsWith('broker') ? x.build === build : true));
  const highC = Math.max(...points.map((x) => x.connections));
  const d1 = at('direct ZeroMQ → copy', 1);
  const f1 = at('gRPC floor, unary', 1);
  const b1 = at('broker, unary', 1);
  const s1 = at('broker, stream', 1);
  const fh = at('gRPC floor, unary', highC);
  const bh = at('broker, unary', highC);
  const sh = at('broker, stream', highC);
  const limit = f1 && d1 ? f1.latency.p50 + d1.latency.p50 + 0.1 : NaN;
  const ratio = fh && bh ? bh.throughput / fh.throughput : NaN;
  return {
    c1LimitMs: limit,
    c1BrokerP50Ms: b1?.latency.p50 ?? NaN,
    c1Pass: b1 && Number.isFinite(limit) ? b1.latency.p50 <= limit : null,
    highC,
    highRatio: ratio,
    highPass: Number.isFinite(ratio) && highC > 1 ? ratio >= 0.85 : null,
    streamC1P50Ms: s1?.latency.p50 ?? NaN,
    streamHighReqPerS: sh?.throughput ?? NaN,
    streamPass: s1 && b1 && sh && bh ? s1.latency.p50 <= b1.latency.p50 && sh.throughput >= bh.throughput : null,
  };
}

const f = (v: number | undefined, digits = 3) => (v !== undefined && Number.isFinite(v) ? v.toFixed(digits) : '—');
const int = (v: number) => (Number.isFinite(v) ? Math.round(v).toLocaleString('en-US') : '—');
const pct = (v: number | undefined) => (v === undefined || !Number.isFinite(v) ? '—' : `${Math.round(v)} %`);
/** CPU time per answered request, µs (from a CPU share of one core and the throughput). */
const perReq = (cpuPct: number | undefined, p: { throughput: number }) => (cpuPct === undefined || !(p.throughput > 0) ? '—' : int((cpuPct / 100) * 1e6 / p.throughput));
const pass = (ok: boolean | null) => (ok === null ? 'n/a' : ok ? '**pass**' : '**FAIL**');

export function grpcMarkdown(r: GrpcBenchResult): string {
  const out: string[] = [];
  const builds = new Set(r.points.map((p) => p.build).filter((b) => b !== undefined));
  out.push(`**gRPC against its own floor** (\`simple\`, one row per request; ${r.seconds} s per point; ${r.channels} channel${r.channels > 1 ? 's' : ''} per server; same grpc-js client for floor and broker)`);
  out.push('');
  out.push('| concurrency | path | req/s | p50 ms | p99 ms | req/s vs floor | rows/batch | server CPU | server µs/req | client CPU | client µs/req | errors |');
  out.push('|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const p of r.points) {
    const floorPath: GrpcPath = p.path.endsWith('stream') ? 'gRPC floor, stream' : 'gRPC floor, unary';
    const fl = r.points.find((x) => x.path === floorPath && x.connections === p.connections && x.client === p.client);
    const vs = p.path.startsWith('broker') && fl ? f(p.throughput / fl.throughput, 2) : '—';
    const name = `${p.build && builds.size > 1 ? `${p.path} (${p.build})` : p.path}${p.client ? ' · grpcio client' : ''}`;
    out.push(`| ${p.connections} | ${name} | ${int(p.throughput)} | ${f(p.latency.p50)} | ${f(p.latency.p99)} | ${vs} | ${f(p.rowsPerBatch, 2)} | ${pct(p.serverCpuPct)} | ${perReq(p.serverCpuPct, p)} | ${pct(p.clientCpuPct)} | ${perReq(p.clientCpuPct, p)} | ${p.errors} |`);
  }
  out.push('');
  out.push(
    'Floor = a bare grpc-js server in its own process (`bench/bare-grpc.ts`, the broker\'s server options) answering the exact reply bytes the broker answered, without decoding the request. ' +
      'Unary calls carry a 30 s deadline; a stream carries all *c* callers\' requests (matched to answers by id). ' +
      '"grpcio client" rows: the same unary loop from Python grpcio (C core, asyncio) in its own process (`bench/grpc_load.py`); its client CPU is that process\'s. ' +
      'Server CPU = CPU time of the broker (or the floor; none for direct) / wall time; client CPU = the bench process; 100 % = one core. ' +
        'µs/req = that CPU time per answered request: on a busy shared box it moves far less than latency does.',
  );
  out.push('');
  const t = r.targets;
  out.push(
    `Targets: unary c=1 broker p50 ≤ floor p50 + direct p50 + 0.1 ms: ${pass(t.c1Pass)} (${f(t.c1BrokerP50Ms)} vs ${f(t.c1LimitMs)} ms); ` +
      `c=${t.highC} broker req/s ≥ 85 % of the floor's: ${pass(t.highPass)} (${f(t.highRatio * 100, 1)} %); ` +
      `ModelStreamInfer at least as fast as unary (p50 at c=1, req/s at c=${t.highC}): ${pass(t.streamPass)} (${f(t.streamC1P50Ms)} ms, ${int(t.streamHighReqPerS)} req/s).`,
  );
  return out.join('\n') + '\n';
}

// --- `npm run bench:grpc`: this table alone -----------------------------------------------

const ROOT = path.resolve(__dirname, '..', '..');
const log = (msg: string) => process.stderr.write(`[bench:grpc ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);

async function main(cleanups: Cleanups): Promise<void> {
  const seconds = Number(process.env.BENCH_SECONDS ?? 5);
  const warmup = Number(process.env.BENCH_WARMUP_SECONDS ?? 1);
  const concurrency = (process.env.BENCH_GRPC_CONCURRENCY ?? '1,64').split(',').map(Number);
  const channels = Number(process.env.BENCH_GRPC_CHANNELS ?? 1);
  const python = process.env.BENCH_GRPC_PYTHON !== '0' && pythonGrpcAvailable();
  if (!python) log('Python grpcio not available (or BENCH_GRPC_PYTHON=0): no second client');
  // BENCH_GRPC_BEFORE: the root of a second build (its own dist/) measured in the same run, e.g. the code before a change;
  // or several, as label=root,label=root (each its own broker, measured right after this one's).
  const before = (process.env.BENCH_GRPC_BEFORE ?? '').split(',').filter(Boolean).map((x) => (x.includes('=') ? x.split('=', 2) : ['before', x]) as [string, string]);
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tb-bench-grpc-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const simpleMain = path.join(ROOT, 'dist', 'examples', 'models', 'simple', 'main.js');
  const models = { simple: { command: [process.execPath, simpleMain], batch_size: 8, max_wait_ms: 0, queue_capacity: 1024, timeout_ms: 10_000 } };
  const brokers: BrokerUnderTest[] = [];
  const builds: [string | undefined, string][] = before.length > 0 ? [['after', ROOT], ...before.map(([l, r]): [string, string] => [l, path.resolve(r)])] : [[undefined, ROOT]];
  for (const [build, root] of builds) {
    const bdir = path.join(dir, build ?? 'broker');
    await mkdir(bdir, { recursive: true });
    // A redis-server of its own per broker: two brokers on one registry would share placements.
    const redis = await startRedis(bdir);
    cleanups.push(() => redis.stop());
    const proc = await startBrokerProc({ root, dir: bdir, redisUrl: redis.url, models, waitFor: ['simple'] });
    cleanups.push(() => proc.stop());
    log(`broker${build ? ` (${build}, ${root})` : ''} ready, pid ${proc.pid}`);
    brokers.push({ build, proc });
  }
  const direct = await DirectCopy.start({ dir, main: simpleMain, model: 'simple' });
  cleanups.push(() => direct.close());
  const row0 = Array.from({ length: 16 }, (_, i) => i);
  const t = (name: string, v: number[]): Tensor => ({ name, datatype: 'INT32', shape: [1, 16], data: Buffer.from(new Int32Array(v).buffer) });
  const want = row0.map((x) => x + 1).join();
  const r = await runGrpcBench({
    brokers, direct, model: 'simple', tensors: [t('INPUT0', row0), t('INPUT1', row0.map(() => 1))], concurrency, seconds, warmupSeconds: warmup, channels, python, log, cleanups,
    check(outputs) {
      const o0 = outputs.find((x) => x.name === 'OUTPUT0');
      const got = o0 ? Array.from(new Int32Array(new Uint8Array(o0.data).buffer)).join() : 'none';
      if (got !== want) throw new Error(`gRPC OUTPUT0 = ${got}`);
    },
  });
  const cpus = os.cpus();
  const head = `Run ${new Date().toISOString()} on ${cpus[0]?.model.trim()}, ${cpus.length} cores, Node ${process.version}, load avg ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}.\n\n`;
  const md = head + grpcMarkdown(r);
  process.stdout.write(md);
  if (process.env.BENCH_WRITE === '0') return;
  const out = path.join(ROOT, 'bench', 'results');
  await writeFile(path.join(out, 'grpc-latest.json'), JSON.stringify(r, null, 2) + '\n');
  await writeFile(path.join(out, 'grpc-latest.md'), `# gRPC against its floor — latest \`npm run bench:grpc\`\n\n${md}`);
  log('wrote bench/results/grpc-latest.{json,md}');
}

if (require.main === module) runMain(main, log);
