/**
 * The rpc implementations of inference.GRPCInferenceService, assembled from
 * unary.ts (describe and control), infer.ts (ModelInfer) and stream-infer.ts
 * (ModelStreamInfer). They call the BrokerApi only and map every error once,
 * with toGrpcStatus().
 */
import type * as grpc from '@grpc/grpc-js';
import type {
  ModelConfigRequest,
  ModelConfigResponse,
  ModelInferRequest,
  ModelInferResponse,
  ModelMetadataRequest,
  ModelMetadataResponse,
  ModelReadyRequest,
  ModelReadyResponse,
  ModelStatisticsRequest,
  ModelStatisticsResponse,
  ModelStreamInferResponse,
  RepositoryIndexRequest,
  RepositoryIndexResponse,
  RepositoryModelLoadRequest,
  RepositoryModelLoadResponse,
  RepositoryModelUnloadRequest,
  RepositoryModelUnloadResponse,
  ServerLiveRequest,
  ServerLiveResponse,
  ServerMetadataRequest,
  ServerMetadataResponse,
  ServerReadyRequest,
  ServerReadyResponse,
} from '../../proto/gen/grpc_service_pb';
import { handlerContext, type HandlerOptions } from './context';
import { modelInfer } from './infer';
import type { Undecodable } from './service-definition';
import { streamInfer } from './stream-infer';
import { sharedMemoryHandlers, type SharedMemoryHandlers } from './shared-memory';
import { controlCall, unaryHandlers } from './unary';

export type { HandlerOptions } from './context';

/** A request as the server's deserializer hands it over: the message, or why its bytes did not decode. */
export type In<T> = T | Undecodable;

/** An answer as a message, or its bytes already encoded (encode.ts; the serializer passes them on). */
export type Out<T> = T | Buffer;

/** One handler per rpc, keyed by the proto rpc name (as in INFERENCE_SERVICE). */
export interface InferenceHandlers {
  ServerLive: grpc.handleUnaryCall<In<ServerLiveRequest>, ServerLiveResponse>;
  ServerReady: grpc.handleUnaryCall<In<ServerReadyRequest>, ServerReadyResponse>;
  ModelReady: grpc.handleUnaryCall<In<ModelReadyRequest>, ModelReadyResponse>;
  ServerMetadata: grpc.handleUnaryCall<In<ServerMetadataRequest>, ServerMetadataResponse>;
  ModelMetadata: grpc.handleUnaryCall<In<ModelMetadataRequest>, ModelMetadataResponse>;
  ModelInfer: grpc.handleUnaryCall<In<ModelInferRequest>, Out<ModelInferResponse>>;
  ModelStreamInfer: grpc.handleBidiStreamingCall<In<ModelInferRequest>, Out<ModelStreamInferResponse>>;
  ModelConfig: grpc.handleUnaryCall<In<ModelConfigRequest>, ModelConfigResponse>;
  ModelStatistics: grpc.handleUnaryCall<In<ModelStatisticsRequest>, ModelStatisticsResponse>;
  RepositoryIndex: grpc.handleUnaryCall<In<RepositoryIndexRequest>, RepositoryIndexResponse>;
  RepositoryModelLoad: grpc.handleUnaryCall<In<RepositoryModelLoadRequest>, RepositoryModelLoadResponse>;
  RepositoryModelUnload: grpc.handleUnaryCall<In<RepositoryModelUnloadRequest>, RepositoryModelUnloadResponse>;
}

/** The whole service: inference and repository rpcs, plus shared memory (./shared-memory.ts). */
export type AllHandlers = InferenceHandlers & SharedMemoryHandlers;

export function createHandlers(opts: HandlerOptions): AllHandlers {
  const ctx = handlerContext(opts);
  return { ...sharedMemoryHandlers(ctx.shm, controlCall(ctx)), ...unaryHandlers(ctx), ModelInfer: modelInfer(ctx), ModelStreamInfer: streamInfer(ctx) };
}
