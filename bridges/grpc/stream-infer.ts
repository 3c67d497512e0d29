/**
 * ModelStreamInfer: many requests and answers on one bidirectional stream.
 *
 * Back-pressure: a client that stops reading must not make the broker buffer
 * every answer. The stream stops taking requests (it pauses reading, so
 * HTTP/2 flow control holds the client's further requests on its side) while
 * `write()` reports a full buffer, until 'drain', and while `streamWindow`
 * requests of this stream are in flight. At most `streamWindow` answers can
 * then wait in memory for a client that never reads.
 */
import { create } from '@bufbuild/protobuf';
import type { InferResult } from '../../core/types';
import { toBrokerError } from '../../core/errors';
import { ModelStreamInferResponseSchema, type ModelInferRequest, type ModelStreamInferResponse } from '../../proto/gen/grpc_service_pb';
import { inferExtended } from '../shared/extended-infer';
import { SequenceOrder } from '../shared/sequence-order';
import { decoded, type HandlerContext } from './context';
import { parseInferRequest, withDeadline } from './convert';
import { encodeStreamResponse } from './encode';
import type { In, InferenceHandlers, Out } from './handlers';
import { Undecodable } from './service-definition';

/** tritonclient's `enable_empty_final_response=True` sets this request parameter. */
function wantsEmptyFinal(req: ModelInferRequest): boolean {
  const p = req.parameters.triton_enable_empty_final_response ?? req.parameters.enable_empty_final_response;
  return p?.parameterChoice.case === 'boolParam' && p.parameterChoice.value;
}
import { clientMessage, toGrpcStatus } from './status';

export function streamInfer(ctx: HandlerContext): InferenceHandlers['ModelStreamInfer'] {
  const { broker, logger: log } = ctx;
  return (call) => {
    let admin: () => boolean;
    try {
      admin = ctx.admit(call, 'infer').admin;
    } catch (err) {
      call.emit('error', toGrpcStatus(err, log, 'ModelStreamInfer'));
      return;
    }
    // One controller per request (a shared signal would collect a listener per queued
    // request); cancelling the stream aborts every one still pending, and `owner`
    // cancels the sequences this stream fed (the model is told, reason cancelled).
    const inFlight = new Set<AbortController>();
    const owner = new AbortController();
    const order = new SequenceOrder();
    let ended = false;
    let closed = false;
    let gone = false;
    let full = false; // the last write() found the outgoing buffer full: wait for 'drain'
    let paused = false;
    const abortAll = () => {
      if (closed && !gone) return; // 'cancelled' after a normal close: nothing to cancel
      gone = true;
      closed = true;
      for (const a of inFlight) a.abort();
      owner.abort();
    };
    const finish = () => {
      if (ended && inFlight.size === 0 && !closed) {
        closed = true;
        call.end();
      }
    };
    /** Reads on only while answers can leave and the window has room. */
    const pace = () => {
      const stop = full || inFlight.size >= ctx.streamWindow;
      if (stop && !paused) {
        paused = true;
        call.pause();
      } else if (!stop && paused) {
        paused = false;
        call.resume();
      }
    };
    call.on('drain', () => {
      full = false;
      pace();
    });
    const write = (msg: Out<ModelStreamInferResponse>) => {
      if (!closed && !call.cancelled && !call.write(msg)) full = true;
    };
    call.on('data', (msg: In<ModelInferRequest>) => {
      if (closed) return;
      const aborted = new AbortController();
      inFlight.add(aborted);
      pace();
      const req = msg instanceof Undecodable ? undefined : msg;
      const echo = { modelName: req?.modelName ?? '', modelVersion: req?.modelVersion ?? '', id: req?.id ?? '' };
      let key: string | undefined;
      let work: Promise<InferResult>;
      try {
        const parsed = parseInferRequest(decoded(msg), ctx.nextId());
        const seq = parsed.request.sequence;
        if (seq) key = `${parsed.request.model}\0${seq.id}`;
        const request = seq ? { ...parsed.request, sequence: { ...seq, owner: owner.signal } } : parsed.request;
        // Decoupled models: each response leaves at once, flagged not final (Triton's triton_final_response).
        const onResponse = (r: InferResult) => write(encodeStreamResponse(r, echo.id, false));
        work = inferExtended(broker, ctx.shm, { ...withDeadline(request, call.getDeadline()), signal: aborted.signal, onResponse }, parsed);
      } catch (e) {
        work = Promise.reject(e);
      }
      // Answers of one sequence leave in arrival order.
      void order.run(key, work, (result, err) => {
        if (result) {
          // A decoupled model's final marker is sent only when asked for (enable_empty_final_response):
          // an empty response carrying just the flag. Other models' one answer is final.
          const decoupled = result.responses !== undefined;
          if (!decoupled || (req && wantsEmptyFinal(req))) write(encodeStreamResponse(result, echo.id, true));
          return;
        }
        if (gone) return; // the client cancelled the stream: nobody to answer
        const e = toBrokerError(err);
        toGrpcStatus(e, log, 'ModelStreamInfer');
        // A stream answer has only a message; the code rides along as a response parameter.
        const coded = { ...echo, parameters: { error_code: { parameterChoice: { case: 'stringParam' as const, value: e.code } } } };
        write(create(ModelStreamInferResponseSchema, { errorMessage: clientMessage(e, admin()), inferResponse: coded }));
      }).finally(() => {
        inFlight.delete(aborted);
        pace();
        finish();
      });
    });
    // The client half-closed: answer what is pending, then close. A cancel also shows as
    // 'end' first, its 'cancelled' following within the same turn: wait for it (setImmediate)
    // so that a cancelled stream is not mistaken for a finished one (its sequences get cancelled).
    call.on('end', () => {
      setImmediate(() => {
        ended = true;
        finish();
      });
    });
    // Also fires after a normal close, when nothing is pending any more: harmless then.
    call.on('cancelled', abortAll);
    call.on('error', (err: Error) => {
      log.debug({ err }, 'gRPC stream error');
      abortAll();
    });
  };
}
