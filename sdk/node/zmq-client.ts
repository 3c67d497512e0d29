/**
 * Client of the broker's ZeroMQ bridge (proto/client.proto): a DEALER socket,
 * many requests in flight, one promise per request.
 *
 * zeromq.js allows one pending send and one pending receive per socket, so
 * the client runs a send loop fed by a queue and a receive loop that matches
 * replies to requests by id. At most `window` requests are outstanding at the
 * broker; further ones wait locally, in call order.
 */
import { create } from '@bufbuild/protobuf';
import { Dealer } from 'zeromq';
import type { Tensor } from '../../proto/tensor';
import {
  ClientDecodeError, InferReplySchema, InferRequestSchema, decodeHeader, encodeFrames, parametersToProto,
  tensorsFromFrames, toMeta, JobCall_Op, type InferReply, type JobInfo, type ParameterValue,
} from '../../proto/client';
import type { JobCallSchema } from '../../proto/gen/client_pb';
import type { MessageInitShape } from '@bufbuild/protobuf';

export type { JobInfo } from '../../proto/client';

export type { ParameterValue } from '../../proto/client';

export interface ZmqClientOptions {
  /** Requests outstanding at the broker at most; more wait locally (default 64). */
  window?: number;
  /**
   * Default deadline per request, in ms, counted from the infer() call. Sent to
   * the broker as the `timeout` parameter (µs) unless the call sets one; when it
   * passes, the promise rejects with DEADLINE_EXCEEDED even if no reply came.
   */
  timeoutMs?: number;
  /** Sent with every request in a `tb-api-key:` frame (an API key, or the admin token for listJobs). */
  apiKey?: string;
}

const FINAL_JOB_STATUSES = new Set(['succeeded', 'failed', 'cancelled', 'expired']);

/** Options of submitJob (proto/client.proto JobCall). */
export interface ZmqJobOptions {
  priority?: 'high' | 'normal' | 'low';
  /** Time allowed in the queue. */
  ttlSeconds?: number;
  /** Time allowed per attempt. */
  timeoutSeconds?: number;
  maxAttempts?: number;
  webhookUrl?: string;
  metadata?: Record<string, unknown>;
  idempotencyKey?: string;
  outputs?: string[];
  version?: string;
}

export interface ZmqInferOptions {
  /** Output names wanted; default all. */
  outputs?: string[];
  /** KServe request parameters: `timeout` (µs), `priority` (1 = highest); others are passed on. */
  parameters?: Record<string, ParameterValue>;
  /** Model version; default the served one. */
  version?: string;
  /** Request id, echoed by the broker; default a unique id of this client. */
  id?: string;
  /** Overrides the client's timeoutMs for this request. */
  timeoutMs?: number;
  /**
   * Stateful models: the stream this request belongs to (header fields
   * source_id / start / end). `start` on its first request, `end` on its last.
   */
  sequence?: { id: string; start?: boolean; end?: boolean };
}

export interface ZmqInferResult {
  id: string;
  model: string;
  version: string;
  /** Views of the reply frames (no copy). */
  outputs: Tensor[];
  /** Job operations: the job, or a page of jobs. */
  job?: JobInfo;
  jobs?: JobInfo[];
  nextCursor?: string;
}

/** A failed request. `code` is the broker's error code (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, ...). */
export class ZmqClientError extends Error {
  constructor(
    readonly code: string,
    message: string,
    /** RESOURCE_EXHAUSTED: when the broker suggests trying again. */
    readonly retryAfterMs?: number,
  ) {
    super(message);
    this.name = 'ZmqClientError';
  }
}

interface Pending {
  id: string;
  frames: Buffer[];
  resolve: (r: ZmqInferResult) => void;
  reject: (e: Error) => void;
  timer?: NodeJS.Timeout;
  state: 'waiting' | 'sent' | 'done';
}

let clientCounter = 0;

export class ZmqClient {
  readonly endpoint: string;
  private readonly window: number;
  private readonly timeoutMs?: number;
  private readonly apiKey?: string;
  private readonly sock: Dealer;
  private readonly idPrefix: string;
  private seq = 0;
  /** Waiting for a window slot, in call order. */
  private waiting: Pending[] = [];
  /** Sent (or queued for sending), by id. */
  private readonly outstanding = new Map<string, Pending>();
  private readonly sendQueue: Pending[] = [];
  private wake?: () => void;
  private closed = false;
  private readonly loops: Promise<void>[];

