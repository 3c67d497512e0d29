/**
 * `npm run bench:http`: node:http vs. fastify vs. express 5 for big binary request
 * bodies (and small-JSON rows), each server in its own child process, on 127.0.0.1.
 *
 *  (a) raw node:http — reads the chunks into one Buffer sized from Content-Length;
 *  (b) fastify, built-in parser (`parseAs: 'buffer'`: chunk list + Buffer.concat);
 *  (c) fastify with the REST bridge's rawBodyParser (dist/bridges/rest/raw-body.js)
 *      and its body pool (body-pool.ts), as the broker's infer route uses them;
 *  (d) express 5 as a user writes it: express.raw() / express.json() and res.json()
 *      (its defaults kept: ETag, X-Powered-By), the same replies. express is a
 *      devDependency for this bench only; the broker does not use it.
 *
 * The binary POST carries BENCH_BODY_KB (150) KB of random bytes as
 * application/octet-stream and is answered with {"bytes": n, "sum": <sum of the
 * first 16 bytes>}, so every server must have the whole body. The small row is
 * an 80-byte JSON POST answered with a 140-byte JSON (raw node:http parses and
 * stringifies; fastify uses its default JSON parser and serializer).
 *
 * The same file is the server: `node dist/bench/http-body.js serve <kind>`
 * prints its port on stdout. See bench/README.md.
 */
import autocannon from 'autocannon';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { runHttpPoint, type HttpPoint } from './http-load';
import { LOOPBACK, cpuMs, runMain, sleep, spawnChild, waitUntil, type ChildHandle, type Cleanups } from './procs';
import { Samples } from './samples';

const ROOT = path.resolve(__dirname, '..', '..');

// ---------------------------------------------------------------------------
// The servers (child processes)
// ---------------------------------------------------------------------------

type ServerKind = 'raw' | 'fastify-buffer' | 'fastify-raw' | 'fastify-raw-nopool' | 'express';
const KINDS: ServerKind[] = ['raw', 'fastify-buffer', 'fastify-raw', 'fastify-raw-nopool', 'express'];
const LABEL: Record<ServerKind, string> = {
  raw: '(a) raw node:http, one preallocated Buffer',
  'fastify-buffer': "(b) fastify, built-in parseAs 'buffer'",
  'fastify-raw': '(c) fastify + rawBodyParser + body pool',
  'fastify-raw-nopool': "(c') fastify + rawBodyParser, no pool",
  express: '(d) express 5, express.raw()',
};
/** The small-JSON rows: one fastify suffices (b and c differ only in the octet-stream parser). */
const SMALL_KINDS: ServerKind[] = ['raw', 'fastify-buffer', 'express'];
const SMALL_LABEL: Partial<Record<ServerKind, string>> = {
  raw: '(a) raw node:http, JSON.parse + JSON.stringify',
  'fastify-buffer': 'fastify, default JSON parser',
  express: '(d) express 5, express.json() + res.json()',
};

const BIN_PATH = '/bin';
const SMALL_PATH = '/small';
/** Same limit as the broker's default --body-limit. */
const BODY_LIMIT = 64 * 1024 * 1024;

interface SmallRequest {
  id: number;
  model: string;
  op: string;
  pad: string;
}

/** What every server answers to the binary POST: it reads every byte and sums the first 16. */
function binReply(body: Buffer): { bytes: number; sum: number } {
  let sum = 0;
  for (let i = 0; i < 16 && i < body.length; i++) sum += body[i];
  return { bytes: body.length, sum };
}

/** The 140-byte answer to the small POST, built from the parsed request (identical in every server). */
const SMALL_NOTE = 'x'.repeat(61);
function smallReply(req: SmallRequest): Record<string, unknown> {
  return { id: req.id, model: req.model, op: req.op, status: 'ok', received: req.pad.length, note: SMALL_NOTE };
}

