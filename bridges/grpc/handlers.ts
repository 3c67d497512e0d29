/**
 * The rpc implementations of inference.GRPCInferenceService. They call the
 * BrokerApi only and map every error once, with toGrpcStatus().
 */
import type * as grpc from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';
import type { Logger } from 'pino';
import type { BrokerApi } from '../../core/broker';
import type { InferResult } from '../../core/types';
import { BrokerError, toBrokerError } from '../../core/errors';
import { EXTENSIONS } from '../shared/extensions';
import { tritonConfig } from '../shared/model-config';
import { SequenceOrder } from '../shared/sequence-order';
import {
  ModelConfigResponseSchema,
  ModelReadyResponseSchema,
  ModelStatisticsResponseSchema,
  ModelStreamInferResponseSchema,
  RepositoryModelLoadResponseSchema,
  RepositoryModelUnloadResponseSchema,
  ServerLiveResponseSchema,
  ServerMetadataResponseSchema,
  ServerReadyResponseSchema,
  type ModelConfigRequest,
  type ModelConfigResponse,
  type ModelInferRequest,
  type ModelInferResponse,
  type ModelMetadataRequest,
  type ModelMetadataResponse,
  type ModelReadyRequest,
  type ModelReadyResponse,
  type ModelRepositoryParameter,
  type ModelStatisticsRequest,
  type ModelStatisticsResponse,
  type ModelStreamInferResponse,
  type RepositoryIndexRequest,
  type RepositoryIndexResponse,
  type RepositoryModelLoadRequest,
  type RepositoryModelLoadResponse,
  type RepositoryModelUnloadRequest,
  type RepositoryModelUnloadResponse,
  type ServerLiveRequest,
  type ServerLiveResponse,
  type ServerMetadataRequest,
  type ServerMetadataResponse,
  type ServerReadyRequest,
  type ServerReadyResponse,
} from '../../proto/gen/grpc_service_pb';
import { parseInferRequest, toInferResponse, withDeadline } from './convert';
import { configOverridePatch, currentConfig, refuseFileParameters } from '../shared/config-override';
import { configMessage, metadataMessage, repositoryIndexMessage, statisticsMessage } from './describe';
import { toGrpcStatus } from './status';

/** One handler per rpc, keyed by the proto rpc name (as in INFERENCE_SERVICE). */
export interface InferenceHandlers {
  ServerLive: grpc.handleUnaryCall<ServerLiveRequest, ServerLiveResponse>;
  ServerReady: grpc.handleUnaryCall<ServerReadyRequest, ServerReadyResponse>;
  ModelReady: grpc.handleUnaryCall<ModelReadyRequest, ModelReadyResponse>;
  ServerMetadata: grpc.handleUnaryCall<ServerMetadataRequest, ServerMetadataResponse>;
  ModelMetadata: grpc.handleUnaryCall<ModelMetadataRequest, ModelMetadataResponse>;
  ModelInfer: grpc.handleUnaryCall<ModelInferRequest, ModelInferResponse>;
  ModelStreamInfer: grpc.handleBidiStreamingCall<ModelInferRequest, ModelStreamInferResponse>;
  ModelConfig: grpc.handleUnaryCall<ModelConfigRequest, ModelConfigResponse>;
  ModelStatistics: grpc.handleUnaryCall<ModelStatisticsRequest, ModelStatisticsResponse>;
  RepositoryIndex: grpc.handleUnaryCall<RepositoryIndexRequest, RepositoryIndexResponse>;
  RepositoryModelLoad: grpc.handleUnaryCall<RepositoryModelLoadRequest, RepositoryModelLoadResponse>;
  RepositoryModelUnload: grpc.handleUnaryCall<RepositoryModelUnloadRequest, RepositoryModelUnloadResponse>;
}

export interface HandlerOptions {
  broker: BrokerApi;
  logger: Logger;
  version: string;
}

const opt = (s: string) => (s === '' ? undefined : s);

/** Ids for requests that came without one: unique within this process. */
function requestIds(): () => string {
  let n = 0;
  const prefix = `g${Date.now().toString(36)}`;
  return () => `${prefix}-${(++n).toString(36)}`;
}

/** tritonclient's `enable_empty_final_response=True` sets this request parameter. */
function wantsEmptyFinal(req: ModelInferRequest): boolean {
  const p = req.parameters.triton_enable_empty_final_response ?? req.parameters.enable_empty_final_response;
  return p?.parameterChoice.case === 'boolParam' && p.parameterChoice.value;
}

/** Triton's load `config` parameter (string_param, JSON); `file:*` parameters are never accepted. */
function configParameter(params: { [key: string]: ModelRepositoryParameter }): string | undefined {
  refuseFileParameters(Object.keys(params));
  const p = params.config;
  if (!p) return undefined;
  if (p.parameterChoice.case !== 'stringParam') throw new BrokerError('INVALID_ARGUMENT', "load parameter 'config' must be a string_param (the model config as JSON)");
  return p.parameterChoice.value;
}

