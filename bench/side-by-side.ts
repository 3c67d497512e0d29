/**
 * `npm run bench:ab`: two brokers built from two trees, side by side in one
 * run, for before/after figures on a shared (noisy) machine. Both run at the
 * same time, each with its own redis-server (the bench gives both the same
 * broker id), each with `simple` and `identity`; the points
 * alternate between them (the order flips each round) over BENCH_AB_ROUNDS
 * rounds, and the table gives the medians: req/s, p50, p99 and broker CPU per
 * request (µs, all threads of the broker process: the primary evidence when
 * the machine is loaded).
 *
 *   BENCH_AB_BEFORE=/path/to/old/tree (its own `dist/`, built)   default: this tree
 *   BENCH_AB_AFTER=/path/to/new/tree                               default: this tree
 *   BENCH_AB_POINTS=json1,zmq1,bin150,json64  BENCH_AB_ROUNDS=5  BENCH_SECONDS=3
 *
 * Points: json1 / json64 = REST JSON `simple` at concurrency 1 / 64; zmq1 /
 * zmq64 = ZmqClient to `simple` at 1 / 64 (window 64); zmq1m = 1 MiB to
 * `identity` and back over ZmqClient at 4 (window 4); bin150 = a 150 KB
 * binary-extension body to `identity` (batch_size 1, binary output back) at
 * 1. Prints markdown to stdout.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Tensor } from '../proto/tensor';
import { startBrokerProc, type BrokerProc } from './broker-proc';
import { ZmqClient } from './clients';
import { runHttpPoint } from './http-load';
import { closedLoop } from './loop';
import { cpuMs, runMain, startRedis, type Cleanups } from './procs';

const ROOT = path.resolve(__dirname, '..', '..');
const ROUNDS = Number(process.env.BENCH_AB_ROUNDS ?? 5);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);
const POINTS = (process.env.BENCH_AB_POINTS ?? 'json1,zmq1,bin150,json64').split(',').map((s) => s.trim());
const TREES: Record<'before' | 'after', string> = { before: process.env.BENCH_AB_BEFORE ?? ROOT, after: process.env.BENCH_AB_AFTER ?? ROOT };

const log = (msg: string) => process.stderr.write(`[bench:ab ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);

interface Sample { rps: number; p50: number; p99: number; cpuUs: number }
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main(cleanups: Cleanups): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tb-ab-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const brokers = {} as Record<'before' | 'after', BrokerProc>;
  for (const k of ['before', 'after'] as const) {
    const root = TREES[k];
    const main = (m: string) => path.join(root, 'dist', 'examples', 'models', m, 'main.js');
    await mkdir(path.join(dir, k));
    const redis = await startRedis(path.join(dir, k));
    cleanups.push(() => redis.stop());
    brokers[k] = await startBrokerProc({
      root, dir: path.join(dir, k), redisUrl: redis.url, waitFor: ['simple', 'identity'],
      models: {
        simple: { command: [process.execPath, main('simple')], batch_size: 8, max_wait_ms: 0, queue_capacity: 1024, timeout_ms: 10_000 },
        identity: { command: [process.execPath, main('identity')], batch_size: 1, max_wait_ms: 0, queue_capacity: 1024, timeout_ms: 10_000 },
      },
    });
    cleanups.push(() => brokers[k].stop());
    log(`${k}: ${root} at ${brokers[k].url}`);
  }
  const row0 = Array.from({ length: 16 }, (_, i) => i);
  const row1 = row0.map(() => 1);
  const json = JSON.stringify({ inputs: [{ name: 'INPUT0', datatype: 'INT32', shape: [1, 16], data: row0 }, { name: 'INPUT1', datatype: 'INT32', shape: [1, 16], data: row1 }] });
  const t = (name: string, v: number[]): Tensor => ({ name, datatype: 'INT32', shape: [1, 16], data: Buffer.from(new Int32Array(v).buffer) });
  const tensors = [t('INPUT0', row0), t('INPUT1', row1)];
  const big = randomBytes(150 * 1024);
  const head = Buffer.from(JSON.stringify({
    inputs: [{ name: 'IN_UINT8', datatype: 'UINT8', shape: [1, big.length], parameters: { binary_data_size: big.length } }],
    outputs: [{ name: 'OUT_UINT8', parameters: { binary_data: true } }],
  }));
  const bigBody = Buffer.concat([head, big]);

  const samples = new Map<string, Sample[]>();
  for (let r = 0; r < ROUNDS; r++) {
    for (const point of POINTS) {
      for (const k of r % 2 ? (['after', 'before'] as const) : (['before', 'after'] as const)) {
        const b = brokers[k];
        let zc: ZmqClient | undefined;
        let run: (s: number) => Promise<{ throughput: number; latency: { p50: number; p99: number }; seconds: number; ok?: number }>;
        if (point === 'json1' || point === 'json64') run = (s) => runHttpPoint({ url: `${b.url}/v2/models/simple/infer`, body: json, connections: point === 'json1' ? 1 : 64, seconds: s });
        else if (point === 'bin150') {
          run = (s) => runHttpPoint({
            url: `${b.url}/v2/models/identity/infer`, body: bigBody, connections: 1, seconds: s,
            headers: { 'content-type': 'application/octet-stream', 'inference-header-content-length': String(head.length) },
          });
        } else if (point === 'zmq1' || point === 'zmq64') {
          const c = point === 'zmq1' ? 1 : 64;
          const client = new ZmqClient(b.zmqEndpoint, { window: c, timeoutMs: 10_000 });
          zc = client;
          await client.infer('simple', tensors);
          run = (s) => closedLoop(() => client.infer('simple', tensors), c, s);
        } else if (point === 'zmq1m') {
          const client = new ZmqClient(b.zmqEndpoint, { window: 4, timeoutMs: 10_000 });
          zc = client;
          const mib: Tensor[] = [{ name: 'IN_UINT8', datatype: 'UINT8', shape: [1, 1 << 20], data: randomBytes(1 << 20) }];
          const opts = { outputs: ['OUT_UINT8'] };
          await client.infer('identity', mib, opts);
          run = (s) => closedLoop(() => client.infer('identity', mib, opts), 4, s);
        } else throw new Error(`unknown point '${point}' (json1, json64, zmq1, zmq64, zmq1m, bin150)`);
        try {
          await run(1);
          const c0 = cpuMs(b.pid);
          const p = await run(SECONDS);
          const c1 = cpuMs(b.pid);
          const n = p.ok ?? p.throughput * p.seconds;
          const cpuUs = c0 !== undefined && c1 !== undefined && n > 0 ? ((c1 - c0) * 1000) / n : NaN;
          const key = `${point}/${k}`;
          samples.set(key, [...(samples.get(key) ?? []), { rps: p.throughput, p50: p.latency.p50, p99: p.latency.p99, cpuUs }]);
          log(`round ${r} ${point} ${k}: ${Math.round(p.throughput)} req/s, p50 ${p.latency.p50.toFixed(3)} ms, p99 ${p.latency.p99.toFixed(3)} ms, ${cpuUs.toFixed(0)} µs CPU/request`);
        } finally {
          await zc?.close();
        }
      }
    }
  }
  const out = [
    `Side by side, ${ROUNDS} rounds of ${SECONDS} s per point (medians; load avg at the end ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}).`,
    `before = ${TREES.before}, after = ${TREES.after}.`,
    '',
    '| point | broker | req/s | p50 ms | p99 ms | broker CPU µs/request | CPU lower in |',
    '|---|---|---:|---:|---:|---:|---:|',
  ];
  for (const point of POINTS) {
    const before = samples.get(`${point}/before`) ?? [];
    const after = samples.get(`${point}/after`) ?? [];
    const lowerAfter = after.filter((a, i) => before[i] && a.cpuUs < before[i].cpuUs).length;
    for (const [k, xs] of [['before', before], ['after', after]] as const) {
      out.push(`| ${point} | ${k} | ${Math.round(median(xs.map((x) => x.rps)))} | ${median(xs.map((x) => x.p50)).toFixed(3)} | ${median(xs.map((x) => x.p99)).toFixed(3)} | ${Math.round(median(xs.map((x) => x.cpuUs)))} | ${k === 'after' ? `${lowerAfter} of ${xs.length} rounds` : ''} |`);
    }
  }
  process.stdout.write(out.join('\n') + '\n');
}

if (require.main === module) runMain(main, log);
