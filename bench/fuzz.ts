/**
 * `npm run fuzz`: long property-based fuzz runs against a broker in its own
 * process (process runtime, its own redis-server), one bridge after another,
 * printing counts by outcome as it goes and a summary at the end. The cases
 * and the properties are the test suite's (tests/fuzz/harness.ts); CI runs a
 * few thousand per bridge, this runs 100,000 by default.
 *
 *   npm run fuzz -- --bridges rest --runs 100000 --seed 42 --concurrency 8
 *
 * A bridge is added to FUZZ_TARGETS with the models it needs and a factory
 * for its target; gRPC and ZeroMQ run their own cases with a broker of their own. Exits 1
 * when any case failed a property or the broker stopped serving.
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { formatReport, runFuzz, type FuzzReport, type FuzzTarget } from '../tests/fuzz/harness';
import { fuzzImages, restFuzzModels, restTarget } from '../tests/fuzz/rest-target';
import { runGrpcFuzz } from '../tests/fuzz/grpc-cases';
import { runZmqFuzz } from '../tests/fuzz/zmq-cases';
import type { FuzzReport as OwnBrokerReport } from '../tests/fuzz/fuzz-broker';
import { startBrokerProc, type BrokerProc } from './broker-proc';
import { runMain, startRedis } from './procs';

const ROOT = path.resolve(__dirname, '..', '..');
const modelMain = (m: string) => path.join(ROOT, 'dist', 'examples', 'models', m, 'main.js');

interface FuzzBridge {
  /** The `models:` entries the target's requests address. */
  models: Record<string, unknown>;
  target(broker: BrokerProc): Promise<FuzzTarget<unknown>>;
}

export const FUZZ_TARGETS: Record<string, FuzzBridge> = {
  rest: {
    models: restFuzzModels(modelMain),
    target: async (broker) => restTarget(broker.url, await fuzzImages()) as FuzzTarget<unknown>,
  },
};

/**
 * gRPC and ZeroMQ: their cases (tests/fuzz/grpc-cases.ts, zmq-cases.ts) start a broker of
 * their own in this process and check the same properties (no INTERNAL/UNKNOWN, no hang,
 * one reply per message, bounded RSS growth, a correct answer afterwards).
 */
const OWN_BROKER: Record<string, (runs: number, seed?: number) => Promise<OwnBrokerReport>> = {
  grpc: (runs, seed) => runGrpcFuzz(runs, undefined, seed),
  zmq: (runs, seed) => runZmqFuzz(runs, undefined, seed),
};

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

/** Resident memory of a process (Linux), in bytes. */
function rssOf(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

const log = (m: string) => console.log(`[fuzz] ${m}`);

runMain(async (cleanups) => {
  const all = [...Object.keys(FUZZ_TARGETS), ...Object.keys(OWN_BROKER)];
  const requested = (arg('bridges') ?? all.join(',')).split(',').map((s) => s.trim()).filter(Boolean);
  const unknown = requested.filter((b) => !all.includes(b));
  if (unknown.length > 0) throw new Error(`unknown bridge(s) ${unknown.join(', ')}: known are ${all.join(', ')}`);
  const bridges = requested.filter((b) => b in FUZZ_TARGETS);
  const own = requested.filter((b) => b in OWN_BROKER);
  const runs = Number(arg('runs') ?? 100_000);
  const seed = arg('seed') !== undefined ? Number(arg('seed')) : undefined;
  const concurrency = Number(arg('concurrency') ?? 8);

  const dir = await mkdtemp(path.join(os.tmpdir(), 'tb-fuzz-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const redis = await startRedis(dir);
  cleanups.push(() => redis.stop());
  const models = Object.assign({}, ...bridges.map((b) => FUZZ_TARGETS[b].models)) as Record<string, unknown>;
  const broker = bridges.length > 0 ? await startBrokerProc({ root: ROOT, dir, redisUrl: redis.url, models, waitFor: Object.keys(models) }) : undefined;
  if (broker) cleanups.push(() => broker.stop());

  const reports: FuzzReport[] = [];
  for (const bridge of bridges) {
    if (!broker) break;
    const target = await FUZZ_TARGETS[bridge].target(broker);
    log(`${bridge}: ${runs} cases, concurrency ${concurrency}`);
    const report = await runFuzz(target, {
      runs,
      seed,
      concurrency,
      rss: () => rssOf(broker.pid),
      progressEvery: Math.max(1000, Math.floor(runs / 20)),
      onProgress: (r) => log(`${bridge}: ${r.runs}/${runs} ${Object.entries(r.counts).filter(([, n]) => n > 0).map(([o, n]) => `${o} ${n}`).join(', ')} (RSS peak ${r.rssPeakMb} MB)`),
    });
    reports.push(report);
    console.log(formatReport(report));
    if (!broker.alive()) throw new Error(`the broker exited during the ${bridge} run:\n${broker.output().slice(-2000)}`);
  }
  const failed = reports.filter((r) => r.failures.length > 0 || !r.stillServing).map((r) => `${r.target} (seed ${r.seed})`);
  for (const b of own) {
    log(`${b}: ${runs} cases (a broker of its own, in this process)`);
    const r = await OWN_BROKER[b](runs, seed);
    console.log(`${b}: ${r.cases} cases: ${Object.entries(r.outcomes).map(([o, n]) => `${o} ${n}`).join(', ')}; RSS growth ${r.rssGrowthMb.toFixed(0)} MB`);
    for (const v of r.violations.slice(0, 10)) console.log(`  violation: ${v}`);
    if (r.violations.length > 0) failed.push(b);
  }
  if (failed.length > 0) throw new Error(`properties failed for ${failed.join(', ')}`);
  log('every case answered with a success or a client error; the broker still serves');
}, log);
