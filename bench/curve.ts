/**
 * What ZeroMQ CURVE costs on the model link: the same real copy (the
 * `identity` example on the Node SDK, a child process) behind the broker's
 * LinkServer over ipc, plain TCP and CURVE TCP, in one run, rounds
 * interleaved. One batch in flight (the copy's one credit): round trips/s,
 * p50, and CPU per round trip of the broker side and of the copy. Tensors of
 * 64 bytes and 1 MiB (UINT8 [1, n], echoed back).
 *
 *   npm run build && node dist/bench/curve.js [seconds per point, default 4]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import pino from 'pino';
import * as zmq from 'zeromq';
import { SPEC_DEFAULTS, type ModelSpec } from '../core/model-spec';
import { LinkServer, type LinkServerOptions } from '../task-manager/link-server';
import { ProcessRuntime } from '../task-manager/process-runtime';
import { TaskManager } from '../task-manager/task-manager';
import { closedLoop } from './loop';

const ROOT = path.resolve(__dirname, '..', '..');
const IDENTITY = path.join(ROOT, 'dist', 'examples', 'models', 'identity', 'main.js');
const SECONDS = Number(process.argv[2] ?? 4);
const SIZES = [64, 1024 * 1024];
const TRANSPORTS: [string, LinkServerOptions][] = [
  ['ipc', {}],
  ['tcp', { transport: 'tcp' }],
  ['tcp + CURVE', { transport: 'tcp', curve: zmq.curveKeyPair() }],
];
const TICK = 100; // clock ticks per second in /proc/<pid>/stat (USER_HZ)

function childCpuMs(pid: number): number {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return ((Number(f[11]) + Number(f[12])) * 1000) / TICK;
}

interface Point { transport: string; bytes: number; rps: number; p50: number; p99: number; brokerCpuUs: number; copyCpuUs: number }

async function measure(name: string, opts: LinkServerOptions, bytes: number, dir: string): Promise<Point> {
  const logger = pino({ level: 'silent' });
  const link = new LinkServer({ ...opts, socketDir: dir, brokerId: name.replace(/\W+/g, '-'), heartbeatMs: 1000, logger });
  const tm = new TaskManager({ runtime: new ProcessRuntime({ logger }), link, brokerId: 'bench', logger, stopGraceMs: 2000 });
  try {
    const spec: ModelSpec = { ...SPEC_DEFAULTS, name: 'identity', batch_size: 16, command: [process.execPath, IDENTITY], env: {}, source: 'file' } as ModelSpec;
    const ready = new Promise<void>((resolve) => tm.on('metadata', () => resolve()));
    await tm.reconcile([spec]);
    await ready;
    const ctl = tm.controller('identity')!;
    const pid = ctl.copyInfos()[0].pid!;
    const data = Buffer.alloc(bytes, 7);
    let id = 1n;
    const call = async () => {
      const copy = ctl.available();
      if (!copy) throw new Error('no copy with a free credit');
      const r = await copy.execute({
        batchId: id++, model: 'identity', items: [{ requestId: 'r', rows: 1 }], outputs: ['OUT_UINT8'], deadline: Date.now() + 10_000,
        tensors: [{ name: 'IN_UINT8', datatype: 'UINT8', shape: [1, bytes], data }],
      });
      if (r.tensors[0].data.length !== bytes) throw new Error('wrong answer size');
    };
    for (let i = 0; i < 50; i++) await call(); // warm up
    const cpu0 = process.cpuUsage();
    const child0 = childCpuMs(pid);
    const p = await closedLoop(call, 1, SECONDS);
    const cpu = process.cpuUsage(cpu0);
    const childMs = childCpuMs(pid) - child0;
    if (p.errors > 0) throw new Error(`${name}: ${p.errors} errors: ${p.firstError}`);
    return {
      transport: name, bytes, rps: p.throughput, p50: p.latency.p50, p99: p.latency.p99,
      brokerCpuUs: ((cpu.user + cpu.system) / p.ok), copyCpuUs: (childMs * 1000) / p.ok,
    };
  } finally {
    await tm.close(1000);
  }
}

async function main(): Promise<void> {
  if (!fs.existsSync(IDENTITY)) throw new Error(`${IDENTITY} is missing: run npm run build first`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-curve-'));
  const points: Point[] = [];
  // Two rounds, transports interleaved within each: a slow moment of the shared machine hits all three.
  for (let round = 0; round < 2; round++) {
    for (const bytes of SIZES) for (const [name, opts] of TRANSPORTS) points.push(await measure(name, opts, bytes, dir));
  }
  const best = (t: string, b: number) => points.filter((p) => p.transport === t && p.bytes === b).sort((x, y) => y.rps - x.rps)[0];
  const lines = [
    `| tensor | transport | round trips/s | p50 ms | p99 ms | broker CPU µs/rt | copy CPU µs/rt | round trips/s vs plain tcp |`,
    `|---|---|---:|---:|---:|---:|---:|---:|`,
  ];
  for (const bytes of SIZES) {
    const tcp = best('tcp', bytes);
    for (const [name] of TRANSPORTS) {
      const p = best(name, bytes);
      lines.push(`| ${bytes >= 1024 * 1024 ? `${bytes / 1024 / 1024} MiB` : `${bytes} B`} | ${name} | ${p.rps.toFixed(0)} | ${p.p50.toFixed(3)} | ${p.p99.toFixed(3)} | ${p.brokerCpuUs.toFixed(0)} | ${p.copyCpuUs.toFixed(0)} | ${(p.rps / tcp.rps).toFixed(2)} |`);
    }
  }
  console.log(`CURVE on the model link (${SECONDS} s per point, best of 2 interleaved rounds, 1 batch in flight), node ${process.version}, ${os.cpus().length} CPUs\n`);
  console.log(lines.join('\n'));
  fs.rmSync(dir, { recursive: true, force: true });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
