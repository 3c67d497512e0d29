/**
 * The broker under test as a child process (`node dist/app/cli.js serve`,
 * process runtime), so the load generator and the broker do not share an
 * event loop. Everything binds 127.0.0.1.
 */
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { stringify } from 'yaml';
import { LOOPBACK, freePort, sleep, spawnChild, waitUntil, type ChildHandle } from './procs';

export interface BrokerProc {
  url: string;
  /** KServe v2 gRPC port on 127.0.0.1. */
  grpcPort: number;
  /** The ZeroMQ client bridge, e.g. tcp://127.0.0.1:41234. */
  zmqEndpoint: string;
  /** GET /metrics of the broker (prom-client metrics and the per-stage histograms). */
  metricsUrl: string;
  pid: number | undefined;
  stop(): Promise<void>;
  output(): string;
  alive(): boolean;
}

export interface BrokerStart {
  root: string;
  dir: string;
  redisUrl: string;
  /** The `models:` map of models.yaml. */
  models: Record<string, unknown>;
  /** Models whose readiness to wait for. */
  waitFor: string[];
  readyTimeoutMs?: number;
  /** Default bench-<pid>: two brokers of one run need two ids. */
  brokerId?: string;
  /** More `serve` flags. */
  extraArgs?: string[];
}

/** Pids of the direct children of `pid` (Linux), e.g. the model copies the broker spawned. */
function childPids(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

function cmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  } catch {
    return '';
  }
}

export async function startBrokerProc(o: BrokerStart): Promise<BrokerProc> {
  const modelsPath = path.join(o.dir, 'models.yaml');
  await writeFile(modelsPath, stringify({ models: o.models }));
  const httpPort = await freePort();
  const metricsPort = await freePort();
  // Free ports for every listener: the defaults (8001, 7787) may be taken by other brokers on the box.
  const grpcPort = await freePort();
  const zmqPort = await freePort();
  // BENCH_BROKER_NODE_ARGS: extra node flags for the broker only, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof".
  const nodeArgs = (process.env.BENCH_BROKER_NODE_ARGS ?? '').split(/\s+/).filter(Boolean);
  const args = [
    ...nodeArgs,
    path.join(o.root, 'dist', 'app', 'cli.js'), 'serve',
    '--runtime', 'process',
    '--models', modelsPath,
    '--redis-url', o.redisUrl,
    '--host', LOOPBACK,
    '--http-port', String(httpPort),
    '--metrics-port', String(metricsPort),
    '--grpc-port', String(grpcPort),
    '--zmq-port', String(zmqPort),
    '--broker-id', o.brokerId ?? `bench-${process.pid}`,
    '--socket-dir', path.join(o.dir, 'sock'),
    '--shutdown-grace-ms', '3000',
    ...(o.extraArgs ?? []),
  ];
  const h: ChildHandle = spawnChild(process.execPath, args, { ...process.env, TB_LOG_LEVEL: process.env.TB_LOG_LEVEL ?? 'warn' }, o.root);
  const url = `http://${LOOPBACK}:${httpPort}`;
  const copies = new Set<number>();
  const proc: BrokerProc = {
    url,
    grpcPort,
    zmqEndpoint: `tcp://${LOOPBACK}:${zmqPort}`,
    metricsUrl: `http://${LOOPBACK}:${metricsPort}/metrics`,
    pid: h.child.pid,
    output: h.output,
    alive: () => !h.exited(),
    async stop() {
      if (h.child.pid !== undefined) for (const c of childPids(h.child.pid)) copies.add(c);
      await h.stop(8000);
      // A broker killed after its grace period could leave its copies behind: end the ones it started.
      await sleep(100);
      for (const c of copies) {
        if (cmdline(c).includes(path.join('dist', 'examples', 'models'))) {
          try {
            process.kill(c, 'SIGTERM');
          } catch {
            /* already gone */
          }
        }
      }
    },
  };
  try {
    for (const m of o.waitFor) {
      await waitUntil(async () => (await fetch(`${url}/v2/models/${m}/ready`)).status === 200, `model ${m} ready`, o.readyTimeoutMs ?? 60_000, proc.alive);
    }
  } catch (e) {
    await proc.stop();
    throw new Error(`${(e as Error).message}\nbroker output:\n${h.output().slice(-2000)}`);
  }
  return proc;
}

export interface StatsSnapshot {
  inference: number;
  execution: number;
  successCount: number;
  successNs: number;
  queueNs: number;
  computeNs: number;
  /** Σ over batches of the copy's own time (compute_input + compute_infer + compute_output of batch_stats). */
  batchBusyNs: number;
}

/** The model's counters from GET /v2/models/{m}/stats. */
export async function modelStats(url: string, model: string): Promise<StatsSnapshot> {
  const res = await fetch(`${url}/v2/models/${model}/stats`);
  if (res.status !== 200) throw new Error(`stats of ${model}: HTTP ${res.status}`);
  const body = (await res.json()) as { model_stats: ModelStatsJson[] };
  const s = body.model_stats[0];
  return {
    inference: s.inference_count,
    execution: s.execution_count,
    successCount: s.inference_stats.success.count,
    successNs: s.inference_stats.success.ns,
    queueNs: s.inference_stats.queue.ns,
    computeNs: s.inference_stats.compute_infer.ns,
    batchBusyNs: (s.batch_stats ?? []).reduce((n, b) => n + b.compute_input.ns + b.compute_infer.ns + b.compute_output.ns, 0),
  };
}

interface ModelStatsJson {
  inference_count: number;
  execution_count: number;
  inference_stats: Record<'success' | 'queue' | 'compute_infer', { count: number; ns: number }>;
  batch_stats?: { batch_size: number; compute_input: { ns: number }; compute_infer: { ns: number }; compute_output: { ns: number } }[];
}

export interface StatsDelta {
  requests: number;
  batches: number;
  meanRowsPerBatch: number;
  /** Per request, ms: scheduler enqueue → reply ready (excludes HTTP parsing/encoding). */
  serverMeanMs: number;
  queueMeanMs: number;
  /** Per request, ms: time the copy reported inside predictBatch. */
  computeMeanMs: number;
}

export function statsDelta(a: StatsSnapshot, b: StatsSnapshot): StatsDelta {
  const n = b.successCount - a.successCount;
  const per = (ns: number) => (n > 0 ? ns / n / 1e6 : NaN);
  const batches = b.execution - a.execution;
  return {
    requests: n,
    batches,
    meanRowsPerBatch: batches > 0 ? (b.inference - a.inference) / batches : NaN,
    serverMeanMs: per(b.successNs - a.successNs),
    queueMeanMs: per(b.queueNs - a.queueNs),
    computeMeanMs: per(b.computeNs - a.computeNs),
  };
}
