/**
 * The broker's view of one model copy over the link: READY handshake, credits,
 * batches in flight, heartbeats. Every `execute` settles exactly once.
 */
import { EventEmitter } from 'node:events';
import { create } from '@bufbuild/protobuf';
import type { Logger } from 'pino';
import { BrokerError } from '../core/errors';
import type { BatchRequest, BatchResponse, ModelCopy } from '../core/pool';
import { isDataType, type TensorSpec } from '../core/tensor';
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
  type Result,
  type TensorSpec as WireTensorSpec,
} from '../proto/link';
import type { LinkPeer, LinkSender } from './link-server';

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
  logger?: Logger;
}

interface Pending {
  batch: BatchRequest;
  resolve: (r: BatchResponse) => void;
  reject: (e: BrokerError) => void;
  timer: NodeJS.Timeout;
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
  /** Why the copy failed or stopped, once it did. */
  reason?: string;
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

  execute(batch: BatchRequest): Promise<BatchResponse> {
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
      });
      frames = encodeFrames({ case: 'batch', value }, batch.tensors);
    } catch (err) {
      return Promise.reject(new BrokerError('INTERNAL', `cannot encode batch: ${(err as Error).message}`));
    }
    return new Promise<BatchResponse>((resolve, reject) => {
      const wait = Math.max(0, batch.deadline - Date.now());
      const timer = setTimeout(() => this.onHang(batch.batchId), wait);
      this.inflight.set(batch.batchId, { batch, resolve, reject, timer });
      this.opts.link.send(this.id, frames);
    });
  }

  handle(msg: DecodedMessage): void {
    this.connected = true;
    this.lastSeen = Date.now();
    const kind = msg.envelope.kind;
    switch (kind.case) {
      case 'ready':
        this.onReady(kind.value);
        return;
      case 'result':
        this.onResult(kind.value, msg.frames);
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
      if (silent > this.missed * this.heartbeatMs) this.fail(`sent no heartbeat for ${silent} ms`);
    }
  }

  /** Marks the copy dead (hang, silence, startup timeout): rejects every batch in flight, emits 'failed'. */
  fail(reason: string): void {
    if (this.state === 'failed' || this.state === 'stopped') return;
    this.state = 'failed';
    this.reason = reason;
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

  /** Sends EndSequence: the copy drops the sequence's state. */
  endSequence(id: string, slot: number, reason: 'end' | 'cancelled' | 'idle'): void {
    if (this.state !== 'ready' && this.state !== 'draining') return;
    const value = create(EndSequenceSchema, { id, slot, reason: END_REASON[reason] });
    this.opts.link.send(this.id, encodeFrames({ case: 'endSequence', value }));
  }

  private onReady(r: Ready): void {
    if (this.state !== 'starting') {
      this.opts.logger?.warn({ copy: this.id, state: this.state }, 'duplicate READY ignored');
      return;
    }
    this.readyMaxBatch = r.maxBatch;
    this.credits = Math.max(1, r.credits);
    this.meta = {
      name: r.model || this.model,
      version: r.version,
      maxBatch: this.capBatch(r.maxBatch),
      inputs: r.inputs.map(toSpec),
      outputs: r.outputs.map(toSpec),
    };
    this.maxSequences = r.maxSequences || this.opts.maxSequences || this.meta.maxBatch;
    this.state = 'ready';
    this.emit('ready', this.meta);
    this.emit('capacity');
  }

  private onResult(r: Result, frames: Buffer[]): void {
    const p = this.inflight.get(r.batchId);
    if (!p) {
      this.opts.logger?.warn({ copy: this.id, batch: String(r.batchId) }, 'result for a batch not in flight (late or unknown); ignored');
      return;
    }
    this.settle(r.batchId);
    if (r.error) {
      p.reject(new BrokerError('INTERNAL', `model error: ${r.error}`));
      return;
    }
    try {
      if (r.items.length !== p.batch.items.length) {
        throw new Error(`${r.items.length} item statuses for ${p.batch.items.length} items`);
      }
      const tensors = tensorsFromFrames(r.tensors, frames);
      p.resolve({
        itemErrors: r.items.map((s) => (s.error ? s.error : undefined)),
        tensors,
        computeNs: Number(r.computeNs),
      });
    } catch (err) {
      p.reject(new BrokerError('INTERNAL', `model copy ${this.id} of ${this.model} sent a bad result: ${(err as Error).message}`));
    }
  }

  private onHang(batchId: bigint): void {
    const p = this.inflight.get(batchId);
    if (!p) return;
    this.settle(batchId);
    p.reject(new BrokerError('UNAVAILABLE', `model copy ${this.id} of ${this.model} did not answer batch ${batchId} in time (hung)`));
    this.fail(`did not answer batch ${batchId} before its deadline (hung)`);
  }

  private settle(batchId: bigint): void {
    const p = this.inflight.get(batchId);
    if (!p) return;
    clearTimeout(p.timer);
    this.inflight.delete(batchId);
    this.emit('settled');
    if (this.hasCapacity()) this.emit('capacity');
  }

  private rejectAll(message: string): void {
    const all = [...this.inflight.entries()];
    for (const [id, p] of all) {
      this.settle(id);
      p.reject(new BrokerError('UNAVAILABLE', message));
    }
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
  };
}
