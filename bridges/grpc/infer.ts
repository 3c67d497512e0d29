/** ModelInfer: one request, one answer; cancelled with the call. */
import type * as grpc from '@grpc/grpc-js';
import type { ModelInferResponse } from '../../proto/gen/grpc_service_pb';
import { decoded, type HandlerContext } from './context';
import { parseInferRequest, withDeadline } from './convert';
import { encodeInferResponse } from './encode';
import type { InferenceHandlers, Out } from './handlers';
import { inferExtended } from '../shared/extended-infer';
import { toGrpcStatus } from './status';

export function modelInfer(ctx: HandlerContext): InferenceHandlers['ModelInfer'] {
  const { broker, logger: log } = ctx;
  return (call, callback) => {
    // 'cancelled' also fires after a normal answer: only a call not yet answered is a cancel.
    let answered = false;
    const aborted = new AbortController();
    call.on('cancelled', () => {
      // A passed deadline also cancels the call: that is the broker's DEADLINE_EXCEEDED,
      // not the client going away (which would cancel the request's whole sequence).
      const deadline = call.getDeadline();
      const at = deadline instanceof Date ? deadline.getTime() : deadline;
      if (!answered && !(Number.isFinite(at) && at <= Date.now())) aborted.abort();
    });
    const answer: grpc.sendUnaryData<Out<ModelInferResponse>> = (err, res) => {
      answered = true;
      if (!call.cancelled) callback(err, res);
    };
    let clientId = '';
    let admin = () => false;
    Promise.resolve()
      .then(() => {
        admin = ctx.admit(call, 'infer').admin;
        const parsed = parseInferRequest(decoded(call.request), ctx.nextId());
        clientId = parsed.clientId;
        return inferExtended(broker, ctx.shm, { ...withDeadline(parsed.request, call.getDeadline()), signal: aborted.signal }, parsed);
      })
      .then(
        (result) => answer(null, encodeInferResponse(result, clientId)),
        (err: unknown) => answer(toGrpcStatus(err, log, 'ModelInfer', admin())),
      );
  };
}
