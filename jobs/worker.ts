/**
 * ModelWorker: drains one model's job streams (high, then normal, then low)
 * through broker.infer(), one consumer of the streams' group. It starts a job
 * only while the model has a free share of capacity (capacity.ts: jobs use
 * what live traffic leaves idle, less the live reserve), and submits it at a
 * priority below every live request, so jobs batch with each other and with
 * live requests but never go ahead of them. Running entries are kept leased
 * with XCLAIM heartbeats; entries of dead workers are taken over with
 * XAUTOCLAIM once their lease ran out.
 */
import type { Readable } from 'node:stream';
import Redis from 'ioredis';
import type { Logger } from 'pino';
import { BrokerError, toBrokerError } from '../core/errors';
import type { InferResult } from '../core/types';
import type { BlobStore } from './blob-store';
import type { JobEvents } from './events';
import { decodeTensors, encodeTensors } from './codec';
import { GROUP, type JobKeys } from './keys';
import { DROP_IDLE_CONSUMERS, FINISH, START } from './scripts';
import { jobSlots, reserveFor, type LiveReserve } from './capacity';
import { JOB_PRIORITIES, NDJSON, type JobBroker, type VideoJobRunner } from './types';

export interface WorkerContext {
  redis: Redis;
  redisUrl: string;
  /** Status changes as they happen: a running attempt hears of its job's cancel at once. */
  events?: Pick<JobEvents, 'on'>;
  keys: JobKeys;
  broker: JobBroker;
  blobs: BlobStore;
  log: Logger;
  consumer: string;
  leaseMs: number;
  resultTtlMs: number;
  /** How long a finished job's record outlives its result. */
  tombstoneMs: number;
  /** A hard cap on jobs in flight per model and process (0 = by capacity only). */
  maxInFlight: number;
  liveReserve: LiveReserve;
  /** Live traffic counts as active this long after a live request was last seen in the model. */
  liveIdleMs: number;
  inlineMaxBytes: number;
  /** Entries kept in a model's dead-letter stream (MAXLEN ~). */
  deadMaxLen: number;
  /** Runs video jobs (stateful models); none: they fail with UNIMPLEMENTED. */
  video?: VideoJobRunner;
  /** Consumers of the group holding no entry and idle this long are removed (other brokers' old processes). */
  consumerIdleMs: number;
}

/** What an attempt produced: tensors, a video's NDJSON lines, or an error. */
interface Outcome { result?: InferResult; ndjson?: Buffer; error?: BrokerError }

interface Entry { stream: string; entryId: string; jobId: string }

/** One attempt of a job, as handle() read it. */
interface Run {
  jobId: string;
  attempt: number;
  version?: string;
  timeoutMs?: number;
  inputBlob?: string;
  priority: number;
  signal: AbortSignal;
}

/** The `video` field of a job hash. */
interface StoredVideo { content_type: string; options: Record<string, string> }

/** How long to wait before looking at the live queue again while it is busy. */
const BUSY_POLL_MS = 10;
const BLOCK_MS = 1000;
/**
 * Batcher priority of a job's request (core: larger = lower; live requests
 * use 0..n, 0 being the default): below any live priority a client sends.
 */
export const JOB_BATCH_PRIORITY = 1_000_000;

/**
 * A failure worth another attempt: the copy died under the batch (with a
 * video job's sequence: it starts again on a new one), the
 * attempt timed out, or the broker was overloaded or stopping. Never a model's
 * own error on this input, nor a bad input.
 */
export function retryable(err: BrokerError): boolean {
  return err.retryable || err.kind === 'copy-lost' || err.kind === 'sequence-lost' || err.kind === 'overloaded' || err.kind === 'shutting-down' ||
    err.code === 'DEADLINE_EXCEEDED';
}

export class ModelWorker {
  private readonly streams: string[];
  private readonly log: Logger;
  private blocking?: Redis;
  private stopped = false;
  private inFlight = 0;
  private readonly running = new Map<string, { abort: AbortController; done: Promise<void> }>();
  /** Entries taken (reclaimed, or read while capacity went away) and not started yet; kept leased. */
  private readonly held: Entry[] = [];
  private wakeUp?: () => void;
  /** When a live request was last seen in the model (Date.now()). */
  private liveSeenAt = 0;
  private loop?: Promise<void>;
  private reclaimTimer?: NodeJS.Timeout;
  private consumersTimer?: NodeJS.Timeout;

