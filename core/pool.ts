import type { EventEmitter } from 'node:events';
import type { Tensor } from '../proto/tensor';
import type { ModelMetadata, ModelReadiness } from './types';
import type { SequenceControl } from './batch';

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
}

export interface BatchResponse {
  /** One entry per item: undefined = ok, else the model's error for that item. */
  itemErrors: (string | undefined)[];
  /** Outputs, batch dimension first, covering every row of the batch. */
  tensors: Tensor[];
  computeNs: number;
}

/**
 * One running, READY copy of a model. `execute` resolves with the copy's
 * answer, or rejects with a BrokerError (model error, crash, hang, shutdown):
 * it always settles.
 */
export interface ModelCopy {
  readonly id: string;
  readonly model: string;
  readonly metadata: ModelMetadata;
  /** True while the copy accepts another batch (in flight < credits). */
  hasCapacity(): boolean;
  execute(batch: BatchRequest): Promise<BatchResponse>;
  /** Sequence slots of a stateful model's copy (READY max_sequences, else the registry's, else max batch). */
  readonly maxSequences: number;
  /** Tells the copy a sequence is over so it drops its state (EndSequence on the link). */
  endSequence(id: string, slot: number, reason: SequenceEndReason): void;
}

export type SequenceEndReason = 'end' | 'cancelled' | 'idle';

/**
 * The core's view of the running copies. Implemented by the task manager.
 * Emits 'capacity' (model: string) whenever a copy of `model` may take a batch
 * (it became READY or finished one), 'metadata' (model, ModelMetadata), and
 * 'copy-gone' (model, copyId, reason) when a copy that was ready dies or stops
 * (its sequences are lost with it).
 */
export interface CopyPool extends EventEmitter {
  /** A ready copy of `model` with a free credit, least loaded first. */
  available(model: string): ModelCopy | undefined;
  /** Every ready copy of `model` (busy or not): where new sequences can be placed. */
  readyCopies(model: string): ModelCopy[];
  /** Asks for one more copy (stateful models out of slots); false when max_replicas is reached. */
  scaleUp(model: string, reason: string): boolean;
  /** Metadata from the last READY of any copy of this model, if one was seen. */
  metadata(model: string): ModelMetadata | undefined;
  readiness(model: string): ModelReadiness;
}

/** Load/unload of a model's copies (the repository extension). The task manager implements it. */
export interface ModelControl {
  /** Starts the model's copies; resolves when one is ready. */
  load(model: string): Promise<void>;
  /** Stops every copy; the model stays registered and answers 503 until loaded. */
  unload(model: string): Promise<void>;
}
