/**
 * JobService: accepts jobs (submit, follow, fetch, cancel) and runs them with
 * one ModelWorker per model of the broker. Jobs and results live in Redis
 * (streams + hashes, see keys.ts); inputs and results above `inlineMaxBytes`
 * go to the blob store. It depends on the broker's infer() and a read-only
 * queue depth only (JobBroker), like a bridge.
 */
import { randomBytes } from 'node:crypto';
import Redis from 'ioredis';
import type { Logger } from 'pino';
import { BrokerError } from '../core/errors';
import { BacklogReporter, type BacklogSink } from './backlog';
import type { BlobStore } from './blob-store';
import { NO_RESERVE, type LiveReserve } from './capacity';
import { decodeTensors, encodeTensors } from './codec';
import { GROUP, JobKeys } from './keys';
import { CANCEL, EXPIRE, SUBMIT } from './scripts';
import {
  FINAL_STATUSES, JOB_PRIORITIES, NDJSON, type JobBroker, type JobPriority, type JobResult, type JobsApi, type JobStatus,
  type JobPage, type JobView, type ListQuery, type QueueInfo, type SubmitJob, type VideoJobRunner, JOB_STATUSES,
} from './types';
import { ModelWorker, type WorkerContext } from './worker';
import { JobEvents } from './events';
import { WebhookDispatcher, type WebhookOptions } from './webhooks';

export interface JobServiceOptions {
  redisUrl: string;
  /** The broker's key prefix; the service adds 'jobs:'. */
  prefix: string;
  broker: JobBroker;
  blobs: BlobStore;
  logger: Logger;
  /** This service's consumer name in the streams' group (unique per process). */
  consumer?: string;
  /** A running job whose worker sent no heartbeat for this long is reclaimed by another worker. Default 30 s. */
  leaseMs?: number;
  /** How long a finished job's result is kept. Default 24 h. */
  resultTtlMs?: number;
  /** Default ttl_seconds (time allowed in the queue). Default 24 h. */
  defaultTtlSeconds?: number;
  defaultMaxAttempts?: number;
  /** A hard cap on jobs in flight per model and process. Default 0: none, jobs take their share of capacity (capacity.ts). */
  maxInFlight?: number;
  /** The share of each model's capacity kept for live traffic. Default 0: jobs use what live traffic leaves idle. */
  liveReserve?: LiveReserve;
  /** Live traffic counts as active this long after its last request: no job-only batch meanwhile. Default 100 ms. */
  liveIdleMs?: number;
  /** Entries kept in each model's dead-letter stream. Default 10,000. */
  deadMaxLen?: number;
  /** Told every backlogIntervalMs how many jobs wait per model (the autoscaler counts them). */
  onBacklog?: BacklogSink;
  /** Default 1000 ms. */
  backlogIntervalMs?: number;
  /** Entries per model stream (waiting + running) beyond which a submit is refused with 429. Default 100,000. */
  maxQueued?: number;
  /** Inputs and results larger than this go to the blob store. Default 256 KiB. */
  inlineMaxBytes?: number;
  /** Run workers (false: this process only accepts and answers jobs). Default true. */
  workers?: boolean;
  /** Webhooks of finished jobs (allow-list, secrets, retries): jobs/webhooks.ts. */
  webhooks?: WebhookOptions;
  /** Runs video jobs (a bridge's decoder, injected by the app); without one a video job fails (UNIMPLEMENTED). */
  video?: VideoJobRunner;
  /**
   * Consumers of a model's group that hold no entry and read nothing for this
   * long are removed: processes that are gone (each joins with a new name).
   * Default 1 h, at least 10 leases.
   */
  consumerIdleMs?: number;
}

const MAX_TTL_S = 30 * 24 * 3600;
const MAX_ATTEMPTS = 10;
const MAX_METADATA_BYTES = 4096;
/** How long a finished job's record outlives its result, so a late fetch gets 410 rather than 404. */
const TOMBSTONE_MS = 24 * 3600 * 1000;
const VIEW_FIELDS = ['id', 'status', 'model', 'version', 'priority', 'attempts', 'max_attempts', 'created_at', 'expires_at', 'started_at',
  'finished_at', 'result_expires_at', 'last_error', 'error_code', 'metadata', 'reply', 'result_blob', 'result_version', 'result_ttl_ms',
  'webhook_url', 'webhook_state', 'webhook_attempts', 'webhook_last_status', 'video', 'result_type'] as const;
const ID = /^[A-Za-z0-9_-]{22}$/;

