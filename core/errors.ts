/**
 * One error vocabulary for the whole broker. Each bridge maps a code to its
 * protocol once (HTTP status, gRPC status, ZeroMQ error reply).
 */
export type ErrorCode =
  | 'INVALID_ARGUMENT'
  | 'NOT_FOUND'
  | 'RESOURCE_EXHAUSTED'
  | 'UNAVAILABLE'
  | 'DEADLINE_EXCEEDED'
  | 'CANCELLED'
  | 'PAYLOAD_TOO_LARGE'
  | 'UNSUPPORTED_MEDIA_TYPE'
  | 'UNAUTHENTICATED'
  | 'PERMISSION_DENIED'
  /** The call cannot serve this model (a decoupled model on a one-answer call, as Triton's UNSUPPORTED). */
  | 'UNIMPLEMENTED'
  | 'INTERNAL';

/**
 * Why something failed, for code that must decide on it (never the message text):
 * - copy-lost: the model copy died or hung under the batch;
 * - sequence-lost: a stateful sequence's state died with its copy;
 * - model-error: the model answered with an error for this item;
 * - model-unavailable: the model is failed, unloaded or was removed;
 * - overloaded: a queue, backlog or cap is full;
 * - shutting-down: the broker is stopping.
 */
export type FailureKind = 'copy-lost' | 'sequence-lost' | 'model-error' | 'model-unavailable' | 'overloaded' | 'shutting-down';

export interface BrokerErrorOptions {
  /** For RESOURCE_EXHAUSTED (and a backing-off load): when the client may try again. */
  retryAfterMs?: number;
  /** The same request may succeed when run again (e.g. on another copy): the scheduler re-queues it once. */
  retryable?: boolean;
  kind?: FailureKind;
  cause?: unknown;
}

export class BrokerError extends Error {
  readonly retryAfterMs?: number;
  readonly retryable: boolean;
  readonly kind?: FailureKind;

  constructor(
    readonly code: ErrorCode,
    message: string,
    /** A number is `retryAfterMs` (kept for the many RESOURCE_EXHAUSTED call sites). */
    opts?: number | BrokerErrorOptions,
  ) {
    const o: BrokerErrorOptions = typeof opts === 'number' ? { retryAfterMs: opts } : (opts ?? {});
    super(message, o.cause !== undefined ? { cause: o.cause } : undefined);
    this.name = 'BrokerError';
    this.retryAfterMs = o.retryAfterMs;
    this.retryable = o.retryable ?? false;
    this.kind = o.kind;
  }
}

export const HTTP_STATUS: Record<ErrorCode, number> = {
  INVALID_ARGUMENT: 400,
  UNAUTHENTICATED: 401,
  PERMISSION_DENIED: 403,
  NOT_FOUND: 404,
  PAYLOAD_TOO_LARGE: 413,
  UNSUPPORTED_MEDIA_TYPE: 415,
  RESOURCE_EXHAUSTED: 429,
  CANCELLED: 499,
  INTERNAL: 500,
  UNIMPLEMENTED: 501,
  UNAVAILABLE: 503,
  DEADLINE_EXCEEDED: 504,
};

/** gRPC status codes (numeric, so core needs no gRPC import). */
export const GRPC_STATUS: Record<ErrorCode, number> = {
  CANCELLED: 1,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  PAYLOAD_TOO_LARGE: 8,
  UNSUPPORTED_MEDIA_TYPE: 3,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  UNAUTHENTICATED: 16,
};

export function toBrokerError(err: unknown): BrokerError {
  if (err instanceof BrokerError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new BrokerError('INTERNAL', message);
}
