/**
 * gRPC back-pressure toward a client that never reads (issue 11): a raw
 * HTTP/2 client (node:http2, because grpc-js drains the wire by itself) opens
 * ModelStreamInfer with a small receive window, writes many 64 KiB requests
 * to the identity model and never reads an answer. The broker must stop
 * reading the stream (pause, so HTTP/2 flow control holds the client's
 * further requests on the client's side) instead of running every request
 * and buffering every answer. Counted by the model's own statistics
 * (inference_count): the requests the broker took from that stream stay a
 * small bounded number while another client is served normally.
 */
import http2 from 'node:http2';
import { create, toBinary } from '@bufbuild/protobuf';
import { ModelInferRequestSchema } from '../../proto/gen/grpc_service_pb';
import { getJson, modelMain, startTestBroker, waitFor, waitReady, type TestBroker } from '../helpers/broker';
import { GrpcTestClient, type InferInit } from '../helpers/grpc-client';

const ELEMENTS = 16 * 1024; // FP32 [1, 16384] = 64 KiB per request and per answer
const REQUESTS = 600; // ~38 MiB of answers if the broker ran them all
const STREAM_WINDOW = 64; // the gRPC bridge's default in-flight window per stream (bridges/grpc/server.ts)

let b: TestBroker;
let other: GrpcTestClient;

beforeAll(async () => {
  b = await startTestBroker({ models: { identity: { command: ['node', modelMain('identity')], batch_size: 16 } } });
  other = new GrpcTestClient(b.running.ports.grpc);
  await waitReady(b, 'identity');
});

afterAll(async () => {
  other?.close();
  await b?.stop();
});

/** One length-prefixed gRPC message (uncompressed). */
function grpcFrame(body: Uint8Array): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt32BE(body.length, 1);
  return Buffer.concat([head, body]);
}

const inferCount = async (): Promise<number> => {
  const s = await getJson(`${b.url}/v2/models/identity/stats`);
  return Number(s.model_stats[0].inference_count);
};

test('a ModelStreamInfer client that never reads holds a bounded number of requests in the broker; others are still served', async () => {
  const payload = Buffer.from(new Float32Array(ELEMENTS).fill(1.5).buffer);
  const frame = (i: number) => grpcFrame(toBinary(ModelInferRequestSchema, create(ModelInferRequestSchema, {
    modelName: 'identity', id: `r${i}`,
    inputs: [{ name: 'IN_FP32', datatype: 'FP32', shape: [1n, BigInt(ELEMENTS)] }],
    outputs: [{ name: 'OUT_FP32' }],
    rawInputContents: [payload],
  })));

  const before = await inferCount();
  // A small receive window, and the stream is never read: the broker's answers back up at once.
  const session = http2.connect(`http://127.0.0.1:${b.running.ports.grpc}`, { settings: { initialWindowSize: 16 * 1024 } });
  const sessionErrors: Error[] = [];
  session.on('error', (e) => sessionErrors.push(e));
  const stream = session.request({
    ':method': 'POST', ':path': '/inference.GRPCInferenceService/ModelStreamInfer',
    'content-type': 'application/grpc', te: 'trailers',
  });
  const streamErrors: Error[] = [];
  stream.on('error', (e) => streamErrors.push(e));
  stream.pause();
  // The client writes as fast as HTTP/2 flow control lets it (the way a gRPC client does), and never reads.
  let sent = 0;
  let stop = false;
  const writer = (async () => {
    for (let i = 0; i < REQUESTS && !stop; i++) {
      sent++;
      if (!stream.write(frame(i))) await new Promise<void>((resolve) => { stream.once('drain', resolve); stream.once('close', resolve); });
    }
  })();

  // The broker takes some of them, then stops reading (the first 64 KiB answer fills the buffers).
  await waitFor(async () => (await inferCount()) - before >= 1, 30_000, 'the first requests of the stream to run');

  // Another client is served meanwhile. Rounds of 20 of its requests: once the silent
  // stream is held, a round runs exactly its own 20 and nothing of the stream's. A broker
  // that kept reading would keep running the stream's requests (never 20 alone), or stop
  // only after all 600 of them.
  const small: InferInit = {
    modelName: 'identity',
    inputs: [{ name: 'IN_INT32', datatype: 'INT32', shape: [1n, 1n] }],
    rawInputContents: [Buffer.from(Int32Array.of(7).buffer)],
    outputs: [{ name: 'OUT_INT32' }],
  } as InferInit;
  let others = 0;
  const round = async (): Promise<number> => {
    const c0 = await inferCount();
    for (let i = 0; i < 20; i++) {
      const res = await other.unary('modelInfer', small);
      expect(Buffer.from(res.rawOutputContents[0]).readInt32LE(0)).toBe(7);
      others++;
    }
    return (await inferCount()) - c0 - 20;
  };
  let held = 0;
  for (let r = 0; r < 100 && held < 3; r++) held = (await round()) === 0 ? held + 1 : 0;
  expect(held).toBe(3); // three rounds in a row with nothing of the stream's

  const fromStream = (await inferCount()) - before - others;
  // Bounded by the stream's in-flight window (the broker pauses once an answer cannot
  // leave; here after about 17 of them), far from the 600 a broker that kept reading would run.
  expect(fromStream).toBeGreaterThanOrEqual(1);
  expect(fromStream).toBeLessThanOrEqual(STREAM_WINDOW);
  // The client's writes are held: flow control stopped it long before its 600 requests
  // (about 35 left it here; the rest never left its process).
  expect(sent).toBeLessThan(REQUESTS / 2);
  expect(stream.writableLength).toBeGreaterThan(0);
  expect(streamErrors).toEqual([]);
  expect(sessionErrors).toEqual([]);

  stop = true;
  stream.close(http2.constants.NGHTTP2_CANCEL);
  await writer;
  session.close();
  // The cancelled stream lets go: the broker still answers afterwards.
  const res = await other.unary('modelInfer', small);
  expect(Buffer.from(res.rawOutputContents[0]).readInt32LE(0)).toBe(7);
});
