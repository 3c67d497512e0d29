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
  /**
   * Background work (an asynchronous job), set by the broker's own job workers, never by a client:
   * it fills free rows of live batches, and goes out in a batch of its own only on an idle copy
   * after live traffic has paused (SchedulerConfig.backgroundIdleMs).
   */
  background?: boolean;
  /** Overrides the model's timeout_ms for this request. */
  timeoutMs?: number;
  sequence?: SequenceRef;
  /** Aborted when the client goes away; the request leaves the queue. */
  signal?: AbortSignal;
  /**
   * Decoupled models: receives each of the 0..n responses as the model sends
   * them; the returned promise then resolves (outputs empty) once the model
   * sent its final marker. Without it a decoupled model refuses the request
   * (UNIMPLEMENTED: the call takes exactly one answer).
   */
  onResponse?: (response: InferResult) => void;
  /**
   * Called when the broker has stopped reading `inputs` for the link: the
   * request's batch went to the link (zeromq's send resolved), or the request
   * ended without one being sent. At least once per request (again after a
   * retried batch is sent), so a bridge that lends pooled bytes guards it.
   */
  onSent?: () => void;
  /**
   * Set when another broker forwarded this request (core/cluster.ts): the id
   * of that broker. A forwarded request is always served here, never forwarded
   * again, so a request makes at most one hop.
   */
  forwardedBy?: string;
}

export interface InferResult {
  id: string;
  model: string;
  version: string;
  outputs: Tensor[];
  /** Decoupled models, on the final result: how many responses went to onResponse. */
  responses?: number;
}

/** What a model copy said about itself in READY. */
export interface ModelMetadata {
  name: string;
  version: string;
  /** Rows per batch the copy accepts. */
  maxBatch: number;
  inputs: TensorSpec[];
  outputs: TensorSpec[];
  /** READY `decoupled`: 0..n responses per request, then a final marker (Triton's decoupled transaction policy). */
  decoupled?: boolean;
}

/**
 * One model's phase, owned by its controller:
 * - unloaded: stopped by the repository API until loaded again (requests fail at once);
 * - at-zero: no copy and none wanted (min_replicas 0): the next request starts one;
 * - starting: a copy is starting, restarting after a failure or waiting for room (requests queue);
 * - ready: every wanted copy serves;
 * - degraded: some copies serve, fewer than wanted (a copy failed or waits for room);
 * - failed: copies keep failing, or can never be placed (requests fail at once with the reason);
 * - draining: the model was removed or the broker stops.
 */
export type ModelPhase = 'unloaded' | 'at-zero' | 'starting' | 'ready' | 'degraded' | 'failed' | 'draining';

export interface ModelReadiness {
  /** A copy serves (phase ready or degraded). */
  ready: boolean;
  phase: ModelPhase;
  /** Copies starting now (placed, no READY yet): LOADING in the repository index. */
  starting?: number;
  /** Why not (fully) ready: at zero, starting after a crash, the failure's exit code and log lines, ... */
  reason?: string;
}
