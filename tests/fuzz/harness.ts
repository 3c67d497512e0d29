/**
 * A small property-based fuzz runner, the same for every bridge. A target
 * says how to generate requests (a fast-check arbitrary, usually valid
 * requests plus mutations of them), how to send one and read the outcome,
 * and how to check that the broker still serves. The runner sends the cases
 * with a little concurrency, counts outcomes, keeps the first failures, and
 * samples the broker's RSS throughout.
 *
 * Properties checked for every case: an answer comes (no hang, no dropped
 * connection), and it is a success or a client error (4xx, gRPC client codes),
 * never a server error. After the run: the broker still serves, and its RSS
 * grew by less than a bound. Used by tests/fuzz/*.fuzz.test.ts (a few
 * thousand cases per CI run) and by `npm run fuzz` (bench/fuzz.ts, 100,000
 * per bridge).
 */
import fc from 'fast-check';

/**
 * ok: a success. client-error: a refusal the client caused (HTTP 4xx, a gRPC
 * client code, a ZeroMQ error reply of a client kind). deadline: the
 * deadline the request itself set passed (504 / DEADLINE_EXCEEDED).
 * model-error: the model itself failed the request (500 "model error: ...",
 * INTERNAL with that text), as the broker must report it; the example
 * identity model, for one, answers only the outputs of the inputs it got.
 * server-error, hang, dropped: failures of the broker. not-sent: the client
 * library refused the request before sending (not counted against the broker).
 */
export type Outcome = 'ok' | 'client-error' | 'deadline' | 'model-error' | 'server-error' | 'hang' | 'dropped' | 'not-sent';

export const OUTCOMES: Outcome[] = ['ok', 'client-error', 'deadline', 'model-error', 'server-error', 'hang', 'dropped', 'not-sent'];

/** Outcomes that break a property. */
export const FAILURES: ReadonlySet<Outcome> = new Set<Outcome>(['server-error', 'hang', 'dropped']);

export interface Sent {
  outcome: Outcome;
  /** The protocol's status (HTTP status, gRPC code name, ...), for the report. */
  status?: string;
  detail?: string;
}

export interface FuzzTarget<Req> {
  name: string;
  requests: fc.Arbitrary<Req>;
  /** Sends one request; resolves with its outcome; `hangMs` is how long an answer may take. */
  send(req: Req, hangMs: number): Promise<Sent>;
  /** A short description of a request for reports (bounded: bodies may be megabytes). */
  describe(req: Req): string;
  /** True when the broker answers a known-good request correctly. */
  stillServing(): Promise<boolean>;
}

export interface FuzzOptions {
  runs: number;
  seed?: number;
  /** Requests in flight at once. Default 4. */
  concurrency?: number;
  /** An answer slower than this is a hang. Default 15 s. */
  hangMs?: number;
  /** The broker's resident memory in bytes (sampled during the run). */
  rss?: () => number | undefined;
  /** Called every `progressEvery` cases with the report so far. */
  onProgress?: (r: FuzzReport) => void;
  progressEvery?: number;
  /** Failures kept for the report. Default 20. */
  keepFailures?: number;
}

export interface FuzzReport {
  target: string;
  seed: number;
  runs: number;
  counts: Record<Outcome, number>;
  /** Cases by protocol status, e.g. {"200": 812, "400": 2170}. */
  statuses: Record<string, number>;
  failures: { outcome: Outcome; status?: string; detail?: string; request: string }[];
  rssStartMb?: number;
  rssPeakMb?: number;
  stillServing?: boolean;
  ms: number;
}

const mb = (bytes: number | undefined) => (bytes === undefined ? undefined : Math.round(bytes / (1024 * 1024)));

