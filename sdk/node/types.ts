/** What a model author implements. */
import type { Logger } from 'pino';
import type { Tensor, TensorSpec } from '../../proto/tensor';

export type { Tensor, TensorSpec, DataType } from '../../proto/tensor';

export interface ModelMetadata {
  /** Defaults to env TB_MODEL when set (the broker's name for this model wins). */
  name?: string;
  version?: string;
  /** Rows per batch this copy accepts. */
  maxBatch: number;
  /** Declared inputs/outputs; for a batching model the first dimension is -1. */
  inputs: TensorSpec[];
  outputs: TensorSpec[];
  /**
   * Batches accepted in flight (1 or 2); default 1. With 2 the broker sends the next batch
   * while one runs, so it is already here when that one ends (no idle gap between batches).
   */
  credits?: number;
  /**
   * With credits 2: run both batches at once (true) instead of one after the other in
   * arrival order (default false, right for a model that uses one device or whole cores).
   */
  parallel?: boolean;
  /** Stateful models: sequence slots of this copy (READY max_sequences); default the registry's max_sequences, else maxBatch. */
  maxSequences?: number;
  /**
   * A decoupled model (Triton's decoupled transaction policy): implement
   * `predictStream`, which yields 0..n responses per request. Clients reach it
   * through gRPC ModelStreamInfer only.
   */
  decoupled?: boolean;
}

/** What predictStream gets besides the inputs: its request's place in the batch. */
export interface StreamContext {
  batchId: bigint;
  /** The request (batch item) this call answers. */
  item: BatchItemInfo;
  /** Non-batching model (batch_size 0): the inputs have no batch dimension. */
  whole: boolean;
  /** Output names the broker wants (all declared outputs when it named none). */
  outputs: string[];
  log: Logger;
}

/** Per-row control data of a stateful model's request (link SequenceControl). */
export interface SequenceInfo {
  /** The sequence (correlation) id the client gave. */
  id: string;
  /** The batch slot the broker gave the sequence on this copy: 0 … maxSequences-1, fixed for its life. */
  slot: number;
  /** First request of the sequence: start from a fresh state. */
  start: boolean;
  /** Last request: the broker sends EndSequence (reason end) once it is answered. */
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
  /** Sum of items[].rows: the batch dimension of every input and output (1 for a non-batching model). */
  totalRows: number;
  /**
   * A non-batching model (registry batch_size 0, Triton max_batch_size 0): one
   * item, and inputs and outputs have no batch dimension (shapes are whole).
   */
  whole: boolean;
  /** Output names the broker wants (all declared outputs when it named none). */
  outputs: string[];
  /** Fails one item alone; its rows in the outputs are ignored (fill them with anything). */
  failItem(index: number, message: string): void;
  /**
   * Stateful models: the state object of item `index`'s sequence — the same
   * object for every request of the sequence, a fresh one (`Model.createState`,
   * default `{}`) when the item has the start flag, dropped when the broker ends
   * the sequence. Throws for an item that is not in a sequence.
   */
  state<S extends object = Record<string, unknown>>(index: number): S;
  log: Logger;
}

export type PredictOutput = Record<string, Tensor> | Tensor[];

export interface Model {
  metadata: ModelMetadata;
  load?(): Promise<void> | void;
  /** Inputs keyed by name, batch dimension first. Outputs must cover ctx.totalRows rows. Required unless decoupled. */
  predictBatch?(inputs: Record<string, Tensor>, ctx: BatchContext): Promise<PredictOutput> | PredictOutput;
  /**
   * Decoupled models: called once per request with that request's own rows
   * (whole tensors for a non-batching model); each yielded value is one
   * response (outputs with the request's rows). Returning ends the request
   * (the final marker); throwing fails it with the message.
   */
  predictStream?(inputs: Record<string, Tensor>, ctx: StreamContext): AsyncIterable<PredictOutput> | Iterable<PredictOutput>;
  /** Stateful models: the initial state of a sequence (default `{}`); see BatchContext.state. */
  createState?(seq: SequenceInfo): object;
  /**
   * A sequence is over (stateful models). The SDK has already dropped its state
   * object and passes it here (undefined if the copy had none) to free what it holds.
   */
  endSequence?(id: string, reason: EndSequenceReason, info: { slot: number; state?: object }): Promise<void> | void;
}
