/**
 * Health rules of the task manager, kept free of I/O: per-batch hang timeouts,
 * restart backoff, and "N failures within a window = model unavailable".
 */
import type { ModelSpec } from '../core/model-spec';
import { MAX_TIMER_MS } from '../core/timers';

/**
 * How long one batch of `rows` rows may take before its copy counts as hung:
 * batch_timeout_ms (else the time left to the batch's deadline from the core,
 * else timeout_ms) plus batch_timeout_per_row_ms per row.
 */
export function batchTimeoutMs(spec: Pick<ModelSpec, 'batch_timeout_ms' | 'batch_timeout_per_row_ms' | 'timeout_ms'>, rows: number, leftToDeadlineMs?: number): number {
  const base = spec.batch_timeout_ms ?? (leftToDeadlineMs !== undefined ? Math.max(0, leftToDeadlineMs) : spec.timeout_ms);
  // A timer beyond 2^31-1 ms would fire at once: a deadline that far is "never" for a hang check.
  return Math.min(MAX_TIMER_MS, base + spec.batch_timeout_per_row_ms * Math.max(0, rows));
}

export interface FailureRecord {
  at: number;
  message: string;
  exitCode?: number | null;
  oomKilled?: boolean;
  lastLines: string[];
}

export interface Unavailable {
  since: number;
  failures: number;
  windowMs: number;
  last: FailureRecord;
  /** One line for /ready, /admin and logs. */
  reason: string;
}

/** Failures of one model within a sliding window, and the restart backoff. */
export class FailureTracker {
  private readonly failures: FailureRecord[] = [];
  private backoff: number;
  /** Verdicts in a row that a retry (repository load) did not clear: the load backoff doubles with each. */
  private verdicts = 0;
  unavailable?: Unavailable;

  constructor(
    private readonly initialBackoffMs = 500,
    private readonly maxBackoffMs = 30_000,
  ) {
    this.backoff = initialBackoffMs;
  }

  /** Records a failure; returns the Unavailable verdict when the limit is reached. */
  record(f: FailureRecord, maxFailures: number, windowMs: number): Unavailable | undefined {
    this.failures.push(f);
    this.prune(f.at, windowMs);
    if (this.failures.length >= maxFailures && !this.unavailable) {
      this.verdicts++;
      const extra = [
        f.exitCode !== undefined && f.exitCode !== null ? `exit code ${f.exitCode}` : undefined,
        f.oomKilled ? 'OOM killed' : undefined,
      ].filter(Boolean);
      const tail = f.lastLines.filter((l) => l.trim()).slice(-3).join(' | ');
      this.unavailable = {
        since: f.at,
        failures: this.failures.length,
        windowMs,
        last: f,
        reason:
          `unavailable: ${this.failures.length} copy failures within ${windowMs} ms (max_failures ${maxFailures}); last: ${f.message}` +
          (extra.length ? ` (${extra.join(', ')})` : '') +
          (tail ? `; last log lines: ${tail}` : ''),
      };
    }
    return this.unavailable;
  }

  /**
   * When a repository load may retry an unavailable model: the load backoff
   * (initial delay doubling per verdict in a row, at least 1 s) after the verdict.
   */
  retryAt(): number {
    if (!this.unavailable) return 0;
    const delay = Math.min(this.maxBackoffMs, Math.max(1000, this.initialBackoffMs) * 2 ** Math.max(0, this.verdicts - 1));
    return this.unavailable.since + delay;
  }

  /**
   * A repository load retries an unavailable model: the verdict is lifted but the
   * failures inside the window are kept, so one more failure gives the verdict
   * again at once (one copy per retry, not max_failures).
   */
  retry(): void {
    this.unavailable = undefined;
  }

  /** Failures still inside the window. */
  count(now: number, windowMs: number): number {
    this.prune(now, windowMs);
    return this.failures.length;
  }

  get lastFailure(): FailureRecord | undefined {
    return this.failures[this.failures.length - 1];
  }

  /** The next restart delay (doubling up to the max). */
  nextDelay(): number {
    const d = this.backoff;
    this.backoff = Math.min(this.maxBackoffMs, this.backoff * 2);
    return d;
  }

  /** The delay the next restart will wait (without consuming it). */
  currentDelay(): number {
    return this.backoff;
  }

  resetBackoff(): void {
    this.backoff = this.initialBackoffMs;
  }

  /** A new spec, an operator scale, or a copy that served: forget failures and verdicts. */
  reset(): void {
    this.failures.length = 0;
    this.unavailable = undefined;
    this.verdicts = 0;
    this.backoff = this.initialBackoffMs;
  }

  private prune(now: number, windowMs: number): void {
    while (this.failures.length > 0 && now - this.failures[0].at > windowMs) this.failures.shift();
  }
}
