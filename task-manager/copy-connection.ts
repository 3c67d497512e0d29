/**
 * The broker's view of one model copy over the link: READY handshake, credits,
 * batches in flight, heartbeats. Every `execute` settles exactly once.
 */
import { EventEmitter } from 'node:events';
import { create } from '@bufbuild/protobuf';
import type { Logger } from 'pino';
import { BrokerError } from '../core/errors';
import type { BatchRequest, BatchResponse, ModelCopy } from '../core/model-copies';
import { checkTensorData, isDataType, type Tensor, type TensorSpec } from '../proto/tensor';
import type { ModelMetadata } from '../core/types';
import {
  BatchItemSchema,
  BatchSchema,
  EndSequenceSchema,
  EndSequence_Reason,
  SequenceControlSchema,
  ShutdownSchema,
  encodeFrames,
  tensorsFromFrames,
  toMeta,
  type DecodedMessage,
  type Ready,
  type Response,
  type Result,
  type TensorSpec as WireTensorSpec,
} from '../proto/link';
import type { LinkPeer, LinkSender } from './link-server';
import { stageTimer } from '../core/stage-timings';

const LINK_RECEIVE = stageTimer('link', 'link_receive');

export type CopyState = 'starting' | 'ready' | 'draining' | 'failed' | 'stopped';

export interface CopyConnectionOptions {
  id: string;
  model: string;
  link: LinkSender;
  /** The registry's batch_size: caps the READY max_batch. */
  batchSize: number;
  /** Link heartbeat interval (default 1000 ms). */
  heartbeatMs?: number;
  /** Idle heartbeat silence beyond missedHeartbeats × heartbeatMs = dead (default 5). */
  missedHeartbeats?: number;
  /** The registry's max_sequences, used when READY gives none. */
  maxSequences?: number;
  /** Idle heartbeat silence beyond this = dead (overrides missedHeartbeats × heartbeatMs). */
  heartbeatTimeoutMs?: number;
  /** Hang timeout of one batch by its rows (default: the batch's own deadline). */
  batchTimeoutMs?: (rows: number, leftToDeadlineMs: number) => number;
  /** Batches lost with the copy (crash, hang) are rejected as retryable when they carry no sequence. */
  retryOnFailure?: boolean;
  /**
   * An adopted copy (broker restart): it already sent READY to the previous
   * broker. The first message heard from it makes it ready with this metadata.
   */
  adopted?: { metadata: ModelMetadata; credits: number; maxSequences?: number };
  logger?: Logger;
}

/**
 * A batch lost because its copy died or hung. `retryable` tells the core's
 * scheduler it may put the requests back in the queue once (stateless rows of
 * a model with retry_on_failure).
 */
export class CopyLostError extends BrokerError {
  constructor(message: string, retryable: boolean) {
    super('UNAVAILABLE', message, { retryable, kind: 'copy-lost' });
  }
}

/** Why the broker gave up on a live copy (its exit is then named by this, not by the message). */
export type CopyFailKind = 'hung' | 'heartbeat' | 'startup';

interface Pending {
  batch: BatchRequest;
  resolve: (r: BatchResponse) => void;
  reject: (e: BrokerError) => void;
  timer: NodeJS.Timeout;
  /** performance.now() when zeromq took the batch (for the link_receive stage). */
  sentAt?: number;
}

/**
 * Events: 'ready' (ModelMetadata), 'capacity' (), 'failed' (reason: string) when
 * the copy must be considered dead (hang, heartbeat silence), 'leaving' () when
 * the copy announced its shutdown.
 */
export class CopyConnection extends EventEmitter implements ModelCopy, LinkPeer {
  readonly id: string;
  readonly model: string;
  state: CopyState = 'starting';
  credits = 1;
  connected = false;
  lastSeen = Date.now();
  /** Last time a batch was sent or settled (idle TTL). */
  lastActiveAt = Date.now();
  /** Why the copy failed or stopped, once it did. */
  reason?: string;
  /** Set by fail(): why the broker gave up on the copy. */
  failKind?: CopyFailKind;
  private meta?: ModelMetadata;
  private readonly inflight = new Map<bigint, Pending>();
  private readonly heartbeatMs: number;
  private readonly missed: number;
  private batchSize: number;

