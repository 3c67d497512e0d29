/**
 * BrokerError -> gRPC status, in one place (GRPC_STATUS of core/errors.ts).
 * The message goes out as the status details; RESOURCE_EXHAUSTED also carries
 * a `retry-after` trailer (seconds), like the REST bridge's header.
 */
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { BrokerError, GRPC_STATUS, toBrokerError } from '../../core/errors';
import { withoutLogLines } from '../shared/access';
import { bounded } from '../shared/bounded';

export type GrpcStatus = Partial<grpc.StatusObject> & { code: grpc.status; details: string };

/**
 * The message a client gets: bounded (it may quote the client's input), and
 * without a crashed copy's log lines unless the caller holds the admin token.
 */
export function clientMessage(e: BrokerError, adminDetails: boolean): string {
  return bounded(adminDetails ? e.message : withoutLogLines(e.message));
}

export function grpcStatus(e: BrokerError, adminDetails = false): GrpcStatus {
  const metadata = new grpc.Metadata();
  if (e.code === 'RESOURCE_EXHAUSTED' && e.retryAfterMs !== undefined) {
    metadata.set('retry-after', String(Math.max(1, Math.ceil(e.retryAfterMs / 1000))));
  }
  return { code: GRPC_STATUS[e.code] as grpc.status, details: clientMessage(e, adminDetails), metadata };
}

/** Maps any error; an unexpected one (INTERNAL) is logged with its stack. */
export function toGrpcStatus(err: unknown, log: Logger, rpc: string, adminDetails = false): GrpcStatus {
  const e = toBrokerError(err);
  if (e.code === 'INTERNAL') {
    // A model's own error is a BrokerError; anything else is a bug here: keep its stack.
    log.warn({ rpc, err: err instanceof BrokerError || !(err instanceof Error) ? { message: bounded(e.message) } : err }, 'gRPC call failed');
  } else log.debug({ rpc, code: e.code, err: { message: bounded(e.message) } }, 'gRPC call refused');
  return grpcStatus(e, adminDetails);
}
