/**
 * The gRPC bridge against hostile or unusual clients (issue 11): undecodable
 * protobuf is INVALID_ARGUMENT, deadlines of 24.8-49.7 days do not fail at once,
 * a ModelStreamInfer stream holds at most `streamWindow` requests in the broker, error messages quoting the client are bounded, and
 * responses are compressed when the client compresses (issue 13).
 */
import net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { startGrpcBridge, type GrpcBridge } from '../../bridges/grpc/server';
import { INFERENCE_SERVICE } from '../../bridges/grpc/service-definition';
import type { ModelInferResponse, ModelStreamInferResponse } from '../../proto/gen/grpc_service_pb';
import { modelMain, row, simpleModel, sleepyModel, startTestBroker, waitFor, type TestBroker } from '../helpers/broker';
import { GrpcTestClient, simpleRaw, type InferInit } from '../helpers/grpc-client';

const DAY = 24 * 3600 * 1000;
const STREAM_WINDOW = 4;

/** An identity request: UINT8 [1, n] of one repeated byte (compresses well), OUT_UINT8 asked for. */
const identityRequest = (n: number, id = '', fill = 0): InferInit =>
  ({
    modelName: 'identity',
    id,
    inputs: [{ name: 'IN_UINT8', datatype: 'UINT8', shape: [1n, BigInt(n)] }],
    outputs: [{ name: 'OUT_UINT8' }],
    rawInputContents: [Buffer.alloc(n, fill)],
  }) as InferInit;

/** A TCP proxy that counts the bytes the server sends back. */
async function countingProxy(port: number): Promise<{ port: number; fromServer: () => number; close(): void }> {
  let bytes = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(port, '127.0.0.1');
    sockets.add(client).add(upstream);
    upstream.on('data', (d: Buffer) => (bytes += d.length));
    client.pipe(upstream).pipe(client);
    const end = () => { client.destroy(); upstream.destroy(); };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    fromServer: () => bytes,
    close: () => { for (const s of sockets) s.destroy(); server.close(); },
  };
}