  constructor(private readonly opts: CopyConnectionOptions) {
    super();
    this.id = opts.id;
    this.model = opts.model;
    this.batchSize = opts.batchSize;
    this.heartbeatMs = opts.heartbeatMs ?? 1000;
    this.missed = opts.missedHeartbeats ?? 5;
  }

  /** Started by an earlier run of this broker (LinkPeer: recognised by its routing id, no second READY). */
  get adopted(): boolean {
    return this.opts.adopted !== undefined;
  }

  get metadata(): ModelMetadata {
    return this.meta ?? { name: this.model, version: '', maxBatch: this.batchSize, inputs: [], outputs: [] };
  }

  /** True once READY was received. */
  get hasMetadata(): boolean {
    return this.meta !== undefined;
  }

  get inFlight(): number {
    return this.inflight.size;
  }

  /** The registry's batch_size changed: recompute maxBatch. */
  setBatchSize(n: number): void {
    this.batchSize = n;
    if (this.meta && this.readyMaxBatch !== undefined) this.meta = { ...this.meta, maxBatch: this.capBatch(this.readyMaxBatch) };
  }

  private readyMaxBatch?: number;

  hasCapacity(): boolean {
    return this.state === 'ready' && this.inflight.size < this.credits;
  }

  busy(): boolean {
    return this.inflight.size > 0;
  }

  execute(batch: BatchRequest): Promise<BatchResponse> {
    for (const it of batch.items) if (it.sequence) this.sequences.add(it.sequence.id);
    if (!this.hasCapacity()) {
      return Promise.reject(
        new BrokerError('UNAVAILABLE', `model copy ${this.id} of ${this.model} cannot take a batch (${this.state}, ${this.inflight.size}/${this.credits} in flight)`),
      );
    }
    if (this.inflight.has(batch.batchId)) {
      return Promise.reject(new BrokerError('INTERNAL', `batch ${batch.batchId} is already in flight on copy ${this.id}`));
    }
    let frames: Buffer[];
    try {
      const value = create(BatchSchema, {
        batchId: batch.batchId,
        model: batch.model,
        items: batch.items.map((it) =>
          create(BatchItemSchema, {
            requestId: it.requestId,
            rows: it.rows,
            ...(it.sequence ? { sequence: create(SequenceControlSchema, it.sequence) } : {}),
          }),
        ),
        tensors: batch.tensors.map(toMeta),
        outputs: batch.outputs,
        whole: batch.whole ?? false,
      });
      frames = encodeFrames({ case: 'batch', value }, batch.tensors);
    } catch (err) {
      return Promise.reject(new BrokerError('INTERNAL', `cannot encode batch: ${(err as Error).message}`));
    }
    this.lastActiveAt = Date.now();
    return new Promise<BatchResponse>((resolve, reject) => {
      const rows = batch.items.reduce((n, it) => n + it.rows, 0);
      const left = Math.max(0, batch.deadline - Date.now());
      const wait = this.opts.batchTimeoutMs ? this.opts.batchTimeoutMs(rows, left) : left;
      const timer = setTimeout(() => this.onHang(batch.batchId), wait);
      const pending: Pending = { batch, resolve, reject, timer };
      this.inflight.set(batch.batchId, pending);
      this.opts.link.send(this.id, frames, () => {
        pending.sentAt = performance.now();
        batch.onSent?.();
      });
    });
  }

  handle(msg: DecodedMessage): void {
    this.connected = true;
    this.lastSeen = Date.now();
    const kind = msg.envelope.kind;
    const adopted = this.opts.adopted;
    if (adopted && this.state === 'starting' && kind.case !== 'ready' && kind.case !== 'shutdown') {
      // First sign of life of a copy started by an earlier broker: it is ready as it was.
      this.opts.logger?.info({ copy: this.id, via: kind.case }, 'adopted copy is alive');
      this.becomeReady(adopted.metadata, adopted.credits, adopted.metadata.maxBatch, adopted.maxSequences);
    }
    switch (kind.case) {
      case 'ready':
        this.onReady(kind.value);
        return;
      case 'result':
        this.onResult(kind.value, msg.frames);
        return;
      case 'response':
        this.onResponse(kind.value, msg.frames);
        return;
      case 'heartbeat':
        return;
      case 'shutdown':
        this.opts.logger?.info({ copy: this.id, reason: kind.value.reason }, 'copy is leaving');
        if (this.state === 'ready' || this.state === 'starting') this.state = 'draining';
        this.emit('leaving');
        return;
      default:
        this.opts.logger?.warn({ copy: this.id, kind: kind.case }, 'copy sent a message only the broker sends; ignored');
    }
  }