function serveRaw(): http.Server {
  const send = (res: http.ServerResponse, status: number, obj: unknown) => {
    const text = Buffer.from(JSON.stringify(obj));
    res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': text.length });
    res.end(text);
  };
  return http.createServer((req, res) => {
    if (req.method === 'POST' && req.url === BIN_PATH) {
      const length = Number(req.headers['content-length']);
      if (!Number.isInteger(length) || length < 0 || length > BODY_LIMIT) {
        req.resume();
        return send(res, 411, { error: 'Content-Length required' });
      }
      const body = Buffer.allocUnsafe(length);
      let offset = 0;
      req.on('data', (chunk: Buffer) => {
        if (offset >= 0 && offset + chunk.length <= length) {
          chunk.copy(body, offset);
          offset += chunk.length;
        } else offset = -1;
      });
      req.on('end', () => (offset === length ? send(res, 200, binReply(body)) : send(res, 400, { error: 'body length mismatch' })));
      return;
    }
    if (req.method === 'POST' && req.url === SMALL_PATH) {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        let parsed: SmallRequest;
        try {
          parsed = JSON.parse(Buffer.concat(chunks).toString('utf8')) as SmallRequest;
        } catch {
          return send(res, 400, { error: 'bad JSON' });
        }
        send(res, 200, smallReply(parsed));
      });
      return;
    }
    req.resume();
    send(res, 404, { error: 'not found' });
  });
}

async function serveFastify(kind: 'fastify-buffer' | 'fastify-raw' | 'fastify-raw-nopool'): Promise<{ port: number; close: () => Promise<void> }> {
  // Loaded here so the load-generating parent never pays for fastify.
  const { default: Fastify } = await import('fastify');
  const app = Fastify({ logger: false, bodyLimit: BODY_LIMIT });
  if (kind === 'fastify-buffer') {
    app.addContentTypeParser('application/octet-stream', { parseAs: 'buffer', bodyLimit: BODY_LIMIT }, (_req, body, done) => done(null, body));
  } else {
    // Compiled to require('../bridges/rest/raw-body'): dist/bridges/rest/raw-body.js, the module the broker runs,
    // with its body pool as the broker's infer route uses it (the lease released when the response closes).
    const { rawBodyParser } = await import('../bridges/rest/raw-body');
    const { BodyPool } = await import('../bridges/rest/body-pool');
    const pooling = kind === 'fastify-raw' ? { pool: new BodyPool(), wants: () => true } : undefined;
    app.addContentTypeParser('application/octet-stream', { bodyLimit: BODY_LIMIT }, rawBodyParser(BODY_LIMIT, undefined, pooling));
  }
  const { pooledOf } = await import('../bridges/rest/body-pool');
  app.post(BIN_PATH, async (req, reply) => {
    const body = req.body as Buffer;
    const lease = pooledOf(body);
    if (lease) reply.raw.once('close', lease.releaser());
    return binReply(body);
  });
  app.post(SMALL_PATH, async (req) => smallReply(req.body as SmallRequest));
  await app.listen({ host: LOOPBACK, port: 0 });
  return { port: (app.server.address() as { port: number }).port, close: () => app.close() };
}

async function serveExpress(): Promise<{ port: number; close: () => Promise<void> }> {
  // Loaded here so the load-generating parent never pays for express.
  const { default: express } = await import('express');
  const app = express();
  app.post(BIN_PATH, express.raw({ type: 'application/octet-stream', limit: BODY_LIMIT }), (req, res) => {
    res.json(binReply(req.body as Buffer));
  });
  app.post(SMALL_PATH, express.json({ limit: BODY_LIMIT }), (req, res) => {
    res.json(smallReply(req.body as SmallRequest));
  });
  const server = await new Promise<http.Server>((resolve, reject) => {
    const s = app.listen(0, LOOPBACK, (err?: Error) => (err ? reject(err) : resolve(s)));
  });
  return {
    port: (server.address() as { port: number }).port,
    close: () => new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    }),
  };
}

