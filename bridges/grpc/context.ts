/** What every rpc implementation shares: the broker, the log, ids, and the access check. */
import type * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { BrokerApi } from '../../core/broker';
import { BrokerError } from '../../core/errors';
import type { AccessControl, CallClass, Caller } from '../shared/access';
import { bounded } from '../shared/bounded';
import type { SharedMemoryRegistry } from '../shared/shm';
import { callerOf } from './caller';
import { Undecodable } from './service-definition';

export interface HandlerOptions {
  broker: BrokerApi;
  logger: Logger;
  version: string;
  access: AccessControl;
  /** ModelStreamInfer: requests of one stream in flight at most; more wait (unread) on the wire. */
  streamWindow: number;
  /** System shared memory regions, shared with the REST bridge. */
  shm?: SharedMemoryRegistry;
}

export interface HandlerContext extends HandlerOptions {
  nextId(): string;
  /** Checks the caller against the policy (throws UNAUTHENTICATED / PERMISSION_DENIED). */
  admit(call: { metadata: grpc.Metadata; getPeer(): string }, cls: CallClass): Admitted;
}

export interface Admitted {
  caller: Caller;
  /** Whether the caller may see admin-only details (crash log lines); computed on demand. */
  admin(): boolean;
}

/** Ids for requests that came without one: unique within this process. */
function requestIds(): () => string {
  let n = 0;
  const prefix = `g${Date.now().toString(36)}`;
  return () => `${prefix}-${(++n).toString(36)}`;
}

export function handlerContext(opts: HandlerOptions): HandlerContext {
  return {
    ...opts,
    nextId: requestIds(),
    admit(call, cls) {
      const caller = callerOf(call);
      let admin: boolean | undefined;
      const admitted = { caller, admin: () => (admin ??= opts.access.seesAdminDetails(caller)) };
      const refused = opts.access.check(cls, caller);
      if (refused) {
        opts.logger.warn({ peer: caller.address, code: refused.code, cls }, 'gRPC call refused by the access policy');
        throw refused;
      }
      return admitted;
    },
  };
}

/** The request message, or INVALID_ARGUMENT when its bytes did not decode. */
export function decoded<T>(msg: T | Undecodable): T {
  if (msg instanceof Undecodable) throw new BrokerError('INVALID_ARGUMENT', bounded(msg.reason));
  return msg;
}
