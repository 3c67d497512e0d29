/**
 * The life of an accepted request, shared by the stateless batcher
 * (scheduler.ts) and the sequence batcher (sequences.ts): admission checks,
 * the deadline timer, cancellation, building a batch for a copy, splitting
 * the answer back by rows, statistics, and settle() — the one place a
 * request ends. Subclasses own the queue structure and when batches are cut.
 */
import type { Logger } from 'pino';
import { BrokerError, toBrokerError } from './errors';
import type { BatchRequest, BatchResponse, ModelCopies, ModelCopy, SequenceControl } from './model-copies';
import { stageTimer } from './stage-timings';
import { ModelStats, type BatchTiming } from './stats';
import { longTimeout } from './timers';
import { sliceRows, type Tensor } from '../proto/tensor';
import type { InferRequest, InferResult, ModelMetadata, ModelReadiness } from './types';
import { requestRows, shapeKey, validateAgainst } from './validate';

const QUEUE = stageTimer('core', 'queue');
const BATCH = stageTimer('core', 'batch');
const COMPUTE = stageTimer('core', 'compute');
const DEBATCH = stageTimer('core', 'debatch');

const NO_TIMING: BatchTiming = { inputNs: 0, computeNs: 0, outputNs: 0 };

export interface SchedulerConfig {
  version: string;
  batchSize: number;
  maxWaitMs: number;
  queueCapacity: number;
  timeoutMs: number;
  /**
   * Background requests (InferRequest.background) make a batch of their own only after this long
   * without a live arrival, and only on a copy that is not running a batch. Default 100 ms.
   */
  backgroundIdleMs?: number;
}

export type Outcome = 'success' | 'error' | 'rejected' | 'timeout' | 'cancelled';

/** What the scheduler reports as it works; metrics implement it. */
export interface SchedulerObserver {
  queueDepth(model: string, depth: number): void;
  finished(model: string, outcome: Outcome, queueSeconds: number | undefined, totalSeconds: number): void;
  batch(model: string, rows: number, computeSeconds: number): void;
  /** Stateful models: sequences holding a slot, and sequences waiting for one. Optional. */
  sequences?(model: string, active: number, backlog: number): void;
}

/** An accepted request. `ext` is what the subclass attached at admission. */
export interface Pending<X = undefined> {
  req: InferRequest;
  rows: number;
  key: string;
  enqueuedNs: bigint;
  startedNs?: bigint;
  state: 'queued' | 'running' | 'done';
  /** Cancels the deadline timer. */
  cancelTimer?: () => void;
  onAbort?: () => void;
  ext: X;
  /** Put back in the queue once after its copy died (task manager's retryable error). */
  retried?: boolean;
  /** Decoupled models: responses passed to req.onResponse so far, and when the last one left (or the request started). */
  responses?: number;
  lastResponseNs?: bigint;
  resolve(r: InferResult): void;
  reject(e: BrokerError): void;
}

let nextBatchId = 1n;

export abstract class SchedulerBase<X = undefined> {
  readonly stats = new ModelStats();
  /** Requests accepted and not yet dispatched. */
  protected queued = 0;
  protected queuedRows = 0;
  /** Queued rows of live (not background) requests: only these make a busy copy's batch "full". */
  protected queuedLiveRows = 0;
  protected readonly running = new Set<Pending<X>>();
  protected closed?: BrokerError;
  /** Whether a batch the task manager flags retryable goes back in the queue (never for sequences: their state died). */
  protected readonly retriesBatches: boolean = true;
  private idleWaiters: (() => void)[] = [];
  private readonly onCapacity = () => this.capacity();
  /** A model that turned failed or unloaded fails what waits for it at once, not at each deadline. */
  private readonly onPhase = (r: ModelReadiness) => {
    if (r.phase === 'failed' || r.phase === 'unloaded') {
      this.failQueued(new BrokerError('UNAVAILABLE', `model '${this.model}' is not ready: ${r.reason ?? r.phase}`, { kind: 'model-unavailable' }));
    }
  };