async function serve(kind: string): Promise<void> {
  let close: () => Promise<void>;
  let port: number;
  if (kind === 'raw') {
    const server = serveRaw();
    await new Promise<void>((r) => server.listen(0, LOOPBACK, r));
    port = (server.address() as { port: number }).port;
    close = () => new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    });
  } else if (kind === 'fastify-buffer' || kind === 'fastify-raw' || kind === 'fastify-raw-nopool') {
    ({ port, close } = await serveFastify(kind));
  } else if (kind === 'express') {
    ({ port, close } = await serveExpress());
  } else {
    throw new Error(`unknown server kind '${kind}' (expected ${KINDS.join(', ')})`);
  }
  process.on('SIGTERM', () => void close().finally(() => process.exit(0)));
  process.stdout.write(`${port}\n`);
}

// ---------------------------------------------------------------------------
// The load side
// ---------------------------------------------------------------------------

function envNum(name: string, dflt: number, allowZero = false): number {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0 || (n === 0 && !allowZero)) throw new Error(`${name} must be a ${allowZero ? 'non-negative' : 'positive'} number (got '${v}')`);
  return n;
}

/**
 * BENCH_HTTP_SMOKE=1: a check that every server answers under load, not a measurement:
 * BENCH_SMOKE_REQUESTS (200) requests per point, no warm-up, no idle wait, nothing written.
 */
const SMOKE = process.env.BENCH_HTTP_SMOKE === '1';
const SMOKE_REQUESTS = envNum('BENCH_SMOKE_REQUESTS', 200);
const SECONDS = envNum('BENCH_SECONDS', 5);
const WARMUP = SMOKE ? 0 : envNum('BENCH_WARMUP_SECONDS', 1);
const BODY_BYTES = Math.round(envNum('BENCH_BODY_KB', 150) * 1024);
const BIN_CONCURRENCY = [1, 16];
const SMALL_CONCURRENCY = 16;
const IDLE_WAIT_S = SMOKE ? 0 : envNum('BENCH_IDLE_WAIT_SECONDS', 15 * 60, true);
const IDLE_PATTERN = 'jest|bench/run.js';
const SMALL_BYTES = 80;
const SMALL_REPLY_BYTES = 140;

const log = (msg: string) => process.stderr.write(`[bench:http ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);

/** An 80-byte JSON request (padded to size). */
const smallBody = (() => {
  const base: SmallRequest = { id: 4711, model: 'simple', op: 'infer', pad: '' };
  const pad = SMALL_BYTES - Buffer.byteLength(JSON.stringify(base));
  return JSON.stringify({ ...base, pad: 'p'.repeat(pad) });
})();

interface Point extends HttpPoint {
  /** Request body bytes moved per second, in MB (10^6 bytes). */
  mbPerS: number;
  /** Server process CPU time / wall time, 100 = one core. */
  serverCpuPct?: number;
  /** Load generator (this process) CPU time / wall time. */
  clientCpuPct: number;
}

/**
 * runHttpPoint (http-load.ts) sends a JSON string; the binary rows need a
 * Buffer body with its own content type, so this is the same closed-loop
 * autocannon point with exact per-response samples, for a binary body.
 */
function runBinaryPoint(url: string, body: Buffer, connections: number, seconds: number): Promise<HttpPoint> {
  const length = SMOKE ? { amount: SMOKE_REQUESTS } : { duration: seconds };
  const samples = new Samples();
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const inst = autocannon(
      { url, method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body, connections, pipelining: 1, ...length, timeout: 30 },
      (err, res) => {
        if (err) return reject(err);
        const wall = Number(process.hrtime.bigint() - started) / 1e9;
        resolve({
          connections, seconds: wall, ok: samples.count, non2xx: res.non2xx, errors: res.errors, timeouts: res.timeouts,
          throughput: samples.count / wall, latency: samples.summary(),
        });
      },
    );
    inst.on('response', (_client: unknown, status: number, _bytes: number, ms: number) => {
      if (status >= 200 && status < 300) samples.add(ms);
    });
  });
}

interface Server {
  kind: ServerKind;
  url: string;
  handle: ChildHandle;
}

async function startServer(kind: ServerKind, cleanups: Cleanups): Promise<Server> {
  const nodeArgs = (process.env.BENCH_SERVER_NODE_ARGS ?? '').split(/\s+/).filter(Boolean);
  const h = spawnChild(process.execPath, [...nodeArgs, __filename, 'serve', kind], { ...process.env, NODE_ENV: 'production' });
  cleanups.push(() => h.stop(3000));
  let port = 0;
  await waitUntil(async () => {
    port = Number(/^(\d+)$/m.exec(h.output())?.[1] ?? 0);
    return port > 0;
  }, `the ${kind} server`, 15_000, () => !h.exited());
  return { kind, url: `http://${LOOPBACK}:${port}`, handle: h };
}