  constructor(private readonly ctx: WorkerContext, readonly model: string) {
    this.streams = JOB_PRIORITIES.map((p) => ctx.keys.stream(model, p));
    this.log = ctx.log.child({ model });
  }

  start(): void {
    this.loop = this.run();
    this.reclaimTimer = setInterval(() => void this.reclaim(), Math.max(50, Math.floor(this.ctx.leaseMs / 2)));
    this.consumersTimer = setInterval(() => void this.dropIdleConsumers(this.ctx.consumerIdleMs, ''),
      Math.max(100, Math.min(60_000, Math.floor(this.ctx.consumerIdleMs / 2))));
    this.consumersTimer.unref();
  }

  /** Ends the loop; running attempts are aborted and left without a verdict (reclaimed after the lease). */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.reclaimTimer);
    clearInterval(this.consumersTimer);
    this.blocking?.disconnect();
    this.wake();
    for (const r of this.running.values()) r.abort.abort();
    await Promise.all([this.loop, ...[...this.running.values()].map((r) => r.done)]);
    // Leaving: out of the group at once, unless attempts of ours are pending (another worker reclaims them).
    await this.dropIdleConsumers(0, this.ctx.consumer);
  }

  /** Removes consumers of our streams that hold no entry and were idle at least idleMs (only `name`, if given). */
  private async dropIdleConsumers(idleMs: number, name: string): Promise<void> {
    try {
      let gone = 0;
      for (const s of this.streams) gone += Number(await this.ctx.redis.eval(DROP_IDLE_CONSUMERS, 1, s, GROUP, String(idleMs), name));
      if (gone > 0 && name === '') this.log.info({ consumers: gone, idleMs }, 'removed idle job consumers (processes gone) from the consumer group');
    } catch (err) {
      // NOGROUP before the groups exist, or Redis away: the next round tries again.
      if (!String(err).includes('NOGROUP')) this.log.debug({ err }, 'removing idle job consumers failed');
    }
  }

  /** Something changed (a job was submitted here, an attempt ended): look again now. */
  wake(): void {
    const w = this.wakeUp;
    this.wakeUp = undefined;
    w?.();
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      try {
        await this.ensureGroups();
        break;
      } catch (err) {
        this.log.warn({ err }, 'cannot create the job consumer groups; retrying');
        await this.pause(1000);
      }
    }
    while (!this.stopped) {
      try {
        if (!this.hasCapacity()) {
          await this.pause(BUSY_POLL_MS);
          continue;
        }
        const entry = this.held.shift() ?? (await this.read());
        if (!entry || this.stopped) continue;
        // Live requests may have queued while we waited on the stream: look again before starting.
        if (!this.hasCapacity()) {
          this.held.unshift(entry);
          continue;
        }
        this.launch(entry);
      } catch (err) {
        if (this.stopped) break;
        if (String(err).includes('NOGROUP')) await this.ensureGroups().catch(() => undefined);
        else this.log.warn({ err }, 'reading the job streams failed; retrying');
        await this.pause(500);
      }
    }
  }

  /** A job may start now: the model has a free share of capacity for jobs (capacity.ts). */
  private hasCapacity(): boolean {
    return this.slots() > 0;
  }

  private slots(): number {
    const l = this.ctx.broker.load().find((x) => x.model === this.model);
    const now = Date.now();
    const live = l ? l.queued + l.running - this.inFlight : 0;
    if (live > 0) this.liveSeenAt = now;
    let batchSize = 1;
    let phase = 'ready';
    let stateless = true;
    try {
      const d = this.ctx.broker.describe(this.model);
      batchSize = d.batchSize;
      phase = d.readiness.phase;
      stateless = d.stateless;
    } catch {
      // the model is going away: one at a time until the worker stops
    }
    const copies = l ? l.copies ?? 1 : 0;
    // No ready copy and not at zero (starting, restarting after a failure, failed): an attempt now would
    // only burn one of the job's attempts. Wait for a copy (the backlog asks the autoscaler for one).
    if (copies === 0 && phase !== 'at-zero') return 0;
    if (!stateless && copies > 0) return this.sequenceSlots();
    return jobSlots({
      copies, batchSize, inScheduler: l ? l.queued + l.running : 0, jobsInFlight: this.inFlight,
      liveReserve: reserveFor(this.ctx.liveReserve, this.model), maxInFlight: this.ctx.maxInFlight,
      liveRecently: now - this.liveSeenAt < this.ctx.liveIdleMs,
    });
  }

  /**
   * A stateful model runs video jobs, each holding a sequence slot for its
   * whole video: one starts only while a slot is free (live sequences and
   * those waiting for a slot first), within (1 - live reserve) of the slots.
   * Our own jobs count until their sequence holds a slot.
   */
  private sequenceSlots(): number {
    const cap = this.ctx.maxInFlight > 0 ? this.ctx.maxInFlight : Infinity;
    let s: { slots: number; active: number; backlog: number };
    try {
      s = this.ctx.broker.sequences ? this.ctx.broker.sequences(this.model) : { slots: 1, active: this.inFlight, backlog: 0 };
    } catch {
      return 0;
    }
    const jobsMax = Math.max(1, Math.floor((1 - reserveFor(this.ctx.liveReserve, this.model)) * s.slots));
    const taken = Math.max(s.active + s.backlog, this.inFlight);
    return Math.max(0, Math.min(cap - this.inFlight, jobsMax - this.inFlight, s.slots - taken));
  }

  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(() => { this.wakeUp = undefined; resolve(); }, ms);
      this.wakeUp = () => { clearTimeout(t); resolve(); };
    });
  }

  private async ensureGroups(): Promise<void> {
    for (const s of this.streams) {
      try {
        await this.ctx.redis.xgroup('CREATE', s, GROUP, '0', 'MKSTREAM');
      } catch (e) {
        if (!String(e).includes('BUSYGROUP')) throw e;
      }
    }
  }

  /** The next new entry: each stream in priority order without waiting, then a blocking read on all. */
  private async read(): Promise<Entry | undefined> {
    for (const s of this.streams) {
      const got = parseRead(await this.ctx.redis.xreadgroup('GROUP', GROUP, this.ctx.consumer, 'COUNT', 1, 'STREAMS', s, '>'));
      if (got) return got;
    }
    if (!this.blocking) {
      // Blocking reads get their own connection: they would hold up every other command on a shared one.
      this.blocking = new Redis(this.ctx.redisUrl, { maxRetriesPerRequest: 1 });
      this.blocking.on('error', () => undefined); // reported by the loop's own catch
    }
    const reply = await this.blocking.xreadgroup('GROUP', GROUP, this.ctx.consumer, 'COUNT', 1, 'BLOCK', BLOCK_MS,
      'STREAMS', ...this.streams, ...this.streams.map(() => '>'));
    return parseRead(reply);
  }

  /**
   * Keeps held entries leased, and takes over entries whose worker sent no
   * heartbeat for a lease, at most what we can run soon.
   */
  private async reclaim(): Promise<void> {
    if (this.stopped) return;
    try {
      for (const e of this.held) await this.ctx.redis.xclaim(e.stream, GROUP, this.ctx.consumer, 0, e.entryId, 'JUSTID');
      for (const s of this.streams) {
        const room = this.slots() - this.held.length;
        if (room <= 0) return;
        const r = (await this.ctx.redis.xautoclaim(s, GROUP, this.ctx.consumer, this.ctx.leaseMs, '0-0', 'COUNT', room)) as [string, [string, string[]][]];
        for (const [entryId, fields] of r[1]) {
          if (!fields) continue;
          this.log.info({ job: fields[1], entry: entryId }, 'reclaimed a job whose worker stopped answering');
          this.held.push({ stream: s, entryId, jobId: fields[1] });
        }
      }
      if (this.held.length > 0) this.wake();
    } catch (err) {
      if (!this.stopped) this.log.warn({ err }, 'reclaiming job entries failed');
    }
  }

  private launch(e: Entry): void {
    const abort = new AbortController();
    this.inFlight++;
    const done = this.handle(e, abort).catch((err: unknown) => {
      if (!this.stopped) this.log.error({ err, job: e.jobId }, 'a job attempt failed inside the worker; its entry is retried after the lease');
    }).finally(() => {
      this.inFlight--;
      this.running.delete(e.entryId);
      this.wake();
    });
    this.running.set(e.entryId, { abort, done });
  }

  private async handle(e: Entry, abort: AbortController): Promise<void> {
    const { redis, keys } = this.ctx;
    const jobKey = keys.job(e.jobId);
    const r = (await redis.eval(START, 1, jobKey, String(Date.now()), this.ctx.consumer, e.entryId)) as string[];
    if (r[0] !== 'run' && r[0] !== 'exhausted') {
      if (r[0] !== 'stale') await this.dropInput(jobKey);
      return this.ack(e);
    }
    const attempt = Number(r[1]);
    if (r[0] === 'exhausted') {
      const why = `the worker running it stopped answering ${attempt} time(s) (no heartbeat for ${this.ctx.leaseMs} ms)`;
      await this.finish(e, attempt, 'failed', new BrokerError('UNAVAILABLE', why), undefined, why);
      await this.dropInput(jobKey);
      return this.ack(e);
    }

    const [version, outputs, timeoutMs, inputBlob, maxAttempts, video] = await redis.hmget(jobKey, 'version', 'outputs', 'timeout_ms', 'input_blob', 'max_attempts', 'video');
    const run: Run = {
      jobId: e.jobId, attempt, version: version || undefined, timeoutMs: timeoutMs ? Number(timeoutMs) : undefined, inputBlob: inputBlob || undefined,
      priority: JOB_BATCH_PRIORITY + Math.max(0, this.streams.indexOf(e.stream)), signal: abort.signal,
    };
    const heartbeat = setInterval(() => void this.heartbeat(e, attempt, abort), Math.max(20, Math.floor(this.ctx.leaseMs / 3)));
    // A cancel (or a take-over) is published: check then rather than at the next heartbeat.
    const unwatch = this.ctx.events?.on(e.jobId, (status) => {
      if (status !== 'running' && !abort.signal.aborted) void this.heartbeat(e, attempt, abort);
    });
    let outcome: Outcome;
    try {
      outcome = video ? await this.runVideo(run, JSON.parse(video) as StoredVideo) : await this.runTensors(run, jobKey, outputs);
    } finally {
      clearInterval(heartbeat);
      unwatch?.();
    }
    const { result, ndjson, error } = outcome;
    // Stopping: no verdict and no ack; the entry stays pending and is reclaimed after its lease.
    if (this.stopped) return;
    if (result || ndjson) {
      await this.finish(e, attempt, 'succeeded', undefined, result, undefined, ndjson);
    } else if (error && retryable(error) && attempt < Number(maxAttempts)) {
      this.log.info({ job: e.jobId, attempt, err: error }, 'job attempt failed; queued again');
      await this.finish(e, attempt, 'queued', error);
    } else {
      const dead = error && retryable(error) ? `${attempt} attempt(s) failed; the last: ${error.message}` : undefined;
      await this.finish(e, attempt, 'failed', error, undefined, dead);
    }
    const status = await redis.hget(jobKey, 'status');
    if (status !== 'queued' && status !== 'running') await this.dropInput(jobKey);
    await this.ack(e);
  }

  /** A tensor job: its stored inputs through broker.infer(), with the job's timeout. */
  private async runTensors(r: Run, jobKey: string, outputs: string | null): Promise<Outcome> {
    try {
      const input = r.inputBlob ? await this.ctx.blobs.get(r.inputBlob) : await this.ctx.redis.hgetBuffer(jobKey, 'input');
      if (!input) throw new BrokerError('INTERNAL', 'the job\'s input is missing from the store');
      return {
        result: await this.ctx.broker.infer({
          id: `job-${r.jobId}-${r.attempt}`, model: this.model, version: r.version, inputs: decodeTensors(input),
          outputs: outputs ? (JSON.parse(outputs) as string[]) : undefined, timeoutMs: r.timeoutMs,
          priority: r.priority, signal: r.signal,
          background: true, // fills live batches; alone only once live traffic paused (core/model-scheduler.ts)
        }),
      };
    } catch (err) {
      return { error: toBrokerError(err) };
    }
  }

  /**
   * A video job: the stored upload through the video runner as one sequence
   * (a new sequence id per attempt). The job's timeout is for the whole video.
   */
  private async runVideo(r: Run, v: StoredVideo): Promise<Outcome> {
    const runner = this.ctx.video;
    if (!runner) return { error: new BrokerError('UNIMPLEMENTED', 'this broker runs no video jobs (it was built without a video runner)') };
    const stop = new AbortController();
    const onAbort = () => stop.abort();
    r.signal.addEventListener('abort', onAbort, { once: true });
    if (r.signal.aborted) stop.abort();
    let timedOut = false;
    const timer = r.timeoutMs === undefined ? undefined : setTimeout(() => {
      timedOut = true;
      stop.abort();
    }, r.timeoutMs);
    let stream: Readable | undefined;
    try {
      stream = r.inputBlob ? await this.ctx.blobs.getStream(r.inputBlob) : undefined;
      if (!stream) throw new BrokerError('INTERNAL', 'the job\'s video is missing from the store');
      const ndjson = await runner.run({
        jobId: r.jobId, attempt: r.attempt, model: this.model, version: r.version, video: stream,
        contentType: v.content_type, options: v.options, sequenceId: `job-${r.jobId}-${r.attempt}`,
        priority: r.priority, signal: stop.signal,
      });
      return { ndjson };
    } catch (err) {
      if (timedOut) return { error: new BrokerError('DEADLINE_EXCEEDED', `the video job did not finish within its timeout_seconds (${r.timeoutMs! / 1000} s)`) };
      return { error: toBrokerError(err) };
    } finally {
      clearTimeout(timer);
      r.signal.removeEventListener('abort', onAbort);
      stream?.destroy(); // ffmpeg may have stopped reading it
    }
  }

  /** Keeps the entry leased; aborts the attempt when the job was cancelled or taken over. */
  private async heartbeat(e: Entry, attempt: number, abort: AbortController): Promise<void> {
    try {
      await this.ctx.redis.xclaim(e.stream, GROUP, this.ctx.consumer, 0, e.entryId, 'JUSTID');
      const [status, attempts] = await this.ctx.redis.hmget(this.ctx.keys.job(e.jobId), 'status', 'attempts');
      if (status !== 'running' || Number(attempts) !== attempt) abort.abort();
    } catch (err) {
      this.log.warn({ err, job: e.jobId }, 'job heartbeat failed');
    }
  }

  private async finish(e: Entry, attempt: number, status: 'succeeded' | 'failed' | 'queued', error?: BrokerError, result?: InferResult, dead?: string, ndjson?: Buffer): Promise<void> {
    const { keys } = this.ctx;
    let data: Buffer | string = '';
    let blob = '';
    if (result || ndjson) {
      data = ndjson ?? encodeTensors(result!.outputs);
      if (data.length > this.ctx.inlineMaxBytes) {
        blob = `${e.jobId}.result`;
        await this.ctx.blobs.put(blob, data);
        data = '';
      }
    }
    const stream = e.stream;
    const owned = await this.ctx.redis.eval(FINISH, 4, keys.job(e.jobId), keys.result(e.jobId), stream, keys.dead(this.model),
      String(attempt), status, String(Date.now()), error?.message ?? '', error?.code ?? '', String(this.ctx.resultTtlMs), data, blob,
      String(this.ctx.tombstoneMs), dead ?? '', this.model, e.jobId, result?.version ?? '', String(this.ctx.deadMaxLen), ndjson ? NDJSON : '');
    if (owned === 0) {
      // Cancelled meanwhile, or another worker took the job over: this attempt's result is dropped.
      if (blob) await this.ctx.blobs.delete(blob);
      this.log.debug({ job: e.jobId, attempt }, 'job attempt no longer owns the job; its verdict is dropped');
    } else if (dead) {
      this.log.warn({ job: e.jobId, attempt, reason: dead }, 'job dead-lettered');
    }
  }

  private async dropInput(jobKey: string): Promise<void> {
    const blob = await this.ctx.redis.hget(jobKey, 'input_blob');
    if (blob) await this.ctx.blobs.delete(blob);
  }

  /** Acknowledged and deleted: a stream holds only waiting and running entries (it stays bounded). */
  private async ack(e: Entry): Promise<void> {
    await this.ctx.redis.multi().xack(e.stream, GROUP, e.entryId).xdel(e.stream, e.entryId).exec();
  }
}

function parseRead(reply: unknown): Entry | undefined {
  const streams = reply as [string, [string, string[]][]][] | null;
  if (!streams) return undefined;
  for (const [stream, entries] of streams) {
    for (const [entryId, fields] of entries) return { stream, entryId, jobId: fields[fields.indexOf('id') + 1] };
  }
  return undefined;
}