  constructor(endpoint: string, opts: ZmqClientOptions = {}) {
    const window = opts.window ?? 64;
    if (!Number.isInteger(window) || window < 1) throw new RangeError(`window must be a positive integer (got ${window})`);
    this.endpoint = endpoint;
    this.window = window;
    this.timeoutMs = opts.timeoutMs;
    this.apiKey = opts.apiKey;
    this.idPrefix = `${process.pid.toString(36)}-${(++clientCounter).toString(36)}-${Date.now().toString(36)}`;
    this.sock = new Dealer({ linger: 0 });
    this.sock.connect(endpoint);
    this.loops = [this.sendLoop(), this.receiveLoop()];
  }

  /** Requests sent and not yet answered. */
  get inFlight(): number {
    return this.outstanding.size;
  }

  /** Requests waiting locally for a window slot. */
  get queued(): number {
    return this.waiting.length;
  }

  infer(model: string, inputs: Tensor[], opts: ZmqInferOptions = {}): Promise<ZmqInferResult> {
    return this.request(model, inputs, opts);
  }

  /** Queues an asynchronous job (the broker answers at once with the job: id, status). */
  async submitJob(model: string, inputs: Tensor[], opts: ZmqJobOptions = {}): Promise<JobInfo> {
    const job = {
      op: JobCall_Op.SUBMIT, priority: opts.priority ?? '', ttlSeconds: opts.ttlSeconds ?? 0, timeoutSeconds: opts.timeoutSeconds ?? 0,
      maxAttempts: opts.maxAttempts ?? 0, webhookUrl: opts.webhookUrl ?? '', metadataJson: opts.metadata ? JSON.stringify(opts.metadata) : '',
      idempotencyKey: opts.idempotencyKey ?? '',
    };
    return (await this.request(model, inputs, { outputs: opts.outputs, version: opts.version }, job)).job!;
  }

  async getJob(id: string): Promise<JobInfo> {
    return (await this.request('', [], {}, { op: JobCall_Op.GET, jobId: id })).job!;
  }

  async cancelJob(id: string): Promise<JobInfo> {
    return (await this.request('', [], {}, { op: JobCall_Op.CANCEL, jobId: id })).job!;
  }

  /** The job and, once it succeeded (job.resultState 'succeeded'), its outputs. */
  async jobResult(id: string): Promise<{ job: JobInfo; outputs: Tensor[] }> {
    const r = await this.request('', [], {}, { op: JobCall_Op.RESULT, jobId: id });
    return { job: r.job!, outputs: r.outputs };
  }

  /**
   * The job now, then again each time its status or attempts change, until a
   * final status (succeeded, failed, cancelled, expired). Each step is one
   * WATCH call that the broker holds until a change or `waitMs` (default 25 s):
   * a long poll, so it needs no connection of its own.
   */
  async *watchJob(id: string, opts: { waitMs?: number; signal?: AbortSignal } = {}): AsyncGenerator<JobInfo> {
    const waitMs = opts.waitMs ?? 25_000;
    let seenStatus = '';
    let seenAttempts = 0;
    while (!opts.signal?.aborted) {
      const job = await this.watchJobOnce(id, { status: seenStatus, attempts: seenAttempts }, waitMs);
      if (job.status !== seenStatus || job.attempts !== seenAttempts) {
        seenStatus = job.status;
        seenAttempts = job.attempts;
        yield job;
      }
      if (FINAL_JOB_STATUSES.has(job.status)) return;
    }
  }

  /** One WATCH: the job once it differs from `seen` (at once for an empty status), or unchanged after `waitMs`. */
  async watchJobOnce(id: string, seen: { status: string; attempts: number }, waitMs = 25_000): Promise<JobInfo> {
    // The request's own timeout covers the broker's wait plus a margin.
    const job = { op: JobCall_Op.WATCH, jobId: id, seenStatus: seen.status, seenAttempts: seen.attempts, waitMs };
    return (await this.request('', [], { timeoutMs: waitMs + 10_000 }, job)).job!;
  }

  /** Every job, newest first (needs the admin token as apiKey). */
  async listJobs(q: { model?: string; status?: string; cursor?: string; limit?: number } = {}): Promise<{ jobs: JobInfo[]; nextCursor?: string }> {
    const r = await this.request(q.model ?? '', [], {}, { op: JobCall_Op.LIST, status: q.status ?? '', cursor: q.cursor ?? '', limit: q.limit ?? 0 });
    return { jobs: r.jobs ?? [], nextCursor: r.nextCursor || undefined };
  }