const invalid = (msg: string) => new BrokerError('INVALID_ARGUMENT', msg);
const iso = (ms: string | undefined) => (ms === undefined || ms === '' ? undefined : new Date(Number(ms)).toISOString());

export class JobService implements JobsApi {
  readonly keys: JobKeys;
  private readonly redis: Redis;
  private readonly log: Logger;
  private readonly workers = new Map<string, ModelWorker>();
  private readonly ctx: WorkerContext;
  private syncTimer?: NodeJS.Timeout;
  private sweepTimer?: NodeJS.Timeout;
  private backlog?: BacklogReporter;
  private stopped = false;
  readonly leaseMs: number;
  readonly resultTtlMs: number;
  private readonly defaultTtlS: number;
  private readonly defaultMaxAttempts: number;
  private readonly maxQueued: number;
  private readonly inlineMaxBytes: number;
  private readonly events: JobEvents;
  readonly webhooks: WebhookDispatcher;

  constructor(private readonly opts: JobServiceOptions) {
    this.keys = new JobKeys(`${opts.prefix}jobs:`);
    this.log = opts.logger.child({ component: 'jobs' });
    this.redis = new Redis(opts.redisUrl, { maxRetriesPerRequest: 2 });
    this.redis.on('error', (err) => this.log.warn({ err }, 'redis connection error'));
    this.leaseMs = opts.leaseMs ?? 30_000;
    this.resultTtlMs = opts.resultTtlMs ?? 24 * 3600 * 1000;
    this.defaultTtlS = opts.defaultTtlSeconds ?? 24 * 3600;
    this.defaultMaxAttempts = opts.defaultMaxAttempts ?? 3;
    this.maxQueued = opts.maxQueued ?? 100_000;
    this.inlineMaxBytes = opts.inlineMaxBytes ?? 256 * 1024;
    this.events = new JobEvents(opts.redisUrl, `${this.keys.base}events`, this.log);
    this.ctx = {
      redis: this.redis,
      events: this.events,
      redisUrl: opts.redisUrl,
      keys: this.keys,
      broker: opts.broker,
      blobs: opts.blobs,
      log: this.log,
      consumer: opts.consumer ?? `c-${randomBytes(6).toString('hex')}`,
      leaseMs: this.leaseMs,
      resultTtlMs: this.resultTtlMs,
      tombstoneMs: TOMBSTONE_MS,
      maxInFlight: opts.maxInFlight ?? 0,
      liveReserve: opts.liveReserve ?? NO_RESERVE,
      liveIdleMs: opts.liveIdleMs ?? 100,
      inlineMaxBytes: this.inlineMaxBytes,
      deadMaxLen: opts.deadMaxLen ?? 10_000,
      video: opts.video,
      consumerIdleMs: opts.consumerIdleMs ?? Math.max(3600_000, 10 * this.leaseMs),
    };
    this.webhooks = new WebhookDispatcher({ redis: this.redis, dueKey: `${this.keys.base}webhooks`, jobKey: (id) => this.keys.job(id), log: this.log.child({ part: 'webhooks' }) }, opts.webhooks ?? {});
  }

  /** Starts a worker per model of the broker (followed as models come and go). */
  start(): void {
    if (this.opts.onBacklog && !this.backlog) {
      this.backlog = new BacklogReporter(this, () => this.opts.broker.models().map((m) => m.name), this.opts.onBacklog,
        this.opts.backlogIntervalMs ?? 1000, this.log);
      this.backlog.start();
    }
    if (this.opts.workers === false) return;
    if (!this.webhooks.policy.empty) this.webhooks.start();
    const sync = () => {
      if (this.stopped) return;
      const names = new Set(this.opts.broker.models().map((m) => m.name));
      for (const name of names) {
        if (this.workers.has(name)) continue;
        const w = new ModelWorker(this.ctx, name);
        this.workers.set(name, w);
        w.start();
      }
      for (const [name, w] of this.workers) {
        if (names.has(name)) continue;
        this.workers.delete(name);
        void w.stop();
      }
    };
    sync();
    this.syncTimer = setInterval(sync, 1000);
    this.syncTimer.unref();
    const sweep = () => this.opts.blobs.sweep(this.resultTtlMs + TOMBSTONE_MS)
      .catch((err: unknown) => this.log.warn({ err }, 'sweeping old blobs failed'));
    this.sweepTimer = setInterval(sweep, 3600_000);
    this.sweepTimer.unref();
  }