  /** Subscribes to its own model's copies: 'capacity' pumps (unsubscribed by close()). */
  constructor(
    readonly model: string,
    protected config: SchedulerConfig,
    protected readonly copies: ModelCopies,
    protected readonly log: Logger,
    protected readonly observer?: SchedulerObserver,
  ) {
    copies.on('capacity', this.onCapacity);
    copies.on('phase', this.onPhase);
  }

  /** A copy of this model may take work. */
  capacity(): void {
    this.pump();
  }

  /** Fails every queued request and stops listening to the copies; running batches finish or fail on their own. */
  close(reason: BrokerError): void {
    this.closed = reason;
    this.copies.off('capacity', this.onCapacity);
    this.copies.off('phase', this.onPhase);
    this.closeQueues(reason);
  }

  configure(config: SchedulerConfig): void {
    this.config = config;
    this.pump();
  }

  get depth(): number {
    return this.queued;
  }

  get inFlight(): number {
    return this.running.size;
  }

  submit(req: InferRequest): Promise<InferResult> {
    try {
      return this.admit(req);
    } catch (e) {
      req.onSent?.();
      return Promise.reject(toBrokerError(e));
    }
  }

  /** Resolves when this model has nothing queued and nothing running. */
  idle(): Promise<void> {
    if (this.running.size === 0 && this.queued === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Called when a copy of this model may take work (and after each arrival). */
  abstract pump(): void;

  /** Fails every queued request (close() has set `closed`). */
  protected abstract closeQueues(reason: BrokerError): void;

  /** Fails every queued request; the scheduler stays open. */
  protected abstract failQueued(reason: BrokerError): void;

  /** Checks that depend on the scheduler kind; throws to refuse. Returns the request's `ext`. */
  protected abstract prepare(req: InferRequest, rows: number): X;

  /** Puts an accepted request in the queue structure (must not throw). */
  protected abstract enqueue(p: Pending<X>): void;

  /** A request ended; `wasQueued` when it never reached a copy. */
  protected onSettled(_p: Pending<X>, _wasQueued: boolean): void {}

  /** The error a failed batch gives each of its requests. */
  protected batchError(e: BrokerError): BrokerError {
    return e;
  }

  /** The client went away (its AbortSignal fired). */
  protected onAbort(p: Pending<X>): void {
    this.settle(p, new BrokerError('CANCELLED', 'the client cancelled the request'));
  }

  private admit(req: InferRequest): Promise<InferResult> {
    if (this.closed) throw this.closed;
    const whole = this.whole;
    const rows = requestRows(req, whole);
    const meta = this.copies.metadata;
    if (meta) {
      validateAgainst(req, meta, rows, this.maxRows(meta), whole);
      if (meta.decoupled && !req.onResponse) throw this.oneAnswerOnly();
    } else if (!whole && rows > this.config.batchSize) {
      throw new BrokerError('INVALID_ARGUMENT', `model '${this.model}' takes at most ${this.config.batchSize} rows per request, got ${rows}`);
    }
    if (req.signal?.aborted) throw new BrokerError('CANCELLED', 'the client cancelled the request');
    if (this.queued >= this.config.queueCapacity) {
      this.reject(`model '${this.model}' queue is full (${this.config.queueCapacity} requests waiting)`);
    }
    const ext = this.prepare(req, rows);
    return new Promise<InferResult>((resolve, reject) => {
      const p: Pending<X> = {
        req, rows, key: shapeKey(req), enqueuedNs: process.hrtime.bigint(), state: 'queued', ext, resolve, reject,
      };
      const timeoutMs = req.timeoutMs ?? this.config.timeoutMs;
      if (timeoutMs > 0 && Number.isFinite(timeoutMs)) {
        // Chained past 2^31-1 ms: a plain setTimeout would fire at once.
        p.cancelTimer = longTimeout(() => this.expire(p, timeoutMs), timeoutMs);
      }
      if (req.signal) {
        p.onAbort = () => this.onAbort(p);
        req.signal.addEventListener('abort', p.onAbort, { once: true });
      }
      this.queued++;
      this.countQueued(p, 1);
      this.observer?.queueDepth(this.model, this.queued);
      this.enqueue(p);
      this.pump();
      this.reportDemand();
    });
  }

  /** Refuses a request for overload: counted as rejected, RESOURCE_EXHAUSTED with a Retry-After hint. */
  protected reject(message: string): never {
    this.stats.fail(0);
    this.observer?.finished(this.model, 'rejected', undefined, 0);
    throw new BrokerError('RESOURCE_EXHAUSTED', message, { retryAfterMs: this.retryAfterMs(), kind: 'overloaded' });
  }

  /** A non-batching model (batch_size 0): shapes are whole and each request runs alone. */
  protected get whole(): boolean {
    return this.config.batchSize === 0;
  }

  /** Triton: "ModelInfer RPC / HTTP end point doesn't support models with decoupled transaction policy". */
  private oneAnswerOnly(): BrokerError {
    return new BrokerError('UNIMPLEMENTED', `model '${this.model}' has the decoupled transaction policy (0..n responses per request); ` +
      'this call takes exactly one answer: use the gRPC ModelStreamInfer stream');
  }

  protected maxRows(meta: ModelMetadata): number {
    if (this.whole) return 1;
    return meta.maxBatch > 0 ? Math.min(meta.maxBatch, this.config.batchSize) : this.config.batchSize;
  }

  /**
   * Sends `batch` to `copy`. `control` gives each request's sequence control
   * data; `after` runs once the copy answered or failed (after every request settled).
   */
  private countQueued(p: Pending<X>, sign: 1 | -1): void {
    this.queuedRows += sign * p.rows;
    if (!p.req.background) this.queuedLiveRows += sign * p.rows;
  }

  protected dispatch(copy: ModelCopy, batch: Pending<X>[], control?: (p: Pending<X>) => SequenceControl | undefined, after?: () => void): void {
    const t0 = performance.now();
    const now = process.hrtime.bigint();
    let rows = 0;
    for (const p of batch) {
      p.state = 'running';
      p.startedNs = now;
      QUEUE.observeMs(Number(now - p.enqueuedNs) / 1e6);
      rows += p.rows;
      this.countQueued(p, -1);
      this.running.add(p);
    }
    this.queued -= batch.length;
    this.observer?.queueDepth(this.model, this.queued);
    this.reportDemand();

    // The link no longer reads the requests' inputs once the batch was sent (or failed): bridges may reuse their bytes.
    let linkDone = false;
    const sent = () => {
      if (linkDone) return;
      linkDone = true;
      for (const p of batch) p.req.onSent?.();
    };
    let request: BatchRequest;
    try {
      request = this.buildBatch(copy, batch, control);
    } catch (e) {
      sent();
      for (const p of batch) this.settle(p, toBrokerError(e));
      after?.();
      return;
    }
    request.onSent = sent;
    const batchId = String(request.batchId);
    if (this.log.isLevelEnabled('debug')) this.log.debug({ batchId, copy: copy.id, rows, requests: batch.length }, 'batch dispatched');
    const decoupled = !!copy.metadata.decoupled;
    if (decoupled) request.onResponse = (item, tensors) => this.respond(batch[item], tensors);
    const running = copy.execute(request);
    BATCH.since(t0);
    running.then(
      (res) => {
        sent();
        this.debatch(batch, rows, res, batchId, decoupled);
      },
      (err) => {
        sent();
        const e = this.batchError(toBrokerError(err));
        // The copy died or hung with the batch: the task manager flags it retryable when the
        // model allows it (retry_on_failure, stateless rows). Each request goes back in the queue once.
        const retry = this.retriesBatches && e.retryable && !this.closed;
        this.log.warn({ batchId, copy: copy.id, err: e, retry }, 'batch failed');
        for (const p of batch) {
          if (retry && p.state === 'running' && !p.retried) {
            p.retried = true;
            p.state = 'queued';
            this.running.delete(p);
            this.queued++;
            this.countQueued(p, 1);
            this.enqueue(p);
          } else this.settle(p, e);
        }
        if (retry) {
          this.observer?.queueDepth(this.model, this.queued);
          this.pump();
          this.reportDemand();
        }
      },
    ).finally(() => after?.());
  }

  private buildBatch(copy: ModelCopy, batch: Pending<X>[], control?: (p: Pending<X>) => SequenceControl | undefined): BatchRequest {
    const meta = copy.metadata;
    const first = batch[0].req;
    const totalRows = batch.reduce((n, p) => n + p.rows, 0);
    const names = meta.inputs.map((s) => s.name).filter((n) => first.inputs.some((t) => t.name === n));
    const tensors: Tensor[] = names.map((name) => {
      const parts = batch.map((p) => p.req.inputs.find((t) => t.name === name)!);
      if (parts.length === 1) return parts[0];
      return {
        name,
        datatype: parts[0].datatype,
        shape: [totalRows, ...parts[0].shape.slice(1)],
        data: Buffer.concat(parts.map((t) => t.data)),
      };
    });
    const wantAll = batch.some((p) => !p.req.outputs);
    const outputs = wantAll ? [] : [...new Set(batch.flatMap((p) => p.req.outputs!))];
    return {
      batchId: nextBatchId++,
      model: this.model,
      items: batch.map((p) => {
        const sequence = control?.(p);
        return sequence ? { requestId: p.req.id, rows: p.rows, sequence } : { requestId: p.req.id, rows: p.rows };
      }),
      tensors,
      outputs,
      deadline: Date.now() + this.config.timeoutMs,
      ...(this.whole ? { whole: true } : {}),
    };
  }

  /** One response of a decoupled model to a running request. */
  private respond(p: Pending<X> | undefined, tensors: Tensor[]): void {
    if (!p || p.state !== 'running' || !p.req.onResponse) return;
    const wanted = p.req.outputs ? new Set(p.req.outputs) : undefined;
    const now = process.hrtime.bigint();
    this.stats.response(p.responses ?? 0, Number(now - (p.lastResponseNs ?? p.startedNs ?? now)), false);
    p.lastResponseNs = now;
    p.responses = (p.responses ?? 0) + 1;
    try {
      p.req.onResponse({ id: p.req.id, model: this.model, version: this.config.version, outputs: tensors.filter((t) => !wanted || wanted.has(t.name)) });
    } catch (e) {
      this.log.error({ err: e, request: p.req.id }, 'a response listener threw');
    }
  }

  private debatch(batch: Pending<X>[], rows: number, res: BatchResponse, batchId: string, decoupled = false): void {
    const t0 = performance.now();
    try {
      this.debatchNow(batch, rows, res, batchId, decoupled);
    } finally {
      DEBATCH.since(t0);
    }
  }

  private debatchNow(batch: Pending<X>[], rows: number, res: BatchResponse, batchId: string, decoupled: boolean): void {
    const computeNs = res.computeNs;
    COMPUTE.observeMs(computeNs / 1e6);
    const timing: BatchTiming = { inputNs: res.computeInputNs ?? 0, computeNs, outputNs: res.computeOutputNs ?? 0 };
    this.stats.execution(rows, timing);
    this.observer?.batch(this.model, rows, computeNs / 1e9);
    const whole = this.whole;
    const bad = whole ? undefined : res.tensors.find((t) => t.shape[0] !== rows);
    if (bad || res.itemErrors.length !== batch.length) {
      const msg = bad
        ? `model returned output '${bad.name}' with ${bad.shape[0]} rows for a batch of ${rows}`
        : `model returned ${res.itemErrors.length} item statuses for ${batch.length} requests`;
      this.log.error({ batchId }, msg);
      for (const p of batch) this.settle(p, new BrokerError('INTERNAL', msg));
      return;
    }
    let offset = 0;
    batch.forEach((p, i) => {
      const from = offset;
      offset += p.rows;
      const itemError = res.itemErrors[i];
      if (itemError !== undefined) {
        this.settle(p, new BrokerError('INTERNAL', `model error: ${itemError}`));
        return;
      }
      if (decoupled) {
        // The final marker: the responses went out one by one; none when the call takes one answer.
        if (!p.req.onResponse) this.settle(p, this.oneAnswerOnly());
        else {
          const now = process.hrtime.bigint();
          this.stats.response(p.responses ?? 0, Number(now - (p.lastResponseNs ?? p.startedNs ?? now)), true);
          this.settle(p, { id: p.req.id, model: this.model, version: this.config.version, outputs: [], responses: p.responses ?? 0 }, timing);
        }
        return;
      }
      const wanted = p.req.outputs ? new Set(p.req.outputs) : undefined;
      let outputs: Tensor[];
      try {
        const kept = res.tensors.filter((t) => !wanted || wanted.has(t.name));
        outputs = whole ? kept : kept.map((t) => sliceRows(t, from, p.rows));
      } catch (e) {
        this.settle(p, toBrokerError(e));
        return;
      }
      this.settle(p, { id: p.req.id, model: this.model, version: this.config.version, outputs }, timing);
    });
  }

  private expire(p: Pending<X>, timeoutMs: number): void {
    const where = p.state === 'queued' ? 'in the queue' : 'while the model was running it';
    this.settle(p, new BrokerError('DEADLINE_EXCEEDED', `deadline of ${timeoutMs} ms passed ${where}`));
  }

  /** The one place a request ends. Later calls for the same request are ignored. */
  protected settle(p: Pending<X>, outcome: InferResult | BrokerError, timing: BatchTiming = NO_TIMING): void {
    if (p.state === 'done') return;
    const wasQueued = p.state === 'queued';
    p.state = 'done';
    p.cancelTimer?.();
    if (p.onAbort) p.req.signal?.removeEventListener('abort', p.onAbort);
    this.running.delete(p);
    if (wasQueued) {
      this.queued--;
      this.countQueued(p, -1);
      this.observer?.queueDepth(this.model, this.queued);
      p.req.onSent?.(); // never sent: the bridge may reuse its bytes
    }
    if (this.running.size === 0 && this.queued === 0) for (const w of this.idleWaiters.splice(0)) w();
    this.reportDemand();
    const end = process.hrtime.bigint();
    const totalNs = Number(end - p.enqueuedNs);
    const queueNs = p.startedNs !== undefined ? Number(p.startedNs - p.enqueuedNs) : undefined;
    if (outcome instanceof BrokerError) {
      this.stats.fail(totalNs);
      const kind: Outcome = outcome.code === 'DEADLINE_EXCEEDED' ? 'timeout' : outcome.code === 'CANCELLED' ? 'cancelled' : 'error';
      this.observer?.finished(this.model, kind, queueNs !== undefined ? queueNs / 1e9 : undefined, totalNs / 1e9);
      p.reject(outcome);
    } else {
      this.stats.success(p.rows, totalNs, queueNs ?? 0, timing);
      this.observer?.finished(this.model, 'success', (queueNs ?? 0) / 1e9, totalNs / 1e9);
      p.resolve(outcome);
    }
    this.onSettled(p, wasQueued);
  }

  /** Tells the copies the queue depth: requests queued at zero copies start one. */
  protected reportDemand(): void {
    if (!this.closed) this.copies.demand(this.queued, this.running.size);
  }

  /** A hint for Retry-After: the time to work off the queue at the recent batch rate, at least 1 s. */
  protected retryAfterMs(): number {
    return Math.max(1000, Math.min(30_000, Math.round(this.stats.meanBatchMs() * (this.queued / Math.max(1, this.config.batchSize)))));
  }
}