/** One request of each kind, checked, so a broken server fails before any timing. */
async function check(s: Server, bin: Buffer): Promise<void> {
  const r1 = await fetch(s.url + BIN_PATH, { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body: bin });
  const t1 = await r1.text();
  const want = JSON.stringify(binReply(bin));
  if (r1.status !== 200 || JSON.stringify(JSON.parse(t1)) !== want) throw new Error(`${s.kind} ${BIN_PATH}: ${r1.status} ${t1.slice(0, 200)} (expected ${want})`);
  const r2 = await fetch(s.url + SMALL_PATH, { method: 'POST', headers: { 'content-type': 'application/json' }, body: smallBody });
  const t2 = Buffer.from(await r2.arrayBuffer());
  if (r2.status !== 200 || t2.length !== SMALL_REPLY_BYTES) throw new Error(`${s.kind} ${SMALL_PATH}: ${r2.status}, ${t2.length} bytes (expected ${SMALL_REPLY_BYTES}): ${t2.toString()}`);
}

async function measure(s: Server, run: (seconds: number) => Promise<HttpPoint>, bodyBytes: number): Promise<Point> {
  if (!SMOKE) {
    await run(WARMUP);
    await sleep(200);
  }
  const cpu0 = cpuMs(s.handle.child.pid);
  const me0 = process.cpuUsage();
  const p = await run(SECONDS);
  const me = process.cpuUsage(me0);
  const cpu1 = cpuMs(s.handle.child.pid);
  await sleep(200);
  if (p.non2xx + p.errors + p.timeouts > 0) log(`  ${s.kind}: ${p.non2xx} non-2xx, ${p.errors} errors, ${p.timeouts} timeouts`);
  return {
    ...p,
    mbPerS: (p.ok * bodyBytes) / p.seconds / 1e6,
    serverCpuPct: cpu0 !== undefined && cpu1 !== undefined ? ((cpu1 - cpu0) / (p.seconds * 1000)) * 100 : undefined,
    clientCpuPct: ((me.user + me.system) / 1000 / (p.seconds * 1000)) * 100,
  };
}

/** Waits until `pgrep -f 'jest|bench/run.js'` finds nothing (polled every 5 s), at most IDLE_WAIT_S. */
async function waitForIdle(): Promise<{ waitedS: number; gaveUp: boolean; busyWith: string }> {
  const busy = () =>
    new Promise<string>((resolve) => {
      // execFile, not a shell: a shell's own command line would contain the pattern.
      execFile('pgrep', ['-fa', IDLE_PATTERN], (err, stdout) => resolve(err ? '' : stdout.trim()));
    });
  const t0 = Date.now();
  let last = await busy();
  while (last !== '') {
    const waited = (Date.now() - t0) / 1000;
    if (waited >= IDLE_WAIT_S) {
      log(`still busy after ${Math.round(waited)} s (${last.split('\n').length} process(es) matching '${IDLE_PATTERN}'): measuring anyway`);
      return { waitedS: waited, gaveUp: true, busyWith: last };
    }
    log(`waiting for other heavy processes to finish (${last.split('\n').map((l) => l.slice(0, 80)).join(' | ')})`);
    await sleep(5000);
    last = await busy();
  }
  return { waitedS: (Date.now() - t0) / 1000, gaveUp: false, busyWith: '' };
}