  tick(now: number): void {
    if ((this.state === 'ready' || this.state === 'draining') && this.inflight.size === 0) {
      const silent = now - this.lastSeen;
      const limit = this.opts.heartbeatTimeoutMs ?? this.missed * this.heartbeatMs;
      if (silent > limit) this.fail(`sent no heartbeat for ${silent} ms (heartbeat timeout ${limit} ms)`, 'heartbeat');
    }
  }

  /** Marks the copy dead (hang, silence, startup timeout): rejects every batch in flight, emits 'failed'. */
  fail(reason: string, kind: CopyFailKind): void {
    if (this.state === 'failed' || this.state === 'stopped') return;
    this.state = 'failed';
    this.reason = reason;
    this.failKind = kind;
    this.rejectAll(`model copy ${this.id} of ${this.model} ${reason}`);
    this.emit('failed', reason);
  }

  /** The copy's process/container ended: rejects every batch in flight. */
  ended(message: string): void {
    if (this.state !== 'failed') this.reason = message;
    this.state = this.state === 'failed' ? 'failed' : 'stopped';
    this.rejectAll(message);
  }

  /** Sends SHUTDOWN: the copy finishes its batches, then exits. No new batches. */
  shutdown(graceMs: number, reason: string): void {
    if (this.state === 'ready' || this.state === 'starting') this.state = 'draining';
    this.opts.link.send(this.id, encodeFrames({ case: 'shutdown', value: create(ShutdownSchema, { graceMs, reason }) }));
  }

