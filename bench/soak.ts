/**
 * Soak: the broker under twice the load its queue admits, through all three
 * bridges at once, with faults injected, for SOAK_SECONDS (default 600).
 *
 *   npm run build && npm run soak
 *
 * Load: closed-loop callers on REST JSON, gRPC ModelInfer and the ZeroMQ
 * bridge against `simple` (queue_capacity SOAK_QUEUE), with 2 × SOAK_QUEUE
 * callers in all, so the queue stays full and the excess is refused with 429 /
 * RESOURCE_EXHAUSTED. Every answer is checked (OUTPUT0 = INPUT0 + INPUT1).
 *
 * Faults, one every SOAK_FAULT_EVERY seconds, in turn: kill -9 of a model copy;
 * Redis killed and restarted with its append-only file (data kept); Redis
 * killed and restarted empty (what `--save ''` or a failover to an empty
 * replica does).
 *
 * A call with no answer within its deadline + SOAK_LOST_AFTER_MS counts as
 * lost (it must be 0). Reports RSS of the broker over time, answers by kind
 * against requests sent, whether RSS stayed flat (each minute's median within
 * ±10 % of the first minute's: pass/FAIL), and writes bench/results/soak.{json,md}
 * and the README section between <!-- soak:start --> and <!-- soak:end -->
 * (SOAK_README=0 leaves README.md alone).
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Tensor } from '../proto/tensor';
import { startBrokerProc, type BrokerProc } from './broker-proc';
import { GrpcInferClient, ZmqClient, grpcRawRequest, int32Values } from './clients';
import { LOOPBACK, freePort, runMain, sleep, spawnChild, type ChildHandle } from './procs';

const envNum = (k: string, d: number) => (process.env[k] ? Number(process.env[k]) : d);
const SECONDS = envNum('SOAK_SECONDS', 600);
const QUEUE = envNum('SOAK_QUEUE', 64);
const FAULT_EVERY = envNum('SOAK_FAULT_EVERY', 60);
const SAMPLE_EVERY = envNum('SOAK_SAMPLE_EVERY', 10);
const DEADLINE_MS = 5000;
const LOST_AFTER_MS = envNum('SOAK_LOST_AFTER_MS', 10_000);
const WRITE = process.env.SOAK_WRITE !== '0';
const ROOT = path.resolve(__dirname, '..', '..');

const log = (msg: string) => process.stderr.write(`[soak ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);

const WIDTH = 16;
const row0 = Array.from({ length: WIDTH }, (_, i) => i);
const row1 = Array.from({ length: WIDTH }, () => 1);
const expected = row0.map((x) => x + 1).join();
const tensor = (name: string, values: number[]): Tensor => ({ name, datatype: 'INT32', shape: [1, WIDTH], data: Buffer.from(new Int32Array(values).buffer) });
const tensors = [tensor('INPUT0', row0), tensor('INPUT1', row1)];
const restBody = JSON.stringify({ inputs: tensors.map((t, i) => ({ name: t.name, datatype: 'INT32', shape: [1, WIDTH], data: i === 0 ? row0 : row1 })) });

type Outcome = 'ok' | 'refused' | 'unavailable' | 'other' | 'wrong';
type Bridge = 'REST' | 'gRPC' | 'ZeroMQ';

class Counts {
  sent = 0;
  answered = 0;
  lost = 0;
  late = 0;
  by: Record<Outcome, number> = { ok: 0, refused: 0, unavailable: 0, other: 0, wrong: 0 };
  firstOther?: string;
  add(o: Outcome, detail?: string) {
    this.answered++;
    this.by[o]++;
    if (o === 'other' || o === 'wrong') this.firstOther ??= detail;
  }
  snapshot() {
    return { sent: this.sent, answered: this.answered, lost: this.lost, late: this.late, ...this.by };
  }
}

/** Redis on a fixed port, killable and restartable with or without its data. */
class RedisUnderTest {
  private h?: ChildHandle;
  constructor(readonly port: number, readonly dir: string) {}
  get url() {
    return `redis://${LOOPBACK}:${this.port}`;
  }
  async start(): Promise<void> {
    for (let attempt = 0; attempt < 50; attempt++) {
      this.h = spawnChild(process.env.TB_REDIS_SERVER ?? 'redis-server', [
        '--port', String(this.port), '--bind', LOOPBACK, '--save', '', '--appendonly', 'yes', '--appendfsync', 'everysec', '--dir', this.dir,
      ]);
      for (let i = 0; i < 100 && !this.h.exited(); i++) {
        if (this.h.output().includes('Ready to accept connections')) return;
        await sleep(50);
      }
      await this.h.stop(500);
      await sleep(100); // the port may still be held by the killed server
    }
    throw new Error(`redis-server did not restart on ${this.port}: ${this.h?.output().slice(-400)}`);
  }
  async kill(): Promise<void> {
    this.h?.child.kill('SIGKILL');
    await this.h?.stop(1000);
  }
  async restart(empty: boolean): Promise<void> {
    await this.kill();
    if (empty) {
      rmSync(this.dir, { recursive: true, force: true });
      await mkdir(this.dir, { recursive: true });
    }
    await this.start();
  }
  stop() {
    return this.h?.stop(2000) ?? Promise.resolve();
  }
}