interface BinRow {
  concurrency: number;
  server: ServerKind;
  point: Point;
  /** req/s of this server / req/s of raw node:http at the same concurrency. */
  ratioToRaw: number;
}

interface SmallRow {
  concurrency: number;
  server: ServerKind;
  point: Point;
  ratioToRaw: number;
}

interface Result {
  date: string;
  machine: { cpu: string; cores: number; node: string; platform: string; loadavgBefore: number[]; loadavgAfter: number[] };
  settings: { seconds: number; warmupSeconds: number; bodyBytes: number; binConcurrency: number[]; smallConcurrency: number; smallBytes: number; smallReplyBytes: number };
  idle: { pattern: string; waitedS: number; gaveUp: boolean; busyWith: string };
  binary: BinRow[];
  small: SmallRow[];
  express: { version: string };
  smoke: boolean;
}

const f = (v: number, digits = 2) => (Number.isFinite(v) ? v.toFixed(digits) : '—');
const int = (v: number) => (Number.isFinite(v) ? Math.round(v).toLocaleString('en-US') : '—');
const pct = (v: number | undefined) => (v === undefined || !Number.isFinite(v) ? '—' : `${Math.round(v)} %`);

function toMarkdown(r: Result): string {
  const m = r.machine;
  const s = r.settings;
  const out: string[] = [];
  if (r.smoke) out.push(`**Smoke run (BENCH_HTTP_SMOKE=1, ${SMOKE_REQUESTS} requests per point, no warm-up): checks that every server answers, the figures mean nothing.**`, '');
  out.push(`Run ${r.date} on ${m.cpu}, ${m.cores} cores, Node ${m.node} (${m.platform}, load avg before ${m.loadavgBefore.map((x) => x.toFixed(2)).join(' ')}).`);
  out.push(
    `${r.smoke ? `${SMOKE_REQUESTS} requests per point, no warm-up` : `${s.seconds} s per point after ${s.warmupSeconds} s of warm-up`}; each server in its own child process, load from autocannon in the bench process, everything on 127.0.0.1. ` +
      (r.idle.gaveUp
        ? `**Measured while other heavy processes were still running** (gave up waiting after ${Math.round(r.idle.waitedS)} s for \`pgrep -f '${r.idle.pattern}'\` to find nothing).`
        : `Waited ${Math.round(r.idle.waitedS)} s for \`pgrep -f '${r.idle.pattern}'\` to find nothing before measuring.`),
  );
  out.push('');
  out.push(`**Binary body: POST of ${int(s.bodyBytes)} bytes (${f(s.bodyBytes / 1024, 0)} KB) of random bytes, application/octet-stream, answered with \`{"bytes":n,"sum":…}\`**`);
  out.push('');
  out.push('| concurrency | server | req/s | p50 ms | p99 ms | MB/s | req/s vs raw | server CPU | client CPU | errors |');
  out.push('|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const row of r.binary) {
    const p = row.point;
    out.push(`| ${row.concurrency} | ${LABEL[row.server]} | ${int(p.throughput)} | ${f(p.latency.p50, 3)} | ${f(p.latency.p99, 3)} | ${f(p.mbPerS, 0)} | ${row.server === 'raw' ? '1.00' : f(row.ratioToRaw)} | ${pct(p.serverCpuPct)} | ${pct(p.clientCpuPct)} | ${p.non2xx + p.errors + p.timeouts} |`);
  }
  out.push('');
  // Issue 16, target 4: the broker's parser (with its pool) at c=1 within 2x raw node:http's p99.
  const at1 = (k: ServerKind) => r.binary.find((x) => x.concurrency === 1 && x.server === k)?.point;
  const raw1 = at1('raw');
  const ours1 = at1('fastify-raw');
  if (raw1 && ours1) {
    const ratio = ours1.latency.p99 / raw1.latency.p99;
    out.push(`Target (issue 16, 4): (c) p99 at concurrency 1 within 2× raw node:http's: ${ratio <= 2 ? '**pass**' : '**FAIL**'} (${f(ours1.latency.p99, 3)} vs ${f(raw1.latency.p99, 3)} ms, ${f(ratio)}×).`);
    out.push('');
  }
  out.push(`**Small body: ${s.smallBytes}-byte JSON POST answered with a ${s.smallReplyBytes}-byte JSON, concurrency ${s.smallConcurrency}**`);
  out.push('');
  out.push('| concurrency | server | req/s | p50 ms | p99 ms | MB/s | req/s vs raw | server CPU | client CPU | errors |');
  out.push('|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const row of r.small) {
    const p = row.point;
    const label = SMALL_LABEL[row.server] ?? row.server;
    out.push(`| ${row.concurrency} | ${label} | ${int(p.throughput)} | ${f(p.latency.p50, 3)} | ${f(p.latency.p99, 3)} | ${f(p.mbPerS, 2)} | ${row.server === 'raw' ? '1.00' : f(row.ratioToRaw)} | ${pct(p.serverCpuPct)} | ${pct(p.clientCpuPct)} | ${p.non2xx + p.errors + p.timeouts} |`);
  }
  out.push('');
  out.push(
    'MB/s = request-body bytes per second (10⁶ bytes). req/s vs raw = req/s of the row / req/s of raw node:http at the same concurrency. ' +
      'Server CPU = server process CPU time / wall time, client CPU = the same for the load generator (100 % = one core; the machine has ' +
      `${m.cores}). p50/p99 are exact, from every response time.`,
  );
  out.push('');
  out.push(`(d) express ${r.express.version} with its defaults (ETag, X-Powered-By), as an application written with it would run; a devDependency of this bench only.`);
  return out.join('\n') + '\n';
}

