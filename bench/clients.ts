/**
 * The non-JSON ways into the broker that the bench drives: the REST binary
 * tensor extension (a body builder), KServe v2 gRPC (a grpc-js client over the
 * server's own ServiceDefinition and generated messages, `raw_input_contents`)
 * and the ZeroMQ client bridge (sdk/node ZmqClient).
 */
import * as grpc from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';
import { INFERENCE_SERVICE } from '../bridges/grpc/service-definition';
import type { Tensor } from '../proto/tensor';
import { ModelInferRequestSchema, type ModelInferRequest, type ModelInferResponse } from '../proto/gen/grpc_service_pb';

export { ZmqClient } from '../sdk/node/zmq-client';

/**
 * A KServe v2 binary-extension body: the JSON header (each input with
 * `binary_data_size`), then the raw bytes of every input in order. Returns the
 * body and the Inference-Header-Content-Length value.
 */
export function binaryBody(tensors: Tensor[], binaryOutputs: boolean): { body: Buffer; headerLength: number } {
  const header = Buffer.from(
    JSON.stringify({
      inputs: tensors.map((t) => ({ name: t.name, datatype: t.datatype, shape: t.shape, parameters: { binary_data_size: t.data.byteLength } })),
      ...(binaryOutputs ? { parameters: { binary_data_output: true } } : {}),
    }),
  );
  return { body: Buffer.concat([header, ...tensors.map((t) => t.data)]), headerLength: header.length };
}

/** Splits a binary-extension reply into its JSON header and the raw bytes after it. */
export function splitBinaryReply(body: Buffer, headerLength: number): { header: { outputs: { name: string; parameters?: { binary_data_size?: number } }[] }; binary: Buffer } {
  return { header: JSON.parse(body.subarray(0, headerLength).toString('utf8')), binary: body.subarray(headerLength) };
}

/** A ModelInferRequest with every input in raw_input_contents. */
export function grpcRawRequest(model: string, tensors: Tensor[]): ModelInferRequest {
  return create(ModelInferRequestSchema, {
    modelName: model,
    inputs: tensors.map((t) => ({ name: t.name, datatype: t.datatype, shape: t.shape.map(BigInt) })),
    rawInputContents: tensors.map((t) => t.data),
  });
}

/** One grpc-js channel; concurrency = calls outstanding on it at once. */
export class GrpcInferClient {
  private readonly client: grpc.Client;
  private readonly def = INFERENCE_SERVICE.ModelInfer;

  constructor(port: number, maxMessageBytes = 64 * 1024 * 1024) {
    this.client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), {
      'grpc.max_receive_message_length': maxMessageBytes,
      'grpc.max_send_message_length': maxMessageBytes,
    });
  }

  infer(req: ModelInferRequest, deadlineMs = 30_000): Promise<ModelInferResponse> {
    return new Promise((resolve, reject) => {
      this.client.makeUnaryRequest(
        this.def.path,
        this.def.requestSerialize as (r: ModelInferRequest) => Buffer,
        this.def.responseDeserialize as (b: Buffer) => ModelInferResponse,
        req,
        new grpc.Metadata(),
        { deadline: Date.now() + deadlineMs },
        (err, res) => (err ? reject(err) : resolve(res!)),
      );
    });
  }

  close(): void {
    this.client.close();
  }
}

/** Int32 values of raw little-endian bytes (copied: the view may be unaligned). */
export const int32Values = (b: Uint8Array) => Array.from(new Int32Array(new Uint8Array(b).buffer));
