/**
 * Non-batching models (models.yaml batch_size 0, Triton max_batch_size 0)
 * through a real broker and the compiled channel-mean example: whole shapes
 * over REST and gRPC, one request per run, config and metadata as Triton shows them.
 */
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { startGrpcBridge, type GrpcBridge } from '../../bridges/grpc/server';
import { validateEntry } from '../../model-manager/schema';
import { getJson, modelMain, postJson, startTestBroker, waitReady, type TestBroker } from '../helpers/broker';
import { GrpcTestClient } from '../helpers/grpc-client';

// 3 channels of 2x2: channel c holds c*10 + 0..3, so its mean is c*10 + 1.5.
const IMAGE = [0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23];

describe('non-batching model (batch_size 0)', () => {
  let b: TestBroker;
  let bridge: GrpcBridge;
  let c: GrpcTestClient;

  beforeAll(async () => {
    b = await startTestBroker({
      // max_wait_ms would let a batching model group the concurrent requests below.
      models: { 'channel-mean': { command: ['node', modelMain('channel-mean')], batch_size: 0, max_wait_ms: 200 } },
    });
    bridge = await startGrpcBridge({
      broker: b.running.broker, host: '127.0.0.1', port: 0, maxMessageBytes: 1 << 20,
      logger: pino({ level: 'silent' }), version: 'test',
    });
    c = new GrpcTestClient(bridge.port);
    await waitReady(b, 'channel-mean');
  });
  afterAll(async () => {
    c?.close();
    await bridge?.close(1000);
    await b?.stop();
  });

  test('the schema takes batch_size 0 for stateless models only', () => {
    expect(validateEntry('m', { command: 'x', batch_size: 0 }, { allowCommand: true })).toHaveProperty('spec.batch_size', 0);
    const bad = validateEntry('m', { command: 'x', batch_size: 0, stateless: false }, { allowCommand: true });
    expect(bad).toEqual({ errors: [expect.stringContaining('"batch_size" 0 (a non-batching model) needs "stateless": true')] });
    expect(validateEntry('m', { command: 'x', batch_size: -1 }, { allowCommand: true })).toHaveProperty('errors');
  });

  test('REST: whole shapes in and out; metadata and config as Triton reports them', async () => {
    const meta = await getJson(`${b.url}/v2/models/channel-mean`);
    expect(meta.inputs).toEqual([{ name: 'IMAGE', datatype: 'FP32', shape: [3, -1, -1] }]);
    expect(meta.outputs).toEqual([{ name: 'MEAN', datatype: 'FP32', shape: [3] }]);
    const config = await getJson(`${b.url}/v2/models/channel-mean/config`);
    expect(config.max_batch_size).toBe(0);
    expect(config.input[0].dims).toEqual([3, -1, -1]);
    expect(config.output[0].dims).toEqual([3]);

    const res = await postJson(`${b.url}/v2/models/channel-mean/infer`, {
      inputs: [{ name: 'IMAGE', datatype: 'FP32', shape: [3, 2, 2], data: IMAGE }],
    });
    expect(res.status).toBe(200);
    expect(res.json.outputs).toEqual([{ name: 'MEAN', datatype: 'FP32', shape: [3], data: [1.5, 11.5, 21.5] }]);

    // A batch dimension in front is a shape mismatch, not a batch of one.
    const batched = await postJson(`${b.url}/v2/models/channel-mean/infer`, {
      inputs: [{ name: 'IMAGE', datatype: 'FP32', shape: [1, 3, 2, 2], data: IMAGE }],
    });
    expect(batched.status).toBe(400);
    expect(batched.json.error).toContain('does not match the model\'s [3,-1,-1]');
    const wrong = await postJson(`${b.url}/v2/models/channel-mean/infer`, {
      inputs: [{ name: 'IMAGE', datatype: 'FP32', shape: [4, 3, 1], data: IMAGE }],
    });
    expect(wrong.status).toBe(400);
  });

  test('gRPC: whole shapes, config max_batch_size 0, concurrent requests each run alone', async () => {
    const meta = await c.unary('modelMetadata', { name: 'channel-mean' });
    expect(meta.inputs.map((t) => t.shape)).toEqual([[3n, -1n, -1n]]);
    const { config } = await c.unary('modelConfig', { name: 'channel-mean' });
    expect(config?.maxBatchSize).toBe(0);
    expect(config?.input[0].dims).toEqual([3n, -1n, -1n]);

    const before = (await getJson(`${b.url}/v2/models/channel-mean/stats`)).model_stats[0];
    const ask = (k: number) => c.unary('modelInfer', {
      modelName: 'channel-mean',
      inputs: [{ name: 'IMAGE', datatype: 'FP32', shape: [3n, 1n, 4n] }],
      rawInputContents: [Buffer.from(Float32Array.from(IMAGE.map((v) => v + k)).buffer)],
    });
    const answers = await Promise.all([0, 1, 2, 3].map(ask));
    answers.forEach((a, k) => {
      expect(a.outputs[0].shape).toEqual([3n]);
      expect(Array.from(new Float32Array(new Uint8Array(a.rawOutputContents[0]).buffer))).toEqual([1.5 + k, 11.5 + k, 21.5 + k]);
    });
    const after = (await getJson(`${b.url}/v2/models/channel-mean/stats`)).model_stats[0];
    expect(after.execution_count - before.execution_count).toBe(4);
    expect(after.batch_stats.map((s: { batch_size: number }) => s.batch_size)).toEqual([1]);

    const err = await c.fails('modelInfer', {
      modelName: 'channel-mean',
      inputs: [{ name: 'IMAGE', datatype: 'FP32', shape: [3n, 2n] }],
      rawInputContents: [Buffer.alloc(24)],
    });
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
  });
});
