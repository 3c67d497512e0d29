/**
 * A small gRPC client for the tests: a plain grpc-js Client over the same
 * generated messages and ServiceDefinition as the server, with typed helpers
 * for unary calls (promise + the call, to cancel it) and ModelStreamInfer.
 */
import * as grpc from '@grpc/grpc-js';
import type { MessageInitShape, MessageShape } from '@bufbuild/protobuf';
import { GRPCInferenceService, type ModelInferRequestSchema, type ModelStreamInferResponse } from '../../proto/gen/grpc_service_pb';
import { INFERENCE_SERVICE } from '../../bridges/grpc/service-definition';

type Methods = typeof GRPCInferenceService.method;
type UnaryName = { [K in keyof Methods]: Methods[K]['methodKind'] extends 'unary' ? K : never }[keyof Methods];
type In<K extends keyof Methods> = MessageInitShape<Methods[K]['input']>;
type Out<K extends keyof Methods> = MessageShape<Methods[K]['output']>;

export type InferInit = MessageInitShape<typeof ModelInferRequestSchema>;

export interface PendingCall<T> {
  response: Promise<T>;
  call: grpc.ClientUnaryCall;
}

export class GrpcTestClient {
  readonly client: grpc.Client;

  constructor(port: number, maxMessageBytes = 64 * 1024 * 1024) {
    this.client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), {
      'grpc.max_receive_message_length': maxMessageBytes,
      'grpc.max_send_message_length': maxMessageBytes,
    });
  }

  /** Starts a unary call; `deadlineMs` is relative to now. */
  start<K extends UnaryName>(method: K, req: In<K>, deadlineMs?: number): PendingCall<Out<K>> {
    const def = INFERENCE_SERVICE[GRPCInferenceService.method[method].name];
    let call!: grpc.ClientUnaryCall;
    const options: grpc.CallOptions = deadlineMs === undefined ? {} : { deadline: Date.now() + deadlineMs };
    const response = new Promise<Out<K>>((resolve, reject) => {
      call = this.client.makeUnaryRequest(
        def.path,
        def.requestSerialize as (r: In<K>) => Buffer,
        def.responseDeserialize as (b: Buffer) => Out<K>,
        req,
        new grpc.Metadata(),
        options,
        (err, res) => (err ? reject(err) : resolve(res!)),
      );
    });
    return { response, call };
  }

  unary<K extends UnaryName>(method: K, req: In<K>, deadlineMs?: number): Promise<Out<K>> {
    return this.start(method, req, deadlineMs).response;
  }

  /** Resolves with the error of a call that must fail. */
  async fails<K extends UnaryName>(method: K, req: In<K>, deadlineMs?: number): Promise<grpc.ServiceError> {
    try {
      await this.unary(method, req, deadlineMs);
    } catch (e) {
      return e as grpc.ServiceError;
    }
    throw new Error(`${method} succeeded but was expected to fail`);
  }

  /** Opens a ModelStreamInfer stream. */
  stream(): grpc.ClientDuplexStream<InferInit, ModelStreamInferResponse> {
    const def = INFERENCE_SERVICE.ModelStreamInfer;
    return this.client.makeBidiStreamRequest(
      def.path,
      def.requestSerialize as (r: InferInit) => Buffer,
      def.responseDeserialize as (b: Buffer) => ModelStreamInferResponse,
      new grpc.Metadata(),
      {},
    );
  }

  close(): void {
    this.client.close();
  }
}

/** Raw little-endian bytes of an Int32 row-major tensor. */
export const int32Bytes = (values: number[]) => Buffer.from(Int32Array.from(values).buffer);

/** Int32 values back from raw bytes (copied: the view may be unaligned). */
export const int32Values = (b: Uint8Array) => Array.from(new Int32Array(new Uint8Array(b).buffer));

/** A `simple` request (INPUT0, INPUT1 INT32 [rows,16]) with raw contents. */
export function simpleRaw(a: number[][], b: number[][], extra: Record<string, unknown> = {}): InferInit {
  const shape = [BigInt(a.length), 16n];
  return {
    modelName: 'simple',
    inputs: [
      { name: 'INPUT0', datatype: 'INT32', shape },
      { name: 'INPUT1', datatype: 'INT32', shape },
    ],
    rawInputContents: [int32Bytes(a.flat()), int32Bytes(b.flat())],
    ...extra,
  } as InferInit;
}
