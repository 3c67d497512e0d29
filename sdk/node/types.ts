/** What a model author implements. */
import type { Logger } from 'pino';
import type { Tensor, TensorSpec } from '../../core/tensor';

export type { Tensor, TensorSpec, DataType } from '../../core/tensor';

export interface ModelMetadata {
  /** Defaults to env TB_MODEL when set (the broker's name for this model wins). */
  name?: string;
  version?: string;
  /** Rows per batch this copy accepts. */
  maxBatch: number;
  /** Declared inputs/outputs; for a batching model the first dimension is -1. */
  inputs: TensorSpec[];
  outputs: TensorSpec[];
  /** Batches accepted in flight (1 or 2); default 1. */
  credits?: number;
}

export interface SequenceInfo {
  id: string;
  slot: number;
  start: boolean;
  end: boolean;
}

/** One request's share of a batch: rows [offset, offset + rows). */
export interface BatchItemInfo {
  requestId: string;
  rows: number;
  offset: number;
  sequence?: SequenceInfo;
}

export type EndSequenceReason = 'unspecified' | 'end' | 'cancelled' | 'idle';

export interface BatchContext {
  batchId: bigint;
  items: BatchItemInfo[];
  /** Sum of items[].rows: the batch dimension of every input and output. */
  totalRows: number;
  /** Output names the broker wants (all declared outputs when it named none). */
  outputs: string[];
  /** Fails one item alone; its rows in the outputs are ignored (fill them with anything). */
  failItem(index: number, message: string): void;
  log: Logger;
}

export type PredictOutput = Record<string, Tensor> | Tensor[];

export interface Model {
  metadata: ModelMetadata;
  load?(): Promise<void> | void;
  /** Inputs keyed by name, batch dimension first. Outputs must cover ctx.totalRows rows. */
  predictBatch(inputs: Record<string, Tensor>, ctx: BatchContext): Promise<PredictOutput> | PredictOutput;
  /** A sequence is over: drop its state (stateful models). */
  endSequence?(id: string, reason: EndSequenceReason): Promise<void> | void;
}