const MARK_START = '<!-- bench-http:start -->';
const MARK_END = '<!-- bench-http:end -->';

async function updateReadme(readme: string, md: string): Promise<string> {
  if (!existsSync(readme)) return `${path.relative(ROOT, readme)} does not exist: add a section with ${MARK_START} … ${MARK_END} to have these results inserted.`;
  const text = await readFile(readme, 'utf8');
  const a = text.indexOf(MARK_START);
  const b = a < 0 ? -1 : text.indexOf(MARK_END, a + MARK_START.length);
  if (a < 0 || b < 0) return `${path.relative(ROOT, readme)} has no ${MARK_START} … ${MARK_END} markers: left unchanged.`;
  const next = text.slice(0, a + MARK_START.length) + '\n' + md + text.slice(b);
  if (next !== text) await writeFile(readme, next);
  return `${path.relative(ROOT, readme)}: bench-http section updated.`;
}

async function main(cleanups: Cleanups): Promise<void> {
  const cpus = os.cpus();
  log(SMOKE ? `smoke run: ${SMOKE_REQUESTS} requests per point, nothing written` : `${SECONDS} s per point, warm-up ${WARMUP} s, body ${BODY_BYTES} bytes`);
  const idle = IDLE_WAIT_S > 0 ? await waitForIdle() : { waitedS: 0, gaveUp: false, busyWith: '' };
  const loadavgBefore = os.loadavg();

  const bin = randomBytes(BODY_BYTES);
  const servers = new Map<ServerKind, Server>();
  for (const kind of KINDS) {
    const s = await startServer(kind, cleanups);
    await check(s, bin);
    servers.set(kind, s);
    log(`${kind} server ready at ${s.url} (pid ${s.handle.child.pid})`);
  }
  const srv = (k: ServerKind) => servers.get(k)!;

  if (!SMOKE) {
    log('global warm-up');
    for (const kind of KINDS) {
      await runBinaryPoint(srv(kind).url + BIN_PATH, bin, 16, WARMUP * 2);
      await runHttpPoint({ url: srv(kind).url + SMALL_PATH, body: smallBody, connections: 16, seconds: WARMUP });
    }
  }

  const binary: BinRow[] = [];
  for (const c of BIN_CONCURRENCY) {
    const rows: BinRow[] = [];
    for (const kind of KINDS) {
      log(`binary c=${c}: ${kind}`);
      const s = srv(kind);
      const p = await measure(s, (secs) => runBinaryPoint(s.url + BIN_PATH, bin, c, secs), BODY_BYTES);
      log(`  ${int(p.throughput)} req/s, p50 ${f(p.latency.p50, 3)} ms, p99 ${f(p.latency.p99, 3)} ms, ${f(p.mbPerS, 0)} MB/s, server CPU ${pct(p.serverCpuPct)}`);
      rows.push({ concurrency: c, server: kind, point: p, ratioToRaw: NaN });
    }
    const raw = rows.find((r) => r.server === 'raw')!.point.throughput;
    for (const r of rows) r.ratioToRaw = r.point.throughput / raw;
    binary.push(...rows);
  }

  const small: SmallRow[] = [];
  for (const kind of SMALL_KINDS) {
    log(`small c=${SMALL_CONCURRENCY}: ${kind}`);
    const s = srv(kind);
    const p = await measure(s, (secs) => runHttpPoint({ url: s.url + SMALL_PATH, body: smallBody, connections: SMALL_CONCURRENCY, seconds: secs, amount: SMOKE ? SMOKE_REQUESTS : undefined }), SMALL_BYTES);
    log(`  ${int(p.throughput)} req/s, p50 ${f(p.latency.p50, 3)} ms, p99 ${f(p.latency.p99, 3)} ms, server CPU ${pct(p.serverCpuPct)}`);
    small.push({ concurrency: SMALL_CONCURRENCY, server: kind, point: p, ratioToRaw: NaN });
  }
  const smallRaw = small[0].point.throughput;
  for (const r of small) r.ratioToRaw = r.point.throughput / smallRaw;

  const result: Result = {
    date: new Date().toISOString(),
    machine: { cpu: cpus[0]?.model.trim() ?? 'unknown', cores: cpus.length, node: process.version, platform: `${os.platform()} ${os.release()}`, loadavgBefore, loadavgAfter: os.loadavg() },
    settings: { seconds: SECONDS, warmupSeconds: WARMUP, bodyBytes: BODY_BYTES, binConcurrency: BIN_CONCURRENCY, smallConcurrency: SMALL_CONCURRENCY, smallBytes: Buffer.byteLength(smallBody), smallReplyBytes: SMALL_REPLY_BYTES },
    idle: { pattern: IDLE_PATTERN, ...idle },
    binary,
    small,
    express: { version: (JSON.parse(await readFile(require.resolve('express/package.json'), 'utf8')) as { version: string }).version },
    smoke: SMOKE,
  };
  const md = toMarkdown(result);
  process.stdout.write(md);
  if (SMOKE) {
    // A smoke run writes nothing (its figures are not a measurement) and fails on any failed request.
    const failed = [...binary, ...small].filter((r) => r.point.ok === 0 || r.point.non2xx + r.point.errors + r.point.timeouts > 0);
    if (failed.length) throw new Error(`requests failed: ${failed.map((r) => `${r.server} c=${r.concurrency}`).join(', ')}`);
    return;
  }
  const dir = path.join(ROOT, 'bench', 'results');
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'http-body.json'), JSON.stringify(result, null, 2) + '\n');
  await writeFile(path.join(dir, 'http-body.md'), `# node:http vs. fastify, big request bodies — latest run\n\n${md}`);
  log('wrote bench/results/http-body.json and bench/results/http-body.md');
  log(await updateReadme(path.join(ROOT, 'README.md'), md));
}

if (require.main === module) {
  if (process.argv[2] === 'serve') {
    serve(process.argv[3] ?? '').catch((e: Error) => {
      process.stderr.write(`${e.stack ?? e.message}\n`);
      process.exit(1);
    });
  } else {
    runMain(main, log);
  }
}
