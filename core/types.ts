import type { Tensor, TensorSpec } from '../proto/tensor';

/** Control data of a request that belongs to a sequence (stateful models, core/sequences.ts). */
export interface SequenceRef {
  /** The correlation id (KServe `sequence_id`, ZeroMQ `source_id`); never empty. */
  id: string;
  /** First request of the sequence: takes a slot (or restarts an active sequence in place). */
  start: boolean;
  /** Last request: once it is answered the model is told (EndSequence, reason end) and the slot is freed. */
  end: boolean;
  /**
   * Aborted when the client feeding this sequence goes away (a gRPC stream, a
   * video upload, a ZeroMQ peer): the sequence is cancelled and the model told.
   */
  owner?: AbortSignal;
}

/** The one internal form every bridge turns a client request into. */
export interface InferRequest {
  /** Unique per broker; bridges use the client's id when it gave one. */
  id: string;
  model: string;
  version?: string;
  inputs: Tensor[];
  /** Outputs wanted; undefined = all. */
  outputs?: string[];
  /** 0 = default, 1 = highest; larger numbers are lower priority (KServe/Triton). */
  priority?: number;
  /** Overrides the model's timeout_ms for this request. */
  timeoutMs?: number;
  sequence?: SequenceRef;
  /** Aborted when the client goes away; the request leaves the queue. */
  signal?: AbortSignal;
}

export interface InferResult {
  id: string;
  model: string;
  version: string;
  outputs: Tensor[];
}

/** What a model copy said about itself in READY. */
export interface ModelMetadata {
  name: string;
  version: string;
  /** Rows per batch the copy accepts. */
  maxBatch: number;
  inputs: TensorSpec[];
  outputs: TensorSpec[];
}

export interface ModelReadiness {
  ready: boolean;
  /**
   * starting: no copy ready yet, none failed (requests queue through a cold start);
   * failed: the last copy died or timed out and none is ready (requests fail at once with `reason`).
   */
  state?: 'ready' | 'starting' | 'failed' | 'stopped';
  /** Why not ready (starting, the last crash's exit code and log lines, ...). */
  reason?: string;
}