  private request(model: string, inputs: Tensor[], opts: ZmqInferOptions, job?: MessageInitShape<typeof JobCallSchema>): Promise<ZmqInferResult> {
    if (this.closed) return Promise.reject(new ZmqClientError('CANCELLED', 'the client is closed'));
    const id = opts.id ?? `${this.idPrefix}-${++this.seq}`;
    if (this.outstanding.has(id) || this.waiting.some((p) => p.id === id)) {
      return Promise.reject(new ZmqClientError('INVALID_ARGUMENT', `request id '${id}' is already in use by an outstanding request`));
    }
    const timeoutMs = opts.timeoutMs ?? this.timeoutMs;
    let frames: Buffer[];
    try {
      const params: Record<string, ParameterValue> = { ...opts.parameters };
      if (timeoutMs !== undefined && params.timeout === undefined) params.timeout = Math.round(timeoutMs * 1000);
      const header = create(InferRequestSchema, {
        id, model, version: opts.version ?? '',
        inputs: inputs.map(toMeta),
        parameters: parametersToProto(params),
        outputs: opts.outputs ?? [],
        ...(opts.sequence ? { sourceId: opts.sequence.id, start: opts.sequence.start ?? false, end: opts.sequence.end ?? false } : {}),
        ...(job ? { job } : {}),
      });
      frames = encodeFrames(InferRequestSchema, header, inputs);
      if (this.apiKey !== undefined) frames.unshift(Buffer.from(`tb-api-key:${this.apiKey}`));
    } catch (e) {
      return Promise.reject(new ZmqClientError('INVALID_ARGUMENT', (e as Error).message));
    }
    return new Promise<ZmqInferResult>((resolve, reject) => {
      const p: Pending = { id, frames, resolve, reject, state: 'waiting' };
      if (timeoutMs !== undefined) {
        p.timer = setTimeout(() => this.settle(p, new ZmqClientError('DEADLINE_EXCEEDED', `no reply within ${timeoutMs} ms`)), timeoutMs);
      }
      this.waiting.push(p);
      this.pump();
    });
  }

  /** Rejects everything outstanding with CANCELLED and closes the socket. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const all = [...this.waiting, ...this.outstanding.values()];
    for (const p of all) this.settle(p, new ZmqClientError('CANCELLED', 'the client was closed'));
    this.wake?.();
    this.sock.close();
    await Promise.allSettled(this.loops);
  }

  private pump(): void {
    while (!this.closed && this.outstanding.size < this.window && this.waiting.length > 0) {
      const p = this.waiting.shift()!;
      p.state = 'sent';
      this.outstanding.set(p.id, p);
      this.sendQueue.push(p);
    }
    this.wake?.();
  }

  private settle(p: Pending, outcome: ZmqInferResult | Error): void {
    if (p.state === 'done') return;
    if (p.state === 'waiting') this.waiting = this.waiting.filter((w) => w !== p);
    else this.outstanding.delete(p.id);
    p.state = 'done';
    clearTimeout(p.timer);
    if (outcome instanceof Error) p.reject(outcome);
    else p.resolve(outcome);
    this.pump();
  }

  private async sendLoop(): Promise<void> {
    while (!this.closed) {
      const p = this.sendQueue.shift();
      if (!p) {
        await new Promise<void>((resolve) => (this.wake = resolve));
        this.wake = undefined;
        continue;
      }
      if (p.state === 'done') continue; // timed out before it was sent
      try {
        await this.sock.send(p.frames);
      } catch (e) {
        if (this.closed) return;
        this.settle(p, new ZmqClientError('UNAVAILABLE', `send failed: ${(e as Error).message}`));
      }
    }
  }

  private async receiveLoop(): Promise<void> {
    while (!this.closed) {
      let frames: Buffer[];
      try {
        frames = await this.sock.receive();
      } catch {
        if (this.closed) return;
        continue;
      }
      let reply: InferReply;
      try {
        reply = decodeHeader(InferReplySchema, frames[0]);
      } catch {
        continue; // not a reply of this protocol: nothing to match it to
      }
      const p = this.outstanding.get(reply.id);
      if (!p) continue; // a late reply to a request that timed out locally
      this.settle(p, this.outcome(reply, frames.slice(1)));
    }
  }

  private outcome(reply: InferReply, frames: Buffer[]): ZmqInferResult | Error {
    const status = reply.status;
    if (!status) return new ZmqClientError('INTERNAL', 'the reply has no status');
    if (status.code !== 'OK') {
      return new ZmqClientError(status.code || 'INTERNAL', status.message, status.retryAfterMs > 0 ? status.retryAfterMs : undefined);
    }
    try {
      const r: ZmqInferResult = { id: reply.id, model: reply.model, version: reply.version, outputs: tensorsFromFrames(reply.outputs, frames) };
      if (reply.job) r.job = reply.job;
      if (reply.jobs.length > 0 || reply.nextCursor !== '') {
        r.jobs = reply.jobs;
        r.nextCursor = reply.nextCursor;
      }
      return r;
    } catch (e) {
      return new ZmqClientError('INTERNAL', `malformed reply: ${e instanceof ClientDecodeError ? e.message : String(e)}`);
    }
  }
}
