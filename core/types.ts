import type { Tensor, TensorSpec } from './tensor';

/** Control data of a request that belongs to a sequence (stateful models; later issue). */
export interface SequenceRef {
  id: string;
  start: boolean;
  end: boolean;
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