describe('gRPC bridge robustness', () => {
  let b: TestBroker;
  let bridge: GrpcBridge;
  let c: GrpcTestClient;

  beforeAll(async () => {
    b = await startTestBroker({
      models: {
        simple: simpleModel(),
        identity: { command: ['node', modelMain('identity')], batch_size: 4 },
        sleepy: sleepyModel(30, { batch_size: 2 }),
      },
    });
    bridge = await startGrpcBridge({
      broker: b.running.broker, host: '127.0.0.1', port: 0, maxMessageBytes: 64 << 20,
      logger: pino({ level: process.env.TB_TEST_LOG ?? 'silent' }), version: 't', streamWindow: STREAM_WINDOW,
    });
    c = new GrpcTestClient(bridge.port);
    await waitFor(async () => (await c.unary('modelReady', { name: 'simple' })).ready && (await c.unary('modelReady', { name: 'identity' })).ready && (await c.unary('modelReady', { name: 'sleepy' })).ready, 30_000, 'models ready');
  });
  afterAll(async () => {
    c?.close();
    await bridge?.close(1000);
    await b?.stop();
  });

  test('undecodable protobuf is INVALID_ARGUMENT on unary rpcs and as a stream answer; the stream stays open', async () => {
    const garbage = Buffer.from([0x0a, 0xff, 0xff, 0x01]); // field 1, length past the end
    for (const rpc of ['ModelInfer', 'ModelMetadata', 'RepositoryModelLoad'] as const) {
      const err = await new Promise<grpc.ServiceError>((resolve) => {
        c.client.makeUnaryRequest(INFERENCE_SERVICE[rpc].path, (x: Buffer) => x, (x: Buffer) => x, garbage, (e) => resolve(e!));
      });
      expect([rpc, err.code]).toEqual([rpc, grpc.status.INVALID_ARGUMENT]);
    }
    const def = INFERENCE_SERVICE.ModelStreamInfer;
    const call = c.client.makeBidiStreamRequest(def.path, (x: Buffer) => x, def.responseDeserialize as (b: Buffer) => ModelStreamInferResponse, new grpc.Metadata());
    const answers: ModelStreamInferResponse[] = [];
    call.on('data', (m: ModelStreamInferResponse) => answers.push(m));
    const done = new Promise<void>((r) => call.on('status', () => r()));
    call.write(garbage);
    call.write(Buffer.from(INFERENCE_SERVICE.ModelInfer.requestSerialize(simpleRaw([row(16)], [row(16)], { id: 'after' }))));
    call.end();
    await done;
    expect(answers).toHaveLength(2);
    const bad = answers.find((a) => a.errorMessage !== '')!;
    expect(bad.inferResponse?.parameters.error_code?.parameterChoice.value).toBe('INVALID_ARGUMENT');
    expect(answers.find((a) => a.inferResponse?.id === 'after')?.errorMessage).toBe('');
  });

  test('deadlines of 25, 40 and 60 days are served, not failed at once', async () => {
    for (const days of [25, 40, 60]) {
      const res = await c.unary('modelInfer', simpleRaw([row(16)], [row(16)]), days * DAY);
      expect(res.outputs.map((o) => o.name)).toEqual(['OUTPUT0', 'OUTPUT1']);
    }
  });

  test('an error message quoting a huge client field is bounded', async () => {
    const err = await c.fails('modelInfer', { ...simpleRaw([row(16)], [row(16)]), modelName: 'm'.repeat(2_000_000) } as InferInit);
    expect(err.code).toBe(grpc.status.NOT_FOUND);
    expect(err.details.length).toBeLessThan(1000);
  });

  test('a stream holds at most streamWindow requests in the broker; the rest wait unread on the wire, and all are answered', async () => {
    // Requests to a slow model, all written at once: without the window every one would be
    // queued in the broker at once (and its answer buffered while the client does not read).
    const N = 40;
    const sleepy = (i: number) => ({
      modelName: 'sleepy', id: `w-${i}`,
      inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [1n, 1n] }],
      rawInputContents: [Buffer.from(new Float32Array([i]).buffer)],
    }) as InferInit;
    const load = () => b.running.broker.load().find((l) => l.model === 'sleepy')!;
    const stream = c.stream();
    const ids = new Set<string>();
    const done = new Promise<void>((resolve, reject) => {
      stream.on('data', (m: ModelStreamInferResponse) => (m.errorMessage ? reject(new Error(m.errorMessage)) : ids.add(m.inferResponse!.id)));
      stream.on('error', reject);
      stream.on('status', () => resolve());
    });
    let most = 0;
    const watch = setInterval(() => {
      const l = load();
      most = Math.max(most, l.queued + l.running);
    }, 2);
    for (let i = 0; i < N; i++) stream.write(sleepy(i));
    stream.end();
    await done;
    clearInterval(watch);
    expect(ids.size).toBe(N);
    expect(most).toBeGreaterThan(0);
    expect(most).toBeLessThanOrEqual(STREAM_WINDOW);
  });

  test('responses are compressed in the encoding the client compressed its request with', async () => {
    const proxy = await countingProxy(bridge.port);
    const plain = new GrpcTestClient(proxy.port);
    const gzip = new grpc.Client(`127.0.0.1:${proxy.port}`, grpc.credentials.createInsecure(), { 'grpc.default_compression_algorithm': 2, 'grpc.max_receive_message_length': 64 << 20 });
    try {
      const SIZE = 1 << 20;
      const b0 = proxy.fromServer();
      const r1 = await plain.unary('modelInfer', identityRequest(SIZE));
      expect(r1.rawOutputContents[0].length).toBe(SIZE);
      const plainBytes = proxy.fromServer() - b0;
      expect(plainBytes).toBeGreaterThan(SIZE);

      const def = INFERENCE_SERVICE.ModelInfer;
      const b1 = proxy.fromServer();
      const r2 = await new Promise<ModelInferResponse>((resolve, reject) =>
        gzip.makeUnaryRequest(def.path, def.requestSerialize, def.responseDeserialize as (b: Buffer) => ModelInferResponse, identityRequest(SIZE, 'gz', 7), (e, r) => (e ? reject(e) : resolve(r!))),
      );
      const gzBytes = proxy.fromServer() - b1;
      expect(Buffer.from(r2.rawOutputContents[0]).equals(Buffer.alloc(SIZE, 7))).toBe(true);
      expect(gzBytes).toBeLessThan(SIZE / 10);
    } finally {
      plain.close();
      gzip.close();
      proxy.close();
    }
  });
});