  /**
   * Stops the workers: running attempts are abandoned without a verdict (their
   * stream entries stay pending, and another worker reclaims them after the
   * lease, as after a crash). Then closes the Redis connections.
   */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.syncTimer);
    clearInterval(this.sweepTimer);
    this.backlog?.stop();
    await Promise.all([...this.workers.values()].map((w) => w.stop()));
    await this.webhooks.stop();
    this.workers.clear();
    this.events.close();
    this.redis.disconnect();
  }

  async submit(job: SubmitJob): Promise<{ job: JobView; replayed: boolean }> {
    const priority: JobPriority = job.priority ?? 'normal';
    if (!JOB_PRIORITIES.includes(priority)) throw invalid(`priority must be one of ${JOB_PRIORITIES.join(', ')} (got '${String(priority)}')`);
    const ttlS = job.ttlSeconds ?? this.defaultTtlS;
    if (!(ttlS > 0 && ttlS <= MAX_TTL_S)) throw invalid(`ttl_seconds must be a number in (0, ${MAX_TTL_S}]`);
    const timeoutS = job.timeoutSeconds;
    if (timeoutS !== undefined && !(timeoutS > 0 && timeoutS <= MAX_TTL_S)) throw invalid(`timeout_seconds must be a number in (0, ${MAX_TTL_S}]`);
    const maxAttempts = job.maxAttempts ?? this.defaultMaxAttempts;
    if (!Number.isInteger(maxAttempts) || maxAttempts < 1 || maxAttempts > MAX_ATTEMPTS) throw invalid(`max_attempts must be an integer from 1 to ${MAX_ATTEMPTS}`);
    const metadata = job.metadata === undefined ? '' : JSON.stringify(job.metadata);
    if (job.metadata !== undefined && (typeof job.metadata !== 'object' || job.metadata === null || Array.isArray(job.metadata))) throw invalid('metadata must be a JSON object');
    if (Buffer.byteLength(metadata) > MAX_METADATA_BYTES) throw invalid(`metadata must be at most ${MAX_METADATA_BYTES} bytes of JSON`);
    const idem = job.idempotencyKey;
    if (idem !== undefined && !/^[\x21-\x7e]{1,255}$/.test(idem)) throw invalid('the Idempotency-Key must be 1 to 255 visible ASCII characters');

    let webhook: string | undefined;
    if (job.webhookUrl !== undefined) {
      if (!this.webhooks.secretFor(job.model)) throw invalid(`webhooks need a signing secret, and none is configured for model '${job.model}' (jobs.webhooks.secret, TB_JOBS_WEBHOOK_SECRET)`);
      webhook = (await this.webhooks.policy.check(job.webhookUrl)).href;
    }

    const video = job.video;
    if (video && job.inputs.length > 0) throw invalid('a job takes tensors or a video, not both');

    // A video is stored before the submit script runs: answer what it would answer without storing it first.
    if (video) {
      const early = await this.answerBeforeUpload(job.model, priority, idem);
      if (early) return early;
    }

    const id = randomBytes(16).toString('base64url'); // 128 random bits
    const now = Date.now();
    // A video goes to the blob store as it arrives (its size bounded by the bridge); tensors inline when small.
    const input = video ? Buffer.alloc(0) : encodeTensors(job.inputs);
    const blob = video || input.length > this.inlineMaxBytes ? `${id}.input` : '';
    if (video) await this.opts.blobs.putStream(blob, video.stream);
    else if (blob) await this.opts.blobs.put(blob, input);
    const fields: (string | Buffer)[] = [
      'id', id, 'model', job.model, 'version', job.version ?? '', 'status', 'queued', 'priority', priority,
      'created_at', String(now), 'expires_at', String(now + ttlS * 1000), 'max_attempts', String(maxAttempts), 'attempts', '0',
      'timeout_ms', timeoutS === undefined ? '' : String(Math.ceil(timeoutS * 1000)), 'metadata', metadata,
      'result_ttl_ms', String(this.resultTtlMs),
      'reply', job.reply ? JSON.stringify(job.reply) : '', 'outputs', job.outputs ? JSON.stringify(job.outputs) : '',
      ...(blob ? ['input_blob', blob] : ['input', input]),
      ...(video ? ['video', JSON.stringify({ content_type: video.contentType, options: video.options })] : []),
      ...(webhook ? ['webhook_url', webhook, 'webhook_state', 'pending', 'webhook_attempts', '0'] : []),
    ];
    const ttlMs = ttlS * 1000;
    let r: string[];
    try {
      r = (await this.redis.eval(SUBMIT, 4,
        this.keys.idem(job.model, idem ?? ''), this.keys.job(id), this.keys.stream(job.model, priority), this.keys.index,
        idem ? '1' : '0', String(ttlMs + this.resultTtlMs), String(this.maxQueued), id, this.keys.jobPrefix,
        String(ttlMs + this.resultTtlMs + TOMBSTONE_MS), String(now), ...fields)) as string[];
    } catch (e) {
      if (blob) await this.opts.blobs.delete(blob); // not queued: nothing of it is kept
      throw e;
    }
    if (r[0] !== 'new' && blob) await this.opts.blobs.delete(blob);
    if (r[0] === 'full') {
      throw this.queueFull(job.model, priority);
    }
    if (r[0] === 'existing') return { job: await this.get(r[1]), replayed: true };
    this.log.debug({ job: id, model: job.model, priority }, 'job queued');
    this.workers.get(job.model)?.wake();
    return { job: await this.get(id), replayed: false };
  }

  /**
   * A replayed Idempotency-Key, or a full queue, known before an upload is
   * read. The submit script checks both again, atomically, after the upload
   * (two submits racing with one key still make one job).
   */
  private async answerBeforeUpload(model: string, priority: JobPriority, idem: string | undefined): Promise<{ job: JobView; replayed: true } | undefined> {
    if (idem) {
      const existing = await this.redis.get(this.keys.idem(model, idem));
      if (existing && (await this.redis.exists(this.keys.job(existing))) === 1) return { job: await this.get(existing), replayed: true };
    }
    if ((await this.redis.xlen(this.keys.stream(model, priority))) >= this.maxQueued) {
      throw this.queueFull(model, priority);
    }
    return undefined;
  }

  private queueFull(model: string, priority: JobPriority): BrokerError {
    return new BrokerError('RESOURCE_EXHAUSTED', `the ${priority} job queue of model '${model}' is full (${this.maxQueued} jobs)`, { retryAfterMs: 5000, kind: 'overloaded' });
  }

  async get(id: string): Promise<JobView> {
    return view(await this.fields(id));
  }

  async result(id: string): Promise<JobResult> {
    const f = await this.fields(id);
    const job = view(f);
    switch (job.status) {
      case 'queued':
      case 'running':
        return { state: 'pending', job };
      case 'failed':
        return { state: 'failed', job, code: f.error_code || 'INTERNAL', message: f.last_error || 'the job failed' };
      case 'cancelled':
        return { state: 'gone', job, reason: `job '${id}' was cancelled: it has no result` };
      case 'expired':
        return { state: 'gone', job, reason: `job '${id}' expired in the queue (ttl_seconds) and was never run` };
      case 'succeeded': {
        const keptS = Math.round(Number(f.result_ttl_ms || this.resultTtlMs) / 1000);
        const expired = { state: 'gone' as const, job, reason: `the result of job '${id}' expired (results are kept ${keptS} s)` };
        if (Date.now() > Number(f.result_expires_at)) return expired;
        const data = f.result_blob ? await this.opts.blobs.get(f.result_blob) : await this.redis.getBuffer(this.keys.result(id));
        if (!data) return expired;
        if (f.result_type === NDJSON) return { state: 'succeeded', job, ndjson: data };
        const reply = f.reply ? (JSON.parse(f.reply) as Record<string, unknown>) : undefined;
        return { state: 'succeeded', job, result: { id, model: f.model, version: f.result_version || f.version, outputs: decodeTensors(data) }, reply };
      }
    }
  }

  async cancel(id: string): Promise<JobView> {
    this.checkId(id);
    const r = (await this.redis.eval(CANCEL, 1, this.keys.job(id), String(Date.now()), String(this.resultTtlMs + TOMBSTONE_MS))) as string | null;
    if (r === null) throw this.notFound(id);
    return this.get(id);
  }

  async queue(model: string): Promise<QueueInfo> {
    const depth = {} as Record<JobPriority, number>;
    let running = 0;
    let oldest = Infinity;
    for (const p of JOB_PRIORITIES) {
      const key = this.keys.stream(model, p);
      // Entries are deleted when acknowledged: a stream holds waiting entries plus pending (running) ones.
      const len = await this.redis.xlen(key);
      const pending = len === 0 ? 0 : Number(((await this.redis.xpending(key, GROUP).catch(() => [0])) as unknown[])[0]) || 0;
      depth[p] = Math.max(0, len - pending);
      running += pending;
      if (len === 0) continue;
      const first = (await this.redis.xrange(key, '-', '+', 'COUNT', 1)) as [string, string[]][];
      if (first.length > 0) oldest = Math.min(oldest, Number(first[0][0].split('-')[0]));
    }
    return {
      model, depth, running,
      oldest_age_seconds: oldest === Infinity ? 0 : Math.max(0, (Date.now() - oldest) / 1000),
      dead_lettered: await this.redis.xlen(this.keys.dead(model)),
    };
  }

  async list(q: ListQuery): Promise<JobPage> {
    const limit = q.limit ?? 100;
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw invalid('limit must be an integer from 1 to 1000');
    if (q.status !== undefined && !JOB_STATUSES.includes(q.status)) throw invalid(`status must be one of ${JOB_STATUSES.join(', ')}`);
    // The cursor is "<score>.<id>" of the last job returned: ties on one millisecond are ordered by id.
    let max = '+inf';
    let after: { score: number; id: string } | undefined;
    if (q.cursor !== undefined) {
      const m = /^(\d+)\.([A-Za-z0-9_-]{22})$/.exec(q.cursor);
      if (!m) throw invalid('cursor is not one this server returned');
      after = { score: Number(m[1]), id: m[2] };
      max = m[1];
    }
    const jobs: JobView[] = [];
    const batch = 200;
    let offset = 0;
    let last: { score: number; id: string } | undefined;
    for (let scanned = 0; jobs.length < limit && scanned < 10_000;) {
      const raw = await this.redis.zrevrangebyscore(this.keys.index, max, '-inf', 'WITHSCORES', 'LIMIT', offset, batch);
      if (raw.length === 0) return { jobs };
      offset += raw.length / 2;
      for (let i = 0; i < raw.length && jobs.length < limit; i += 2) {
        const id = raw[i];
        const score = Number(raw[i + 1]);
        scanned++;
        // Equal scores come in reverse id order: skip what the previous page already gave.
        if (after && score === after.score && id >= after.id) continue;
        last = { score, id };
        let v: JobView;
        try {
          v = await this.get(id);
        } catch {
          await this.redis.zrem(this.keys.index, id); // forgotten after its retention
          offset--;
          continue;
        }
        if ((q.model === undefined || v.model === q.model) && (q.status === undefined || v.status === q.status)) jobs.push(v);
      }
      if (raw.length < batch * 2 && jobs.length < limit) return { jobs };
    }
    return { jobs, next_cursor: last ? `${last.score}.${last.id}` : undefined };
  }

  watch(id: string, signal?: AbortSignal): AsyncIterable<JobView> {
    return this.events.watch(id, (j) => this.get(j), signal);
  }

  /** The job's fields, after turning a queued job past its ttl into expired. */
  private async fields(id: string): Promise<Record<string, string>> {
    this.checkId(id);
    const key = this.keys.job(id);
    await this.redis.eval(EXPIRE, 1, key, String(Date.now()));
    // Named fields only: the inline input is binary and large.
    const values = await this.redis.hmget(key, ...VIEW_FIELDS);
    if (!values[1]) throw this.notFound(id);
    return Object.fromEntries(VIEW_FIELDS.map((k, i) => [k, values[i] ?? ''])) as Record<string, string>;
  }

  private checkId(id: string): void {
    if (!ID.test(id)) throw this.notFound(id);
  }

  private notFound(id: string): BrokerError {
    return new BrokerError('NOT_FOUND', `unknown job '${id}' (never submitted, or forgotten after its result expired)`);
  }
}

function view(f: Record<string, string>): JobView {
  const v: JobView = {
    id: f.id, model: f.model, status: f.status as JobStatus, priority: f.priority as JobPriority,
    attempts: Number(f.attempts), max_attempts: Number(f.max_attempts),
    created_at: iso(f.created_at)!, expires_at: iso(f.expires_at)!,
  };
  if (f.version) v.version = f.version;
  if (f.started_at) v.started_at = iso(f.started_at);
  if (f.finished_at) v.finished_at = iso(f.finished_at);
  if (f.result_expires_at && FINAL_STATUSES.has(v.status)) v.result_expires_at = iso(f.result_expires_at);
  if (f.last_error) v.last_error = f.last_error;
  if (f.metadata) v.metadata = JSON.parse(f.metadata) as Record<string, unknown>;
  if (f.video) v.video = JSON.parse(f.video) as NonNullable<JobView['video']>;
  if (f.webhook_url) {
    v.webhook = { state: (f.webhook_state || 'pending') as NonNullable<JobView['webhook']>['state'], attempts: Number(f.webhook_attempts || 0) };
    if (f.webhook_last_status) v.webhook.last_status = f.webhook_last_status;
  }
  return v;
}
