/**
 * The gRPC floor: a bare grpc-js server (run as its own process by the
 * benchmark) serving `inference.GRPCInferenceService/ModelInfer` and
 * `ModelStreamInfer` with fixed replies — the very bytes the broker answers for
 * `simple` — and no broker behind it. Like the HTTP floor (bare-http.ts) it does
 * not decode the request: it shows what HTTP/2 + grpc-js + the client cost on
 * this machine. Replies in env BENCH_GRPC_REPLY and BENCH_GRPC_STREAM_REPLY
 * (base64 of a ModelInferResponse / ModelStreamInferResponse); server options as
 * the broker's (bridges/grpc/server.ts: serverOptions). Prints its port on
 * stdout; binds 127.0.0.1 only.
 */
import * as grpc from '@grpc/grpc-js';
import { serverOptions } from '../bridges/grpc/server';

const reply = Buffer.from(process.env.BENCH_GRPC_REPLY ?? '', 'base64');
const streamReply = Buffer.from(process.env.BENCH_GRPC_STREAM_REPLY ?? '', 'base64');
const same = (b: Buffer) => b;

const service: grpc.ServiceDefinition = {
  ModelInfer: {
    path: '/inference.GRPCInferenceService/ModelInfer',
    requestStream: false, responseStream: false,
    requestSerialize: same, requestDeserialize: same, responseSerialize: same, responseDeserialize: same,
  },
  ModelStreamInfer: {
    path: '/inference.GRPCInferenceService/ModelStreamInfer',
    requestStream: true, responseStream: true,
    requestSerialize: same, requestDeserialize: same, responseSerialize: same, responseDeserialize: same,
  },
};

const server = new grpc.Server(serverOptions(Number(process.env.BENCH_GRPC_MAX_MESSAGE_BYTES ?? 64 * 1024 * 1024)));
server.addService(service, {
  ModelInfer: (_call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => cb(null, reply),
  ModelStreamInfer: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
    call.on('data', () => call.write(streamReply));
    call.on('end', () => call.end());
  },
});
server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err) throw err;
  process.stdout.write(`${port}\n`);
});
process.on('SIGTERM', () => server.tryShutdown(() => process.exit(0)));