export function createHandlers(opts: HandlerOptions): InferenceHandlers {
  const { broker, logger: log } = opts;
  const nextId = requestIds();

  /** A unary rpc whose answer is computed from the request alone; errors are mapped once here. */
  function unary<Req, Res>(rpc: string, fn: (req: Req) => Res | Promise<Res>): grpc.handleUnaryCall<Req, Res> {
    return (call, callback) => {
      Promise.resolve()
        .then(() => fn(call.request))
        .then(
          (res) => callback(null, res),
          (err: unknown) => callback(toGrpcStatus(err, log, rpc)),
        );
    };
  }

  return {
    ServerLive: unary('ServerLive', () => create(ServerLiveResponseSchema, { live: true })),

    ServerReady: unary('ServerReady', () => create(ServerReadyResponseSchema, { ready: broker.ready().ready })),

    ModelReady: unary('ModelReady', (req) => create(ModelReadyResponseSchema, { ready: broker.modelReady(req.name, opt(req.version)).ready })),

    ServerMetadata: unary('ServerMetadata', () =>
      create(ServerMetadataResponseSchema, { name: 'tensorbroker', version: opts.version, extensions: EXTENSIONS }),
    ),

    ModelMetadata: unary('ModelMetadata', (req) => {
      const meta = broker.metadata(req.name, opt(req.version));
      return metadataMessage(req.name, meta.version || broker.describe(req.name).version, meta);
    }),

    ModelConfig: unary('ModelConfig', (req) => {
      return create(ModelConfigResponseSchema, { config: configMessage(tritonConfig(broker.describe(req.name, opt(req.version)))) });
    }),

    ModelStatistics: unary('ModelStatistics', (req) =>
      create(ModelStatisticsResponseSchema, { modelStats: broker.stats(opt(req.name), opt(req.version)).map(statisticsMessage) }),
    ),

    RepositoryIndex: unary('RepositoryIndex', (req) => repositoryIndexMessage(broker.repositoryIndex(), req.ready)),

    RepositoryModelLoad: (call, callback) => {
      const req = call.request;
      const model = req.modelName;
      const auth = call.metadata.get('authorization')[0];
      Promise.resolve()
        .then(async () => {
          const config = configParameter(req.parameters);
          if (config !== undefined) {
            await broker.configureModel(model, () => configOverridePatch(model, config, currentConfig(broker, model)), typeof auth === 'string' ? auth : undefined);
          }
          await broker.loadModel(model);
          return create(RepositoryModelLoadResponseSchema);
        })
        .then((res) => callback(null, res), (err: unknown) => callback(toGrpcStatus(err, log, 'RepositoryModelLoad')));
    },

    RepositoryModelUnload: unary('RepositoryModelUnload', async (req) => {
      await broker.unloadModel(req.modelName);
      return create(RepositoryModelUnloadResponseSchema);
    }),

    ModelInfer(call, callback) {
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
      const answer: grpc.sendUnaryData<ModelInferResponse> = (err, res) => {
        answered = true;
        if (!call.cancelled) callback(err, res);
      };
      let clientId = '';
      Promise.resolve()
        .then(() => {
          const parsed = parseInferRequest(call.request, nextId());
          clientId = parsed.clientId;
          return broker.infer({ ...withDeadline(parsed.request, call.getDeadline()), signal: aborted.signal });
        })
        .then(
          (result) => answer(null, toInferResponse(result, clientId)),
          (err: unknown) => answer(toGrpcStatus(err, log, 'ModelInfer')),
        );
    },

    ModelStreamInfer(call) {
      // One controller per request (a shared signal would collect a listener per queued
      // request); cancelling the stream aborts every one still pending, and `owner`
      // cancels the sequences this stream fed (the model is told, reason cancelled).
      const inFlight = new Set<AbortController>();
      const owner = new AbortController();
      const order = new SequenceOrder();
      let ended = false;
      let closed = false;
      let gone = false;
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
      const write = (msg: ModelStreamInferResponse) => {
        if (!closed && !call.cancelled) call.write(msg);
      };
      call.on('data', (req: ModelInferRequest) => {
        if (closed) return;
        const aborted = new AbortController();
        inFlight.add(aborted);
        const echo = { modelName: req.modelName, modelVersion: req.modelVersion, id: req.id };
        let key: string | undefined;
        let work: Promise<InferResult>;
        // Decoupled models: each response leaves at once, flagged not final (Triton's triton_final_response).
        const onResponse = (r: InferResult) => write(create(ModelStreamInferResponseSchema, { inferResponse: toInferResponse(r, req.id, false) }));
        try {
          const parsed = parseInferRequest(req, nextId());
          const seq = parsed.request.sequence;
          if (seq) key = `${parsed.request.model}\0${seq.id}`;
          const request = seq ? { ...parsed.request, sequence: { ...seq, owner: owner.signal } } : parsed.request;
          work = broker.infer({ ...withDeadline(request, call.getDeadline()), signal: aborted.signal, onResponse });
        } catch (e) {
          work = Promise.reject(e);
        }
        // Answers of one sequence leave in arrival order.
        void order.run(key, work, (result, err) => {
          if (result) {
            // A decoupled model's final marker is sent only when asked for (enable_empty_final_response):
            // an empty response carrying just the flag. Other models' one answer is final.
            const decoupled = result.responses !== undefined;
            if (!decoupled || wantsEmptyFinal(req)) write(create(ModelStreamInferResponseSchema, { inferResponse: toInferResponse(result, req.id, true) }));
            return;
          }
          if (gone) return; // the client cancelled the stream: nobody to answer
          const e = toBrokerError(err);
          toGrpcStatus(e, log, 'ModelStreamInfer');
          // A stream answer has only a message; the code rides along as a response parameter.
          const coded = { ...echo, parameters: { error_code: { parameterChoice: { case: 'stringParam' as const, value: e.code } } } };
          write(create(ModelStreamInferResponseSchema, { errorMessage: e.message, inferResponse: coded }));
        }).finally(() => {
          inFlight.delete(aborted);
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
        log.debug({ err: err.message }, 'gRPC stream error');
        abortAll();
      });
    },
  };
}
