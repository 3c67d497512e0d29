/**
 * Text detection over the KServe v2 gRPC bridge (inference.GRPCInferenceService/ModelInfer):
 * the picture decoded to RGB with sharp and sent as a UINT8 [1, H, W, 3] raw input;
 * BOXES, SCORES, COUNT and ANNOTATED asked for by name.
 *
 *   node dist/examples/clients/detect-grpc.js [picture.jpg] [--endpoint 127.0.0.1:8001] [--out annotated.jpg] [--json]
 */
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import { ModelInferRequestSchema, ModelInferResponseSchema, type ModelInferRequest, type ModelInferResponse } from '../../proto/gen/grpc_service_pb';
import { detections, main, parseArgs, pictureRgb, report } from './detect-common';

const USAGE = 'usage: detect-grpc [picture] [--endpoint 127.0.0.1:8001] [--out annotated.jpg] [--json]';
const OUTPUTS = ['BOXES', 'SCORES', 'COUNT', 'ANNOTATED'];

main(async () => {
  const args = parseArgs(process.argv.slice(2), process.env.TB_GRPC ?? '127.0.0.1:8001', USAGE);
  const p = await pictureRgb(args);
  const client = new grpc.Client(args.endpoint, grpc.credentials.createInsecure(), {
    'grpc.max_receive_message_length': 64 << 20, 'grpc.max_send_message_length': 64 << 20,
  });
  const request = create(ModelInferRequestSchema, {
    modelName: 'text-detector',
    inputs: [{ name: 'IMAGE', datatype: 'UINT8', shape: [1n, BigInt(p.height), BigInt(p.width), 3n] }],
    outputs: OUTPUTS.map((name) => ({ name })),
    rawInputContents: [p.data],
  });
  const reply = await new Promise<ModelInferResponse>((resolve, reject) => {
    client.makeUnaryRequest<ModelInferRequest, ModelInferResponse>(
      '/inference.GRPCInferenceService/ModelInfer',
      (m) => Buffer.from(toBinary(ModelInferRequestSchema, m)),
      (b) => fromBinary(ModelInferResponseSchema, b),
      request,
      { deadline: Date.now() + 60_000 },
      (err, res) => (err || !res ? reject(err ?? new Error('no response')) : resolve(res)),
    );
  });
  client.close();
  const raw = Object.fromEntries(reply.outputs.map((o, i) => [o.name, Buffer.from(reply.rawOutputContents[i])]));
  const f32 = (b: Buffer) => new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
  const count = raw.COUNT.readInt32LE(0);
  // ANNOTATED is BYTES [1, 1]: a uint32 LE length, then the base64 text.
  const annotated = raw.ANNOTATED.subarray(4, 4 + raw.ANNOTATED.readUInt32LE(0));
  report(args, 'gRPC', p.name, detections(f32(raw.BOXES), f32(raw.SCORES), count), annotated);
});
