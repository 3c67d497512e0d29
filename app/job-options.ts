/**
 * The options-table rows of asynchronous jobs (jobs/README.md), spread into
 * OPTIONS (app/config.ts): flag, env variable, default, parser, help.
 * `BrokerConfig.jobs` (embedders, tests) overrides them field by field.
 */
import { parseLiveReserve } from '../jobs/capacity';

function whole(min: number, max = Infinity) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new Error(`'${v}' is not a whole number in [${min}, ${max === Infinity ? '∞' : max}]`);
    return n;
  };
}

function positive(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`'${v}' is not a positive number`);
  return n;
}

function onOff(v: string): boolean {
  if (/^(1|true|yes|on)$/i.test(v)) return true;
  if (/^(0|false|no|off)$/i.test(v)) return false;
  throw new Error(`'${v}' is not a boolean (true or false)`);
}

/** Checked here, parsed again where the service is built (the table keeps it a string for --help). */
function liveReserve(v: string): string {
  parseLiveReserve(v);
  return v;
}

export const JOB_OPTIONS = {
  jobsLeaseMs: ['--jobs-lease-ms <ms>', 'TB_JOBS_LEASE_MS', 30_000, positive, 'a running job whose broker sent no heartbeat for this long is taken over and retried (heartbeats every lease/3)'],
  jobsResultTtlS: ['--jobs-result-ttl-s <s>', 'TB_JOBS_RESULT_TTL_S', 24 * 3600, positive, 'result_ttl: how long a finished job\'s result is kept (then 410; the record a further 24 h)'],
  jobsDefaultTtlS: ['--jobs-default-ttl-s <s>', 'TB_JOBS_DEFAULT_TTL_S', 24 * 3600, positive, 'ttl_seconds of a job that gives none: time allowed in the queue before it expires unrun'],
  jobsMaxAttempts: ['--jobs-max-attempts <n>', 'TB_JOBS_MAX_ATTEMPTS', 3, whole(1, 10), 'max_attempts of a job that gives none (retries happen for a lost copy or worker, or a timeout)'],
  jobsMaxQueued: ['--jobs-max-queued <n>', 'TB_JOBS_MAX_QUEUED', 100_000, whole(1), 'entries per model and priority stream (waiting + running) beyond which a submit gets 429: bounds Redis memory'],
  jobsDeadMaxLen: ['--jobs-dead-max-len <n>', 'TB_JOBS_DEAD_MAX_LEN', 10_000, whole(1), 'dead letters kept per model (the stream is trimmed to this length)'],
  jobsLiveReserve: ['--jobs-live-reserve <share>', 'TB_JOBS_LIVE_RESERVE', '0', liveReserve, 'share of each model\'s capacity jobs never take, kept for live traffic: 0.25, or per model 0.25,ocr=0.5 (0 = jobs use idle capacity)'],
  jobsLiveIdleMs: ['--jobs-live-idle-ms <ms>', 'TB_JOBS_LIVE_IDLE_MS', 100, whole(0), 'live traffic counts as active this long after its last request: jobs then only join batches with live requests, never make one of their own'],
  jobsMaxInFlight: ['--jobs-max-in-flight <n>', 'TB_JOBS_MAX_IN_FLIGHT', 0, whole(0), 'hard cap on jobs in flight per model and broker (0 = by capacity and the live reserve only)'],
  jobsInlineMaxBytes: ['--jobs-inline-max-bytes <bytes>', 'TB_JOBS_INLINE_MAX_BYTES', 256 * 1024, whole(0), 'job inputs and results larger than this go to the blob folder instead of Redis'],
  jobsBlobDir: ['--jobs-blob-dir <dir>', 'TB_JOBS_BLOB_DIR', '', String, 'folder of large job inputs and results, shared by the brokers of one Redis (default <tmp>/tensorbroker-jobs/<broker-id>, not durable across reboots)'],
  jobsWorkers: ['--jobs-workers <bool>', 'TB_JOBS_WORKERS', true, onOff, 'run jobs in this broker (false: it accepts and answers jobs, other brokers run them)'],
} as const;
