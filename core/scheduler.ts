import type { Logger } from 'pino';
import { BrokerError, toBrokerError } from './errors';
import { Fifo } from './fifo';
import type { BatchRequest, BatchResponse, CopyPool, ModelCopy } from './pool';
import { ModelStats } from './stats';
import { sliceRows, type Tensor } from './tensor';
import type { InferRequest, InferResult, ModelMetadata } from './types';
import { requestRows, shapeKey, validateAgainst } from './validate';

export interface SchedulerConfig {
  version: string;
  batchSize: number;
  maxWaitMs: number;
  queueCapacity: number;
  timeoutMs: number;
}

export type Outcome = 'success' | 'error' | 'rejected' | 'timeout' | 'cancelled';

/** What the scheduler reports as it works; metrics implement it. */
export interface SchedulerObserver {
  queueDepth(model: string, depth: number): void;
  finished(model: string, outcome: Outcome, queueSeconds: number | undefined, totalSeconds: number): void;
  batch(model: string, rows: number, computeSeconds: number): void;
}

interface Pending {
  req: InferRequest;
  rows: number;
  key: string;
  enqueuedNs: bigint;
  startedNs?: bigint;
  state: 'queued' | 'running' | 'done';
  timer?: NodeJS.Timeout;
  onAbort?: () => void;
  resolve(r: InferResult): void;
  reject(e: BrokerError): void;
}

let nextBatchId = 1n;

/**
 * One per model: admits requests into a bounded queue, cuts batches when a
 * copy has a free credit (up to batch_size rows, waiting at most max_wait_ms
 * from the oldest request), and splits each reply back by rows.
 * Invariant: every accepted request settles exactly once (settle()).
 */
export class ModelScheduler {
  readonly stats = new ModelStats();
  private readonly queues = new Map<number, Fifo<Pending>>();
  private priorities: number[] = [];
  private queued = 0;
  private queuedRows = 0;
  private running = new Set<Pending>();
  private waitTimer?: NodeJS.Timeout;
  private closed?: BrokerError;
  private idleWaiters: (() => void)[] = [];