function rssMb(pid: number | undefined): number {
  if (pid === undefined) return NaN;
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** Pids of the broker's model copies (its children running an example model). */
function copyPids(broker: number | undefined): number[] {
  if (broker === undefined) return [];
  try {
    return readFileSync(`/proc/${broker}/task/${broker}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number)
      .filter((p) => {
        try {
          return readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(path.join('models', 'simple'));
        } catch {
          return false;
        }
      });
  } catch {
    return [];
  }
}

/** Runs `call` in a closed loop until `until()`, classifying each answer; a call with no answer in time is lost. */
async function caller(counts: Counts, until: () => boolean, call: () => Promise<Outcome | [Outcome, string]>): Promise<void> {
  while (!until()) {
    counts.sent++;
    const answer = call().then(
      (o) => (Array.isArray(o) ? o : ([o, undefined] as const)),
      (e: Error) => ['other', e.message] as const,
    );
    const watchdog = new Promise<'lost'>((r) => {
      const t = setTimeout(() => r('lost'), DEADLINE_MS + LOST_AFTER_MS);
      void answer.finally(() => clearTimeout(t));
    });
    const first = await Promise.race([answer, watchdog]);
    if (first === 'lost') {
      counts.lost++;
      void answer.then(() => counts.late++);
      continue;
    }
    counts.add(first[0], first[1]);
    // A refused caller comes back after a short pause, as a client honouring Retry-After would (shortened).
    if (first[0] === 'refused' || first[0] === 'unavailable') await sleep(2);
  }
}

function restCall(url: string) {
  return async (): Promise<Outcome | [Outcome, string]> => {
    const res = await fetch(`${url}/v2/models/simple/infer`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: restBody, signal: AbortSignal.timeout(DEADLINE_MS + LOST_AFTER_MS + 5000),
    });
    const text = await res.text();
    if (res.status === 429) return 'refused';
    if (res.status === 503) return 'unavailable';
    if (res.status !== 200) return ['other', `HTTP ${res.status}: ${text.slice(0, 200)}`];
    const out = (JSON.parse(text) as { outputs: { name: string; data: number[] }[] }).outputs.find((o) => o.name === 'OUTPUT0');
    return out?.data.join() === expected ? 'ok' : ['wrong', text.slice(0, 200)];
  };
}

function grpcCall(client: GrpcInferClient) {
  const req = grpcRawRequest('simple', tensors);
  return async (): Promise<Outcome | [Outcome, string]> => {
    try {
      const r = await client.infer(req, DEADLINE_MS);
      const i = r.outputs.findIndex((o) => o.name === 'OUTPUT0');
      return i >= 0 && int32Values(r.rawOutputContents[i]).join() === expected ? 'ok' : ['wrong', 'OUTPUT0 differs'];
    } catch (e) {
      const code = (e as { code?: number }).code;
      if (code === 8) return 'refused'; // RESOURCE_EXHAUSTED
      if (code === 14) return 'unavailable';
      return ['other', (e as Error).message];
    }
  };
}

function zmqCall(client: ZmqClient) {
  return async (): Promise<Outcome | [Outcome, string]> => {
    try {
      const r = await client.infer('simple', tensors, { timeoutMs: DEADLINE_MS });
      const o = r.outputs.find((t) => t.name === 'OUTPUT0');
      return o && int32Values(o.data).join() === expected ? 'ok' : ['wrong', 'OUTPUT0 differs'];
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code === 'RESOURCE_EXHAUSTED') return 'refused';
      if (code === 'UNAVAILABLE') return 'unavailable';
      return ['other', `${code}: ${(e as Error).message}`];
    }
  };
}

interface Sample {
  t: number;
  rssMb: number;
  fault?: string;
  counts: Record<Bridge, ReturnType<Counts['snapshot']>>;
}

const median = (xs: number[]) => {
  const s = [...xs].filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
};

/** Issue 16, target 6: the broker's RSS stays within this of the first minute's, minute by minute. */
const RSS_TOLERANCE_PCT = 10;

/** Median RSS per minute (the first from 30 s on, past start-up) relative to the first minute's; pass when each is within ±RSS_TOLERANCE_PCT. */
function rssFlat(samples: Sample[]): { pass: boolean; worstPct: number; minutes: { minute: number; mb: number; pct: number }[] } {
  const byMinute = new Map<number, number[]>();
  for (const s of samples) {
    if (s.t < 30) continue;
    const m = Math.floor(s.t / 60);
    byMinute.set(m, [...(byMinute.get(m) ?? []), s.rssMb]);
  }
  const medians = [...byMinute.entries()].sort((x, y) => x[0] - y[0]).map(([minute, xs]) => ({ minute, mb: median(xs) }));
  const base = medians[0]?.mb ?? NaN;
  const minutes = medians.map((m) => ({ ...m, pct: (m.mb / base - 1) * 100 }));
  const worstPct = minutes.reduce((w, m) => (Math.abs(m.pct) > Math.abs(w) ? m.pct : w), 0);
  return { pass: minutes.length > 1 && minutes.every((m) => Math.abs(m.pct) <= RSS_TOLERANCE_PCT), worstPct, minutes };
}

function toMarkdown(samples: Sample[], totals: Record<Bridge, ReturnType<Counts['snapshot']>>, faults: string[], perBridge: number): string {
  const minute = (s: Sample) => Math.floor(s.t / 60);
  const firstMin = samples.filter((s) => minute(s) === 0 && s.t >= 30).map((s) => s.rssMb);
  const lastT = samples.at(-1)?.t ?? 0;
  const lastMin = samples.filter((s) => s.t > lastT - 60).map((s) => s.rssMb);
  const rss = samples.map((s) => s.rssMb);
  const a = median(firstMin.length ? firstMin : rss.slice(0, 3));
  const b = median(lastMin);
  const lines: string[] = [];
  lines.push(`Soak: ${Math.round(lastT)} s, \`simple\` (batch 8, queue ${QUEUE}, 1–2 copies), ${perBridge} closed-loop callers on each of REST JSON, gRPC and ZeroMQ (${perBridge * 3} in all, 2 × the queue), a fault every ${FAULT_EVERY} s (${faults.length} in all: ${[...new Set(faults)].join(', ')}). Machine: ${os.cpus().length} cores, ${os.cpus()[0]?.model.trim() ?? '?'}, Node ${process.version}.`);
  lines.push('');
  lines.push('| bridge | sent | answered | ok | refused (429) | unavailable (503) | other errors | wrong answers | lost |');
  lines.push('|---|---|---|---|---|---|---|---|---|');
  for (const [br, c] of Object.entries(totals)) {
    lines.push(`| ${br} | ${c.sent} | ${c.answered} | ${c.ok} | ${c.refused} | ${c.unavailable} | ${c.other} | ${c.wrong} | **${c.lost}** |`);
  }
  lines.push('');
  lines.push(`Broker RSS: median ${a.toFixed(0)} MB in the first minute (after 30 s), ${b.toFixed(0)} MB in the last minute (${((b / a - 1) * 100).toFixed(1)} %), min ${Math.min(...rss).toFixed(0)} MB, max ${Math.max(...rss).toFixed(0)} MB.`);
  lines.push('');
  const f = rssFlat(samples);
  const all = Object.values(totals);
  const refused = all.reduce((n, c) => n + c.refused, 0);
  const answered = all.reduce((n, c) => n + c.answered, 0);
  lines.push(
    `**RSS flat (±${RSS_TOLERANCE_PCT} %): ${f.pass ? 'pass' : 'FAIL'}.** Median RSS of each minute against the first minute's (after 30 s): ` +
      `${f.minutes.map((m) => `${m.minute}: ${m.pct >= 0 ? '+' : ''}${m.pct.toFixed(1)} %`).join(', ')}; the largest deviation ${f.worstPct >= 0 ? '+' : ''}${f.worstPct.toFixed(1)} %. ` +
      `Under overload: ${refused} of ${answered} answers (${((refused / Math.max(1, answered)) * 100).toFixed(1)} %) were refusals (429 / RESOURCE_EXHAUSTED).`,
  );
  lines.push('');
  lines.push('| t (s) | RSS (MB) | ok/s | refused/s | other/s | fault |');
  lines.push('|---|---|---|---|---|---|');
  let prev: Sample | undefined;
  for (const s of samples) {
    const sum = (x: Sample | undefined, k: 'ok' | 'refused' | 'other') => (x ? Object.values(x.counts).reduce((n, c) => n + c[k] + (k === 'other' ? c.unavailable + c.wrong : 0), 0) : 0);
    const dt = prev ? s.t - prev.t : s.t;
    if (!prev || s.fault || Math.floor(s.t / 60) !== Math.floor(prev.t / 60)) {
      lines.push(`| ${Math.round(s.t)} | ${s.rssMb.toFixed(0)} | ${((sum(s, 'ok') - sum(prev, 'ok')) / dt).toFixed(0)} | ${((sum(s, 'refused') - sum(prev, 'refused')) / dt).toFixed(0)} | ${((sum(s, 'other') - sum(prev, 'other')) / dt).toFixed(1)} | ${s.fault ?? ''} |`);
    }
    prev = s;
  }
  return lines.join('\n') + '\n';
}

async function updateReadme(md: string): Promise<void> {
  const readme = path.join(ROOT, 'README.md');
  const START = '<!-- soak:start -->';
  const END = '<!-- soak:end -->';
  if (!existsSync(readme)) return;
  const text = await readFile(readme, 'utf8');
  const a = text.indexOf(START);
  const b = text.indexOf(END, a + 1);
  if (a < 0 || b < 0) {
    log(`README.md has no ${START} … ${END} markers: left unchanged`);
    return;
  }
  await writeFile(readme, text.slice(0, a + START.length) + '\n' + md + text.slice(b));
  log('README.md soak section updated');
}

runMain(async (cleanups) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tb-soak-'));
  cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
  const redisDir = path.join(dir, 'redis');
  await mkdir(redisDir, { recursive: true });
  const redis = new RedisUnderTest(await freePort(), redisDir);
  await redis.start();
  cleanups.push(() => redis.stop());
  log(`redis on ${redis.url} (appendonly yes)`);

  const broker: BrokerProc = await startBrokerProc({
    root: ROOT, dir, redisUrl: redis.url, waitFor: ['simple'],
    models: {
      simple: {
        command: ['node', path.join(ROOT, 'dist', 'examples', 'models', 'simple', 'main.js')],
        batch_size: 8, max_wait_ms: 0, queue_capacity: QUEUE, timeout_ms: DEADLINE_MS,
        min_replicas: 1, max_replicas: 2, retry_on_failure: true, max_failures: 1000, failure_window_ms: 60_000,
      },
    },
  });
  cleanups.push(() => broker.stop());
  log(`broker pid ${broker.pid} at ${broker.url}`);

  const perBridge = Math.ceil((2 * QUEUE) / 3);
  const grpc = new GrpcInferClient(broker.grpcPort);
  cleanups.push(async () => grpc.close());
  const zmq = new ZmqClient(broker.zmqEndpoint, { window: perBridge, timeoutMs: DEADLINE_MS });
  cleanups.push(() => zmq.close());

  const counts: Record<Bridge, Counts> = { REST: new Counts(), gRPC: new Counts(), ZeroMQ: new Counts() };
  const t0 = Date.now();
  const elapsed = () => (Date.now() - t0) / 1000;
  const done = () => elapsed() >= SECONDS;
  const callers: Promise<void>[] = [];
  for (let i = 0; i < perBridge; i++) {
    callers.push(caller(counts.REST, done, restCall(broker.url)));
    callers.push(caller(counts.gRPC, done, grpcCall(grpc)));
    callers.push(caller(counts.ZeroMQ, done, zmqCall(zmq)));
  }

  const samples: Sample[] = [];
  const faults: string[] = [];
  const snapshot = (fault?: string): Sample => ({
    t: elapsed(), rssMb: rssMb(broker.pid), fault,
    counts: { REST: counts.REST.snapshot(), gRPC: counts.gRPC.snapshot(), ZeroMQ: counts.ZeroMQ.snapshot() },
  });
  const FAULTS = ['copy kill -9', 'Redis restart (AOF)', 'Redis restart (empty)'] as const;
  let nextSample = SAMPLE_EVERY;
  let nextFault = FAULT_EVERY;
  let k = 0;
  while (!done()) {
    await sleep(200);
    if (!broker.alive()) throw new Error(`the broker exited:\n${broker.output().slice(-2000)}`);
    let fault: string | undefined;
    if (elapsed() >= nextFault && elapsed() < SECONDS - 10) {
      nextFault += FAULT_EVERY;
      fault = FAULTS[k++ % FAULTS.length];
      if (fault === 'copy kill -9') {
        const pid = copyPids(broker.pid)[0];
        if (pid) process.kill(pid, 'SIGKILL');
        else fault += ' (no copy found)';
      } else {
        await redis.restart(fault === 'Redis restart (empty)');
      }
      faults.push(fault);
      log(`fault: ${fault}`);
    }
    if (fault || elapsed() >= nextSample) {
      if (!fault) nextSample += SAMPLE_EVERY;
      const s = snapshot(fault);
      samples.push(s);
      const c = Object.values(s.counts).reduce((n, x) => n + x.ok, 0);
      log(`t=${s.t.toFixed(0)}s rss=${s.rssMb.toFixed(0)}MB ok=${c} lost=${Object.values(s.counts).reduce((n, x) => n + x.lost, 0)}`);
    }
  }
  await Promise.all(callers);
  samples.push(snapshot());
  const totals = samples.at(-1)!.counts;
  for (const [br, c] of Object.entries(counts)) if (c.firstOther) log(`${br}: first other error: ${c.firstOther}`);
  const md = toMarkdown(samples, totals, faults, perBridge);
  process.stdout.write(md);
  if (WRITE) {
    const out = path.join(ROOT, 'bench', 'results');
    await mkdir(out, { recursive: true });
    await writeFile(path.join(out, 'soak.json'), JSON.stringify({ seconds: SECONDS, queue: QUEUE, perBridge, faults, rssFlat: rssFlat(samples), samples }, null, 2) + '\n');
    await writeFile(path.join(out, 'soak.md'), `# Soak — latest run\n\n${md}`);
    if (process.env.SOAK_README !== '0') await updateReadme(md);
    else log('SOAK_README=0: README.md left alone');
  }
  const lost = Object.values(totals).reduce((n, c) => n + c.lost, 0);
  if (lost > 0) throw new Error(`${lost} requests got no answer`);
}, log);
