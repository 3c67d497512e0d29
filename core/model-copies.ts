/**
 * What one model's scheduler needs of that model's copies, and nothing more.
 * The task manager implements it per model (task-manager/model-controller.ts);
 * another runtime (Kubernetes, say) implements it per model too. No method
 * takes a model name: a scheduler holds the copies of its own model.
 */
import type { EventEmitter } from 'node:events';
import type { Tensor } from '../proto/tensor';
import type { ModelSpec } from './model-spec';
import type { ModelMetadata, ModelReadiness } from './types';

/** Per-row sequence control data carried to the model (stateful models): link SequenceControl. */
export interface SequenceControl {
  id: string;
  slot: number;
  start: boolean;
  end: boolean;
}

/** A batch as the core hands it to a model copy. */
export interface BatchRequest {
  batchId: bigint;
  model: string;
  items: { requestId: string; rows: number; sequence?: SequenceControl }[];
  /** Inputs, batch dimension first, rows in item order. */
  tensors: Tensor[];
  /** Outputs wanted; empty = all. */
  outputs: string[];
  /** Epoch ms after which the copy is considered hung for this batch. */
  deadline: number;
  /** A non-batching model: one item, tensors without a batch dimension (link Batch.whole). */
  whole?: boolean;
  /**
   * Decoupled copies: called for each response to item `item` before the batch
   * settles (link Response); `tensors` hold that item's rows only.
   */
  onResponse?: (item: number, tensors: Tensor[]) => void;
  /** Called once the link took the batch (zeromq's send resolved or failed). */
  onSent?: () => void;
}

export interface BatchResponse {
  /** One entry per item: undefined = ok, else the model's error for that item. */
  itemErrors: (string | undefined)[];
  /** Outputs, batch dimension first, covering every row of the batch. */
  tensors: Tensor[];
  computeNs: number;
  /** The copy's decode / encode time around predictBatch (0 when it did not report them). */
  computeInputNs?: number;
  computeOutputNs?: number;
}

export type SequenceEndReason = 'end' | 'cancelled' | 'idle';

/**
 * One running, READY copy of a model. `execute` resolves with the copy's
 * answer, or rejects with a BrokerError (model error, crash, hang, shutdown;
 * `retryable` when the batch may run again elsewhere): it always settles.
 */
export interface ModelCopy {
  readonly id: string;
  readonly model: string;
  readonly metadata: ModelMetadata;
  /** True while the copy accepts another batch (in flight < credits). */
  hasCapacity(): boolean;
  /** True while a batch is in flight at the copy (with credits 2 it may still take one more). */
  busy(): boolean;
  execute(batch: BatchRequest): Promise<BatchResponse>;
  /** Sequence slots of a stateful model's copy (READY max_sequences, else the registry's, else max batch). */
  readonly maxSequences: number;
  /** Tells the copy a sequence is over so it drops its state (EndSequence on the link). */
  endSequence(id: string, slot: number, reason: SequenceEndReason): void;
}

/** The typed events of one model's copies. */
export interface ModelCopiesEvents {
  /** A copy may take a batch (it became READY or finished one). */
  capacity: [];
  /** A copy that was ready died or stops: its sequences are lost with it. */
  'copy-gone': [copyId: string, reason: string];
  /** A copy of the current spec sent READY (first time, or after a spec change). */
  metadata: [metadata: ModelMetadata];
  /** The model's phase changed (see ModelPhase). */
  phase: [readiness: ModelReadiness];
}

/**
 * One model's copies. Queries (`available`, `ready`, `metadata`,
 * `readiness`) have no side effects; `requestCopy` and `demand` are the
 * explicit ways to get copies started.
 */
export interface ModelCopies extends EventEmitter<ModelCopiesEvents> {
  readonly model: string;
  /** A ready copy with a free credit (new copies of a roll first, then the least loaded). */
  available(): ModelCopy | undefined;
  /** Every ready copy (busy or not): where new sequences can be placed. */
  ready(): ModelCopy[];
  /** Asks for one more copy, logged with `reason`; false when none can come (max_replicas, unloaded, failed, closing). */
  requestCopy(reason: string): boolean;
  /** READY metadata of the current spec's copies, if one was seen. */
  readonly metadata?: ModelMetadata;
  readiness(): ModelReadiness;
  /**
   * The scheduler's queue depth and running requests, reported as they change.
   * Requests queued at zero copies start one (the cold start).
   */
  demand(queued: number, running: number): void;
  /** Repository load: (re)start the copies; resolves when one is READY. */
  load(): Promise<void>;
  /** Repository unload: stop every copy and keep the model stopped until load(). */
  unload(): Promise<void>;
  /** The model was removed or the broker stops: stop its copies and forget it. */
  close(reason: string): Promise<void>;
}

/** Hands out the copies of one model; called by the Broker on each registry put. */
export interface CopySource {
  /** The copies of `spec.name`, created or brought in line with `spec` (same object for the same name). */
  forModel(spec: ModelSpec): ModelCopies;
}