/** Runs `opts.runs` generated cases against `target`; never throws for a failing case (see report.failures). */
export async function runFuzz<Req>(target: FuzzTarget<Req>, opts: FuzzOptions): Promise<FuzzReport> {
  const seed = opts.seed ?? Date.now() ^ (Math.random() * 0x7fffffff);
  const concurrency = opts.concurrency ?? 4;
  const hangMs = opts.hangMs ?? 15_000;
  const keep = opts.keepFailures ?? 20;
  const t0 = Date.now();
  const report: FuzzReport = {
    target: target.name,
    seed,
    runs: 0,
    counts: Object.fromEntries(OUTCOMES.map((o) => [o, 0])) as Record<Outcome, number>,
    statuses: {},
    failures: [],
    ms: 0,
  };
  const rss0 = opts.rss?.();
  let peak = rss0 ?? 0;
  report.rssStartMb = mb(rss0);

  // Cases are drawn in chunks (one fast-check sample per chunk, seeded from the run's seed), so a long run keeps little in memory.
  const chunk = 500;
  for (let done = 0; done < opts.runs; done += chunk) {
    const cases = fc.sample(target.requests, { numRuns: Math.min(chunk, opts.runs - done), seed: seed + done });
    let next = 0;
    const worker = async () => {
      while (next < cases.length) {
        const req = cases[next++];
        let sent: Sent;
        try {
          sent = await target.send(req, hangMs);
        } catch (e) {
          sent = { outcome: 'dropped', detail: (e as Error).message };
        }
        report.runs++;
        report.counts[sent.outcome]++;
        if (sent.status !== undefined) report.statuses[sent.status] = (report.statuses[sent.status] ?? 0) + 1;
        if (FAILURES.has(sent.outcome) && report.failures.length < keep) {
          report.failures.push({ outcome: sent.outcome, status: sent.status, detail: sent.detail?.slice(0, 300), request: target.describe(req) });
        }
        const rss = opts.rss?.();
        if (rss !== undefined) peak = Math.max(peak, rss);
        if (opts.onProgress && opts.progressEvery && report.runs % opts.progressEvery === 0) {
          report.ms = Date.now() - t0;
          report.rssPeakMb = mb(peak);
          opts.onProgress(report);
        }
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
  }
  report.rssPeakMb = rss0 === undefined ? undefined : mb(peak);
  report.stillServing = await target.stillServing().catch(() => false);
  report.ms = Date.now() - t0;
  return report;
}

/** One line per outcome and the busiest statuses, for logs. */
export function formatReport(r: FuzzReport): string {
  const counts = OUTCOMES.filter((o) => r.counts[o] > 0).map((o) => `${o} ${r.counts[o]}`).join(', ');
  const statuses = Object.entries(r.statuses).sort((a, b) => b[1] - a[1]).map(([s, n]) => `${s}:${n}`).join(' ');
  const rss = r.rssStartMb !== undefined ? `, RSS ${r.rssStartMb} -> peak ${r.rssPeakMb} MB` : '';
  const lines = [`${r.target}: ${r.runs} cases in ${(r.ms / 1000).toFixed(1)} s (seed ${r.seed}): ${counts}${rss}; still serving: ${r.stillServing}`, `  statuses: ${statuses}`];
  for (const f of r.failures) lines.push(`  FAIL ${f.outcome} ${f.status ?? ''} ${f.detail ?? ''}\n    ${f.request}`);
  return lines.join('\n');
}

// ---- Mutation helpers every target can use on its bytes and JSON.

/** Byte-level mutations of a valid payload: flips, cuts, insertions, repeats. */
export function mutatedBytes(base: fc.Arbitrary<Buffer>): fc.Arbitrary<Buffer> {
  return fc.tuple(base, fc.array(fc.tuple(fc.constantFrom('flip', 'cut', 'insert', 'repeat', 'truncate'), fc.nat(), fc.nat({ max: 255 })), { minLength: 1, maxLength: 4 }))
    .map(([b, ops]) => {
      let out = Buffer.from(b);
      for (const [op, at, byte] of ops) {
        if (out.length === 0) break;
        const i = at % out.length;
        if (op === 'flip') out[i] = byte;
        else if (op === 'cut') out = Buffer.concat([out.subarray(0, i), out.subarray(Math.min(out.length, i + 1 + (byte % 16)))]);
        else if (op === 'insert') out = Buffer.concat([out.subarray(0, i), Buffer.from([byte, byte ^ 0x5a]), out.subarray(i)]);
        else if (op === 'repeat') out = Buffer.concat([out.subarray(0, i), out.subarray(i, i + 32), out.subarray(i)]);
        else out = out.subarray(0, i);
      }
      return out;
    });
}

/** JSON values that stress parsers: long integer literals, deep nesting, long strings, odd numbers. */
export const nastyJsonText: fc.Arbitrary<string> = fc.oneof(
  fc.bigInt({ min: -(1n << 70n), max: 1n << 70n }).map(String),
  fc.constantFrom('1e400', '-0', '0.1e-400', '9007199254740993', '18446744073709551616', '-9223372036854775809', 'NaN', 'Infinity', 'null', 'true', '""', '"\\ud800"'),
  fc.integer({ min: 100, max: 20_000 }).map((n) => `${'['.repeat(n)}1${']'.repeat(n)}`),
  fc.integer({ min: 1000, max: 200_000 }).map((n) => JSON.stringify('x'.repeat(n))),
);