  /** Resolves when nothing is in flight any more (or the copy ended). */
  drained(): Promise<void> {
    if (this.inflight.size === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const check = () => {
        if (this.inflight.size === 0) {
          this.off('settled', check);
          resolve();
        }
      };
      this.on('settled', check);
    });
  }

  private capBatch(readyMax: number): number {
    return readyMax > 0 ? Math.min(readyMax, this.batchSize) : this.batchSize;
  }

  /** Sequence slots: READY's max_sequences, else the registry's, else the max batch. */
  maxSequences = 0;
  /** Sequences with state on this copy (seen in a batch, not yet ended): a copy holding any is not idle. */
  readonly sequences = new Set<string>();

  /** Sends EndSequence: the copy drops the sequence's state. */
  endSequence(id: string, slot: number, reason: 'end' | 'cancelled' | 'idle'): void {
    this.sequences.delete(id);
    if (this.state !== 'ready' && this.state !== 'draining') return;
    const value = create(EndSequenceSchema, { id, slot, reason: END_REASON[reason] });
    this.opts.link.send(this.id, encodeFrames({ case: 'endSequence', value }));
  }

  private onReady(r: Ready): void {
    if (this.state !== 'starting') {
      this.opts.logger?.warn({ copy: this.id, state: this.state }, 'duplicate READY ignored');
      return;
    }
    const meta: ModelMetadata = {
      name: r.model || this.model,
      version: r.version,
      maxBatch: r.maxBatch,
      inputs: r.inputs.map(toSpec),
      outputs: r.outputs.map(toSpec),
      ...(r.decoupled ? { decoupled: true } : {}),
    };
    this.becomeReady(meta, r.credits, r.maxBatch, r.maxSequences);
  }

  private becomeReady(meta: ModelMetadata, credits: number, readyMaxBatch: number, maxSequences?: number): void {
    this.readyMaxBatch = readyMaxBatch;
    this.credits = Math.max(1, credits);
    this.meta = { ...meta, maxBatch: this.capBatch(readyMaxBatch) };
    this.maxSequences = maxSequences || this.opts.maxSequences || this.meta.maxBatch;
    this.state = 'ready';
    this.lastActiveAt = Date.now();
    this.emit('ready', this.meta);
    this.emit('capacity');
  }

  /** What a restarted broker needs to adopt this copy: READY's data. */
  get readyInfo(): { metadata: ModelMetadata; credits: number; maxSequences: number } | undefined {
    if (!this.meta) return undefined;
    return { metadata: { ...this.meta, maxBatch: this.readyMaxBatch ?? this.meta.maxBatch }, credits: this.credits, maxSequences: this.maxSequences };
  }

  private onResult(r: Result, frames: Buffer[]): void {
    const p = this.inflight.get(r.batchId);
    if (!p) {
      this.opts.logger?.warn({ copy: this.id, batch: String(r.batchId) }, 'result for a batch not in flight (late or unknown); ignored');
      return;
    }
    this.settle(r.batchId);
    if (p.sentAt !== undefined) LINK_RECEIVE.observeMs(performance.now() - p.sentAt - Number(r.computeNs) / 1e6);
    if (r.error) {
      p.reject(new BrokerError('INTERNAL', `model error: ${r.error}`));
      return;
    }
    try {
      if (r.items.length !== p.batch.items.length) {
        throw new Error(`${r.items.length} item statuses for ${p.batch.items.length} items`);
      }
      const tensors = tensorsFromFrames(r.tensors, frames);
      for (const t of tensors) {
        // BYTES frames must hold exactly their elements (fixed sizes were checked above).
        const bad = t.datatype === 'BYTES' ? checkTensorData(t, 'output') : undefined;
        if (bad) throw new Error(bad);
      }
      p.resolve({
        itemErrors: r.items.map((s) => (s.error ? s.error : undefined)),
        tensors,
        computeNs: Number(r.computeNs),
        computeInputNs: Number(r.computeInputNs),
        computeOutputNs: Number(r.computeOutputNs),
      });
    } catch (err) {
      p.reject(new BrokerError('INTERNAL', `model copy ${this.id} of ${this.model} sent a bad result: ${(err as Error).message}`));
    }
  }

  /** A decoupled copy's response to one item of a batch in flight (before that batch's RESULT). */
  private onResponse(r: Response, frames: Buffer[]): void {
    const p = this.inflight.get(r.batchId);
    if (!p || !p.batch.onResponse) {
      this.opts.logger?.warn({ copy: this.id, batch: String(r.batchId) }, 'response for a batch not in flight, or from a copy not decoupled; ignored');
      return;
    }
    if (r.item >= p.batch.items.length) {
      this.opts.logger?.warn({ copy: this.id, batch: String(r.batchId), item: r.item }, 'response for an item the batch does not have; ignored');
      return;
    }
    let tensors: Tensor[];
    try {
      tensors = tensorsFromFrames(r.tensors, frames);
    } catch (err) {
      this.opts.logger?.warn({ copy: this.id, batch: String(r.batchId), err }, 'bad response frames; ignored');
      return;
    }
    p.batch.onResponse(r.item, tensors);
  }

  private onHang(batchId: bigint): void {
    const p = this.inflight.get(batchId);
    if (!p) return;
    this.settle(batchId);
    p.reject(this.lostError(`model copy ${this.id} of ${this.model} did not answer batch ${batchId} in time (hung)`, p.batch));
    this.fail(`did not answer batch ${batchId} before its deadline (hung)`, 'hung');
  }

  private settle(batchId: bigint): void {
    const p = this.inflight.get(batchId);
    if (!p) return;
    clearTimeout(p.timer);
    this.inflight.delete(batchId);
    this.lastActiveAt = Date.now();
    this.emit('settled');
    if (this.hasCapacity()) this.emit('capacity');
  }

  private rejectAll(message: string): void {
    const all = [...this.inflight.entries()];
    for (const [id, p] of all) {
      this.settle(id);
      p.reject(this.lostError(message, p.batch));
    }
  }

  private lostError(message: string, batch: BatchRequest): CopyLostError {
    const retryable = !!this.opts.retryOnFailure && batch.items.every((it) => !it.sequence);
    return new CopyLostError(message, retryable);
  }
}

const END_REASON = {
  end: EndSequence_Reason.END,
  cancelled: EndSequence_Reason.CANCELLED,
  idle: EndSequence_Reason.IDLE,
} as const;

function toSpec(s: WireTensorSpec): TensorSpec {
  return {
    name: s.name,
    datatype: isDataType(s.datatype) ? s.datatype : 'BYTES',
    shape: s.shape.map(Number),
    ...(s.optional ? { optional: true } : {}),
    ...(s.labels.length > 0 ? { labels: [...s.labels] } : {}),
  };
}