  constructor(
    readonly model: string,
    private config: SchedulerConfig,
    private readonly pool: CopyPool,
    private readonly log: Logger,
    private readonly observer?: SchedulerObserver,
  ) {}

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
      return Promise.reject(toBrokerError(e));
    }
  }

  private admit(req: InferRequest): Promise<InferResult> {
    if (this.closed) throw this.closed;
    const rows = requestRows(req);
    const meta = this.pool.metadata(this.model);
    if (meta) validateAgainst(req, meta, rows, this.maxRows(meta));
    else if (rows > this.config.batchSize) {
      throw new BrokerError('INVALID_ARGUMENT', `model '${this.model}' takes at most ${this.config.batchSize} rows per request, got ${rows}`);
    }
    if (req.signal?.aborted) throw new BrokerError('CANCELLED', 'the client cancelled the request');
    if (this.queued >= this.config.queueCapacity) {
      this.stats.fail(0);
      this.observer?.finished(this.model, 'rejected', undefined, 0);
      throw new BrokerError(
        'RESOURCE_EXHAUSTED',
        `model '${this.model}' queue is full (${this.config.queueCapacity} requests waiting)`,
        this.retryAfterMs(),
      );
    }
    return new Promise<InferResult>((resolve, reject) => {
      const p: Pending = {
        req, rows, key: shapeKey(req), enqueuedNs: process.hrtime.bigint(), state: 'queued', resolve, reject,
      };
      const timeoutMs = req.timeoutMs ?? this.config.timeoutMs;
      if (timeoutMs > 0 && Number.isFinite(timeoutMs)) {
        p.timer = setTimeout(() => this.expire(p, timeoutMs), timeoutMs);
      }
      if (req.signal) {
        p.onAbort = () => this.settle(p, new BrokerError('CANCELLED', 'the client cancelled the request'));
        req.signal.addEventListener('abort', p.onAbort, { once: true });
      }
      this.enqueue(p);
      this.pump();
    });
  }

  /** Fails every queued request; running batches finish or fail on their own. */
  close(reason: BrokerError): void {
    this.closed = reason;
    clearTimeout(this.waitTimer);
    for (const q of this.queues.values()) for (const p of q) this.settle(p, reason);
    this.queues.clear();
    this.priorities = [];
  }

  /** Resolves when this model has nothing queued and nothing running. */
  idle(): Promise<void> {
    if (this.running.size === 0 && this.queued === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Called when a copy of this model may take work (and after each arrival). */
  pump(): void {
    clearTimeout(this.waitTimer);
    this.waitTimer = undefined;
    while (this.queued > 0 && !this.closed) {
      const copy = this.pool.available(this.model);
      if (!copy) return;
      const head = this.head();
      if (!head) return;
      const maxRows = this.maxRows(copy.metadata);
      const waitedMs = Number(process.hrtime.bigint() - head.enqueuedNs) / 1e6;
      if (this.queuedRows < maxRows && waitedMs < this.config.maxWaitMs) {
        this.waitTimer = setTimeout(() => this.pump(), Math.max(1, Math.ceil(this.config.maxWaitMs - waitedMs)));
        return;
      }
      const batch = this.take(head.key, maxRows);
      this.dispatch(copy, batch);
    }
  }

  private maxRows(meta: ModelMetadata): number {
    return meta.maxBatch > 0 ? Math.min(meta.maxBatch, this.config.batchSize) : this.config.batchSize;
  }

  private enqueue(p: Pending): void {
    const prio = p.req.priority && p.req.priority > 0 ? p.req.priority : 0;
    let q = this.queues.get(prio);
    if (!q) {
      q = new Fifo<Pending>();
      this.queues.set(prio, q);
      // 1 is the highest priority and 0 (default) is treated as 1's peer below it.
      this.priorities = [...this.queues.keys()].sort((a, b) => (a || Infinity) - (b || Infinity));
    }
    q.push(p);
    this.queued++;
    this.queuedRows += p.rows;
    this.observer?.queueDepth(this.model, this.queued);
  }

  /** The oldest live request of the highest priority; drops settled ones from the front. */
  private head(): Pending | undefined {
    for (const prio of this.priorities) {
      const q = this.queues.get(prio)!;
      while (q.length > 0 && q.peek()!.state !== 'queued') q.shift();
      if (q.length > 0) return q.peek();
    }
    return undefined;
  }

  /** Takes queued requests with the same shape key, in priority then arrival order, up to maxRows rows. */
  private take(key: string, maxRows: number): Pending[] {
    const batch: Pending[] = [];
    let rows = 0;
    for (const prio of this.priorities) {
      if (rows >= maxRows) break;
      const q = this.queues.get(prio)!;
      const taken = q.extract((p) => {
        if (rows >= maxRows) return 'stop';
        if (p.state !== 'queued') return true; // settled: drop it from the queue
        if (p.key !== key || rows + p.rows > maxRows) return false;
        rows += p.rows;
        return true;
      });
      for (const p of taken) if (p.state === 'queued') batch.push(p);
    }
    return batch;
  }

  private dispatch(copy: ModelCopy, batch: Pending[]): void {
    const now = process.hrtime.bigint();
    let rows = 0;
    for (const p of batch) {
      p.state = 'running';
      p.startedNs = now;
      rows += p.rows;
      this.running.add(p);
    }
    this.queued -= batch.length;
    this.queuedRows -= rows;
    this.observer?.queueDepth(this.model, this.queued);

    let request: BatchRequest;
    try {
      request = this.buildBatch(copy, batch);
    } catch (e) {
      for (const p of batch) this.settle(p, toBrokerError(e));
      return;
    }
    const batchId = String(request.batchId);
    if (this.log.isLevelEnabled('debug')) this.log.debug({ batchId, copy: copy.id, rows, requests: batch.length }, 'batch dispatched');
    copy.execute(request).then(
      (res) => this.debatch(batch, rows, res, batchId),
      (err) => {
        const e = toBrokerError(err);
        this.log.warn({ batchId, copy: copy.id, err: e.message, code: e.code }, 'batch failed');
        for (const p of batch) this.settle(p, e);
      },
    );
  }

  private buildBatch(copy: ModelCopy, batch: Pending[]): BatchRequest {
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
      items: batch.map((p) => ({ requestId: p.req.id, rows: p.rows })),
      tensors,
      outputs,
      deadline: Date.now() + this.config.timeoutMs,
    };
  }

  private debatch(batch: Pending[], rows: number, res: BatchResponse, batchId: string): void {
    const computeNs = res.computeNs;
    this.stats.execution(rows, computeNs);
    this.observer?.batch(this.model, rows, computeNs / 1e9);
    const bad = res.tensors.find((t) => t.shape[0] !== rows);
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
      const wanted = p.req.outputs ? new Set(p.req.outputs) : undefined;
      let outputs: Tensor[];
      try {
        outputs = res.tensors.filter((t) => !wanted || wanted.has(t.name)).map((t) => sliceRows(t, from, p.rows));
      } catch (e) {
        this.settle(p, toBrokerError(e));
        return;
      }
      this.settle(p, { id: p.req.id, model: this.model, version: this.config.version, outputs }, computeNs);
    });
  }

  private expire(p: Pending, timeoutMs: number): void {
    const where = p.state === 'queued' ? 'in the queue' : 'while the model was running it';
    this.settle(p, new BrokerError('DEADLINE_EXCEEDED', `deadline of ${timeoutMs} ms passed ${where}`));
  }

  /** The one place a request ends. Later calls for the same request are ignored. */
  private settle(p: Pending, outcome: InferResult | BrokerError, computeNs = 0): void {
    if (p.state === 'done') return;
    const wasQueued = p.state === 'queued';
    p.state = 'done';
    clearTimeout(p.timer);
    if (p.onAbort) p.req.signal?.removeEventListener('abort', p.onAbort);
    this.running.delete(p);
    if (wasQueued) {
      this.queued--;
      this.queuedRows -= p.rows;
      this.observer?.queueDepth(this.model, this.queued);
    }
    if (this.running.size === 0 && this.queued === 0) for (const w of this.idleWaiters.splice(0)) w();
    const end = process.hrtime.bigint();
    const totalNs = Number(end - p.enqueuedNs);
    const queueNs = p.startedNs !== undefined ? Number(p.startedNs - p.enqueuedNs) : undefined;
    if (outcome instanceof BrokerError) {
      this.stats.fail(totalNs);
      const kind: Outcome = outcome.code === 'DEADLINE_EXCEEDED' ? 'timeout' : outcome.code === 'CANCELLED' ? 'cancelled' : 'error';
      this.observer?.finished(this.model, kind, queueNs !== undefined ? queueNs / 1e9 : undefined, totalNs / 1e9);
      p.reject(outcome);
    } else {
      this.stats.success(p.rows, totalNs, queueNs ?? 0, computeNs);
      this.observer?.finished(this.model, 'success', (queueNs ?? 0) / 1e9, totalNs / 1e9);
      p.resolve(outcome);
    }
  }

  /** A hint for Retry-After: the time to work off the queue at the recent batch rate, at least 1 s. */
  private retryAfterMs(): number {
    return Math.max(1000, Math.min(30_000, Math.round(this.stats.meanBatchMs() * (this.queued / Math.max(1, this.config.batchSize)))));
  }
}
