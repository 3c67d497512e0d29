/**
 * The gRPC bridge end to end: a grpc-js client built from the generated
 * messages, a real broker (Redis, ZeroMQ, model processes) and the bridge
 * started on an OS-chosen port. Health, metadata, config, statistics,
 * ModelInfer (raw and typed contents), every error status, cancellation,
 * ModelStreamInfer, a message over 4 MiB and the repository rpcs.
 */
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { startGrpcBridge, type GrpcBridge } from '../../bridges/grpc/server';
import { INFERENCE_SERVICE } from '../../bridges/grpc/service-definition';
import { DataType, ModelInstanceGroup_Kind } from '../../proto/gen/model_config_pb';
import type { ModelStreamInferResponse } from '../../proto/gen/grpc_service_pb';
import { row, simpleModel, sleepyModel, startTestBroker, waitFor, type TestBroker } from '../helpers/broker';
import { GrpcTestClient, int32Values, simpleRaw, type InferInit } from '../helpers/grpc-client';

const fp32Request = (model: string, values: number[], extra: Record<string, unknown> = {}): InferInit =>
  ({
    modelName: model,
    inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [1n, BigInt(values.length)] }],
    rawInputContents: [Buffer.from(Float32Array.from(values).buffer)],
    ...extra,
  }) as InferInit;

const MiB = 1024 * 1024;

describe('gRPC bridge, process runtime', () => {
  let b: TestBroker;
  let bridge: GrpcBridge;
  let c: GrpcTestClient;
  const load = (model: string) => b.running.broker.load().find((l) => l.model === model)!;
  const modelReady = async (model: string) => (await c.unary('modelReady', { name: model })).ready;

  beforeAll(async () => {
    b = await startTestBroker({
      models: {
        simple: simpleModel(),
        failing: simpleModel({ env: { SIMPLE_FAIL_ON: '999' } }),
        loadable: simpleModel(),
        echo: sleepyModel(20, { batch_size: 8 }),
        full: sleepyModel(400, { queue_capacity: 1 }),
        sleepy: sleepyModel(300),
        slowcancel: sleepyModel(1500),
        big: sleepyModel(1),
        broken: { command: ['node', '-e', 'process.exit(7)'], startup_timeout_ms: 5000 },
      },
    });
    bridge = await startGrpcBridge({
      broker: b.running.broker,
      host: '127.0.0.1',
      port: 0,
      maxMessageBytes: 64 * MiB,
      logger: pino({ level: process.env.TB_TEST_LOG ?? 'silent' }),
      version: 'test-version',
    });
    c = new GrpcTestClient(bridge.port);
    const models = ['simple', 'failing', 'loadable', 'echo', 'full', 'sleepy', 'slowcancel', 'big'];
    await waitFor(async () => (await Promise.all(models.map(modelReady))).every(Boolean), 30_000, 'models ready over gRPC');
  });
  afterAll(async () => {
    c?.close();
    await bridge?.close(1000);
    await b?.stop();
  });

  test('live, ready, server and model metadata, model readiness', async () => {
    expect(bridge.port).toBeGreaterThan(0);
    expect((await c.unary('serverLive', {})).live).toBe(true);
    // `broken` never becomes ready, so the server as a whole is not ready.
    expect((await c.unary('serverReady', {})).ready).toBe(false);
    const server = await c.unary('serverMetadata', {});
    expect(server.name).toBe('tensorbroker');
    expect(server.version).toBe('test-version');
    expect(server.extensions).toEqual(expect.arrayContaining(['statistics', 'model_configuration', 'binary_tensor_data']));

    const meta = await c.unary('modelMetadata', { name: 'simple' });
    expect(meta).toMatchObject({ name: 'simple', versions: ['1'], platform: 'tensorbroker_container' });
    expect(meta.inputs.map((t) => [t.name, t.datatype, t.shape])).toEqual([['INPUT0', 'INT32', [-1n, 16n]], ['INPUT1', 'INT32', [-1n, 16n]]]);
    expect(meta.outputs.map((t) => t.name)).toEqual(['OUTPUT0', 'OUTPUT1']);

    expect(await modelReady('simple')).toBe(true);
    expect((await c.unary('modelReady', { name: 'simple', version: '1' })).ready).toBe(true);
    const unknown = await c.fails('modelReady', { name: 'nope' });
    expect(unknown.code).toBe(grpc.status.NOT_FOUND);
    expect(unknown.details).toContain("unknown model 'nope'");
    expect((await c.fails('modelMetadata', { name: 'simple', version: '7' })).code).toBe(grpc.status.NOT_FOUND);
  });

  test('ModelConfig: the Triton config as a ModelConfig message', async () => {
    const { config } = await c.unary('modelConfig', { name: 'simple' });
    expect(config).toMatchObject({ name: 'simple', platform: 'tensorbroker_container', backend: 'tensorbroker', maxBatchSize: 8 });
    expect(config!.input.map((t) => [t.name, t.dataType, t.dims])).toEqual([['INPUT0', DataType.TYPE_INT32, [16n]], ['INPUT1', DataType.TYPE_INT32, [16n]]]);
    expect(config!.output.map((t) => t.name)).toEqual(['OUTPUT0', 'OUTPUT1']);
    expect(config!.schedulingChoice.case).toBe('dynamicBatching');
    if (config!.schedulingChoice.case === 'dynamicBatching') {
      expect(config!.schedulingChoice.value.defaultQueuePolicy).toMatchObject({ maxQueueSize: 1024, allowTimeoutOverride: true });
    }
    expect(config!.instanceGroup).toEqual([expect.objectContaining({ kind: ModelInstanceGroup_Kind.CPU, count: 1 })]);
    expect(config!.versionPolicy?.policyChoice).toMatchObject({ case: 'latest', value: { numVersions: 1 } });
    expect((await c.fails('modelConfig', { name: 'nope' })).code).toBe(grpc.status.NOT_FOUND);
  });

  test('ModelInfer with raw_input_contents: sums, differences, id and version echoed', async () => {
    const a = [row(16), row(16, 100)];
    const d = [row(16, 1), row(16, 2)];
    const res = await c.unary('modelInfer', simpleRaw(a, d, { id: 'req-1' }));
    expect(res).toMatchObject({ modelName: 'simple', modelVersion: '1', id: 'req-1' });
    expect(res.outputs.map((o) => [o.name, o.datatype, o.shape])).toEqual([['OUTPUT0', 'INT32', [2n, 16n]], ['OUTPUT1', 'INT32', [2n, 16n]]]);
    expect(res.rawOutputContents).toHaveLength(2);
    expect(int32Values(res.rawOutputContents[0])).toEqual(a.flat().map((v, i) => v + d.flat()[i]));
    expect(int32Values(res.rawOutputContents[1])).toEqual(a.flat().map((v, i) => v - d.flat()[i]));
    // No id given: none echoed (Triton's behaviour).
    expect((await c.unary('modelInfer', simpleRaw([row(16)], [row(16)]))).id).toBe('');
  });

  test('ModelInfer with typed contents (int_contents), a version, and requested outputs', async () => {
    const a = row(16, 5);
    const d = row(16, 7).map((v) => -v);
    const res = await c.unary('modelInfer', {
      modelName: 'simple',
      modelVersion: '1',
      inputs: [
        { name: 'INPUT0', datatype: 'INT32', shape: [1n, 16n], contents: { intContents: a } },
        { name: 'INPUT1', datatype: 'INT32', shape: [1n, 16n], contents: { intContents: d } },
      ],
      outputs: [{ name: 'OUTPUT1' }],
    });
    expect(res.outputs.map((o) => o.name)).toEqual(['OUTPUT1']);
    expect(res.rawOutputContents).toHaveLength(1);
    expect(int32Values(res.rawOutputContents[0])).toEqual(a.map((v, i) => v - d[i]));

    const both = await c.unary('modelInfer', simpleRaw([row(16)], [row(16)], { outputs: [{ name: 'OUTPUT0' }] }));
    expect(both.outputs.map((o) => o.name)).toEqual(['OUTPUT0']);
    expect(int32Values(both.rawOutputContents[0])).toEqual(row(16).map((v) => 2 * v));

    // FP32 typed contents through sleepy (echo).
    const echo = await c.unary('modelInfer', {
      modelName: 'echo',
      inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [1n, 3n], contents: { fp32Contents: [0.5, -1.25, 3] } }],
    });
    expect(Array.from(new Float32Array(new Uint8Array(echo.rawOutputContents[0]).buffer))).toEqual([0.5, -1.25, 3]);
  });

  test('INVALID_ARGUMENT: raw count mismatch, wrong datatype, unknown input, bad contents, bad parameters', async () => {
    const bad = async (req: InferInit, fragment: string) => {
      const err = await c.fails('modelInfer', req);
      expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(err.details).toContain(fragment);
    };
    const good = simpleRaw([row(16)], [row(16)]);
    await bad({ ...good, rawInputContents: [good.rawInputContents![0]] } as InferInit, 'raw_input_contents has 1 entries for 2 inputs');
    await bad({ ...good, inputs: [good.inputs![0], { name: 'INPUT1', datatype: 'FP32', shape: [1n, 16n] }] } as InferInit, 'expects datatype INT32');
    await bad({ ...good, inputs: [good.inputs![0], { name: 'INPUT9', datatype: 'INT32', shape: [1n, 16n] }] } as InferInit, 'INPUT9');
    await bad({ ...good, inputs: [good.inputs![0], { name: 'INPUT1', datatype: 'INT33', shape: [1n, 16n] }] } as InferInit, 'unknown datatype');
    await bad({ ...good, inputs: [good.inputs![0], { name: 'INPUT1', datatype: 'INT32', shape: [1n, 15n] }] } as InferInit, 'needs 60 bytes');
    await bad({ modelName: 'simple', inputs: [] }, 'no inputs');
    const typed = (contents: Record<string, unknown>, datatype = 'INT32') =>
      ({
        modelName: 'simple',
        inputs: [
          { name: 'INPUT0', datatype: 'INT32', shape: [1n, 16n], contents: { intContents: row(16) } },
          { name: 'INPUT1', datatype, shape: [1n, 16n], contents },
        ],
      }) as InferInit;
    await bad(typed({ intContents: row(15) }), 'needs 16 elements, int_contents has 15');
    await bad(typed({ fp32Contents: row(16) }), 'INT32 takes int_contents, the request filled fp32_contents');
    await bad(typed({}, 'FP16'), 'raw_input_contents');
    await bad({ ...good, parameters: { timeout: { parameterChoice: { case: 'stringParam', value: 'soon' } } } } as InferInit, "parameter 'timeout'");
    await bad({ ...good, modelName: '' } as InferInit, 'model_name');
  });

  test('a malformed protobuf message is refused, and the server keeps serving', async () => {
    const garbage = Buffer.from([0x2a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]); // field 5, length way past the end
    const err = await new Promise<grpc.ServiceError>((resolve) => {
      c.client.makeUnaryRequest(INFERENCE_SERVICE.ModelInfer.path, (x: Buffer) => x, (x: Buffer) => x, garbage, (e) => resolve(e!));
    });
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT); // grpc-js alone would answer INTERNAL
    expect(err.details).toContain('not a valid inference.ModelInferRequest');
    expect((await c.unary('serverLive', {})).live).toBe(true);
  });

  test('NOT_FOUND: unknown model and unknown version', async () => {
    const err = await c.fails('modelInfer', { ...simpleRaw([row(16)], [row(16)]), modelName: 'nope' } as InferInit);
    expect(err.code).toBe(grpc.status.NOT_FOUND);
    expect(err.details).toContain("unknown model 'nope'");
    expect((await c.fails('modelInfer', simpleRaw([row(16)], [row(16)], { modelVersion: '7' }))).code).toBe(grpc.status.NOT_FOUND);
  });

  test('RESOURCE_EXHAUSTED when the queue is full, with retry-after; the admitted requests succeed', async () => {
    const settled = await Promise.allSettled(Array.from({ length: 6 }, () => c.unary('modelInfer', fp32Request('full', [1, 2]))));
    const codes = settled.map((s) => (s.status === 'fulfilled' ? grpc.status.OK : (s.reason as grpc.ServiceError).code));
    expect(codes.filter((x) => x === grpc.status.RESOURCE_EXHAUSTED).length).toBeGreaterThan(0);
    expect(codes.filter((x) => x === grpc.status.OK).length).toBeGreaterThan(0);
    expect(codes.every((x) => x === grpc.status.OK || x === grpc.status.RESOURCE_EXHAUSTED)).toBe(true);
    const rejected = settled.find((s) => s.status === 'rejected') as PromiseRejectedResult;
    const e = rejected.reason as grpc.ServiceError;
    expect(e.details).toContain('queue is full');
    expect(Number(e.metadata.get('retry-after')[0])).toBeGreaterThanOrEqual(1);
  });

  test('DEADLINE_EXCEEDED: a client deadline shorter than the work, and the timeout parameter', async () => {
    const started = Date.now();
    const err = await c.fails('modelInfer', fp32Request('sleepy', [1]), 100);
    expect(err.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    expect(Date.now() - started).toBeLessThan(290);
    const param = await c.fails('modelInfer', fp32Request('sleepy', [1], { parameters: { timeout: { parameterChoice: { case: 'int64Param', value: 50_000n } } } }));
    expect(param.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    expect(param.details).toContain('deadline of 50 ms');
    await waitFor(() => load('sleepy').queued === 0, 2000, 'sleepy queue empty');
  });

  test('UNAVAILABLE for a model that cannot start', async () => {
    await waitFor(() => b.running.broker.modelReady('broken').phase === 'failed', 20_000, 'broken model failed');
    expect(await modelReady('broken')).toBe(false);
    const err = await c.fails('modelInfer', { ...simpleRaw([row(16)], [row(16)]), modelName: 'broken' } as InferInit);
    expect(err.code).toBe(grpc.status.UNAVAILABLE);
    expect(err.details).toContain("model 'broken' is not ready");
  });

  test("INTERNAL carries the model's own error; the other request of the batch succeeds", async () => {
    const [ok, failed] = await Promise.allSettled([
      c.unary('modelInfer', { ...simpleRaw([row(16)], [row(16)]), modelName: 'failing' } as InferInit),
      c.unary('modelInfer', { ...simpleRaw([row(16, 999)], [row(16)]), modelName: 'failing' } as InferInit),
    ]);
    expect(ok.status).toBe('fulfilled');
    expect(failed.status).toBe('rejected');
    const e = (failed as PromiseRejectedResult).reason as grpc.ServiceError;
    expect(e.code).toBe(grpc.status.INTERNAL);
    expect(e.details).toContain('row rejected by model');
  });

  test('a cancelled call leaves the queue at once', async () => {
    await waitFor(() => load('slowcancel').queued === 0 && load('slowcancel').running === 0, 5000, 'slowcancel idle');
    const first = c.start('modelInfer', fp32Request('slowcancel', [1]));
    await waitFor(() => load('slowcancel').running === 1, 2000, 'first request running');
    const second = c.start('modelInfer', fp32Request('slowcancel', [2]));
    await waitFor(() => load('slowcancel').queued === 1, 2000, 'second request queued');
    const cancelledAt = Date.now();
    second.call.cancel();
    await expect(second.response).rejects.toMatchObject({ code: grpc.status.CANCELLED });
    await waitFor(() => load('slowcancel').queued === 0, 1000, 'cancelled request removed');
    expect(Date.now() - cancelledAt).toBeLessThan(1000);
    expect(load('slowcancel').running).toBe(1); // the first is still being computed
    const res = await first.response;
    expect(Array.from(new Float32Array(new Uint8Array(res.rawOutputContents[0]).buffer))).toEqual([1]);
  });

  test('ModelStreamInfer: 20 interleaved requests on two models, all answered with their ids', async () => {
    const stream = c.stream();
    const answers: ModelStreamInferResponse[] = [];
    const done = new Promise<void>((resolve, reject) => {
      stream.on('data', (m: ModelStreamInferResponse) => answers.push(m));
      stream.on('error', reject);
      stream.on('end', () => resolve());
    });
    for (let i = 0; i < 20; i++) {
      if (i % 2 === 0) stream.write(simpleRaw([row(16, i)], [row(16)], { id: `s-${i}` }));
      else stream.write(fp32Request('echo', [i, i + 0.5], { id: `e-${i}` }));
    }
    stream.end();
    await done;
    expect(answers).toHaveLength(20);
    const byId = new Map(answers.map((a) => [a.inferResponse!.id, a]));
    expect(byId.size).toBe(20);
    for (let i = 0; i < 20; i++) {
      const a = byId.get(i % 2 === 0 ? `s-${i}` : `e-${i}`)!;
      expect(a.errorMessage).toBe('');
      const r = a.inferResponse!;
      if (i % 2 === 0) {
        expect(r.modelName).toBe('simple');
        expect(int32Values(r.rawOutputContents[0])).toEqual(row(16, i).map((v, k) => v + k));
      } else {
        expect(r.modelName).toBe('echo');
        expect(Array.from(new Float32Array(new Uint8Array(r.rawOutputContents[0]).buffer))).toEqual([i, i + 0.5]);
      }
    }
  });

  test('ModelStreamInfer: an error answers that request and the stream stays open', async () => {
    const stream = c.stream();
    const answers: ModelStreamInferResponse[] = [];
    let next: (() => void) | undefined;
    stream.on('data', (m: ModelStreamInferResponse) => {
      answers.push(m);
      next?.();
    });
    const ended = new Promise<grpc.StatusObject>((resolve) => stream.on('status', resolve));
    const answered = (n: number) => new Promise<void>((resolve) => {
      next = () => answers.length >= n && resolve();
      next();
    });
    stream.write(simpleRaw([row(16)], [row(16)], { id: 'ok-1' }));
    await answered(1);
    stream.write({ ...simpleRaw([row(16)], [row(16)]), modelName: 'nope', id: 'bad' } as InferInit);
    await answered(2);
    stream.write(simpleRaw([row(16)], [row(16)], { id: 'bad-shape', inputs: [{ name: 'INPUT0', datatype: 'INT32', shape: [1n, 16n] }] }));
    await answered(3);
    stream.write(simpleRaw([row(16, 3)], [row(16)], { id: 'ok-2' }));
    await answered(4);
    stream.end();
    expect((await ended).code).toBe(grpc.status.OK);
    expect(answers.map((a) => a.inferResponse?.id)).toEqual(['ok-1', 'bad', 'bad-shape', 'ok-2']);
    expect(answers[1].errorMessage).toContain("unknown model 'nope'");
    expect(answers[1].inferResponse?.modelName).toBe('nope');
    expect(answers[2].errorMessage).toContain('raw_input_contents has 2 entries for 1 inputs');
    expect(answers[3].errorMessage).toBe('');
    expect(int32Values(answers[3].inferResponse!.rawOutputContents[0])).toEqual(row(16, 3).map((v, k) => v + k));
  });

  test('ModelStreamInfer: cancelling the stream removes its queued requests', async () => {
    await waitFor(() => load('slowcancel').queued === 0 && load('slowcancel').running === 0, 5000, 'slowcancel idle');
    const stream = c.stream();
    const answers: ModelStreamInferResponse[] = [];
    stream.on('data', (m: ModelStreamInferResponse) => answers.push(m));
    const failed = new Promise<grpc.ServiceError>((resolve) => stream.on('error', resolve));
    for (let i = 0; i < 3; i++) stream.write(fp32Request('slowcancel', [i], { id: `c-${i}` }));
    await waitFor(() => load('slowcancel').running === 1 && load('slowcancel').queued === 2, 2000, 'one running, two queued');
    const cancelledAt = Date.now();
    stream.cancel();
    expect((await failed).code).toBe(grpc.status.CANCELLED);
    await waitFor(() => load('slowcancel').queued === 0, 1000, 'queued stream requests removed');
    expect(Date.now() - cancelledAt).toBeLessThan(1000);
    expect(answers).toHaveLength(0);
    // The bridge keeps serving.
    expect((await c.unary('modelInfer', simpleRaw([row(16)], [row(16)]))).outputs).toHaveLength(2);
  });

  test('a message bigger than 4 MiB passes both ways (maxMessageBytes 64 MiB)', async () => {
    const n = 1_500_000;
    const values = new Float32Array(n);
    for (let i = 0; i < n; i++) values[i] = i % 1000;
    const res = await c.unary('modelInfer', {
      modelName: 'big',
      inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [1n, BigInt(n)] }],
      rawInputContents: [Buffer.from(values.buffer)],
    });
    expect(res.outputs[0].shape).toEqual([1n, BigInt(n)]);
    expect(res.rawOutputContents[0].length).toBe(n * 4);
    expect(Buffer.from(res.rawOutputContents[0]).equals(Buffer.from(values.buffer))).toBe(true);
  });

  test('ModelStatistics: per model and for all models', async () => {
    const { modelStats } = await c.unary('modelStatistics', { name: 'simple' });
    expect(modelStats).toHaveLength(1);
    const s = modelStats[0];
    expect(s).toMatchObject({ name: 'simple', version: '1' });
    expect(s.inferenceCount).toBeGreaterThan(0n);
    expect(s.executionCount).toBeGreaterThan(0n);
    expect(s.inferenceStats!.success!.count).toBeGreaterThan(0n);
    expect(s.lastInference).toBeGreaterThan(0n);
    expect(s.batchStats.length).toBeGreaterThan(0);
    const all = await c.unary('modelStatistics', {});
    expect(all.modelStats.map((m) => m.name)).toEqual(expect.arrayContaining(['simple', 'echo', 'broken']));
    expect((await c.fails('modelStatistics', { name: 'nope' })).code).toBe(grpc.status.NOT_FOUND);
  });

  test('RepositoryIndex, RepositoryModelUnload and RepositoryModelLoad round trip', async () => {
    const index = await c.unary('repositoryIndex', {});
    expect(index.models).toEqual(expect.arrayContaining([expect.objectContaining({ name: 'loadable', version: '1', state: 'READY' })]));
    expect(index.models.find((m) => m.name === 'broken')?.state).not.toBe('READY');
    const readyOnly = await c.unary('repositoryIndex', { ready: true });
    expect(readyOnly.models.every((m) => m.state === 'READY')).toBe(true);
    expect(readyOnly.models.some((m) => m.name === 'broken')).toBe(false);

    await c.unary('repositoryModelUnload', { modelName: 'loadable' });
    expect(await modelReady('loadable')).toBe(false);
    const err = await c.fails('modelInfer', { ...simpleRaw([row(16)], [row(16)]), modelName: 'loadable' } as InferInit);
    expect(err.code).toBe(grpc.status.UNAVAILABLE);
    expect((await c.unary('repositoryIndex', {})).models.find((m) => m.name === 'loadable')).toMatchObject({ state: 'UNAVAILABLE', reason: expect.stringMatching(/^unloaded/) });

    await c.unary('repositoryModelLoad', { modelName: 'loadable' });
    expect(await modelReady('loadable')).toBe(true);
    const res = await c.unary('modelInfer', { ...simpleRaw([row(16)], [row(16)]), modelName: 'loadable' } as InferInit);
    expect(int32Values(res.rawOutputContents[0])).toEqual(row(16).map((v) => 2 * v));

    expect((await c.fails('repositoryModelLoad', { modelName: 'nope' })).code).toBe(grpc.status.NOT_FOUND);
    const override = await c.fails('repositoryModelLoad', { modelName: 'loadable', parameters: { config: { parameterChoice: { case: 'stringParam', value: '{"platform":"x"}' } } } });
    expect(override.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(override.details).toContain("config field 'platform'");
  });
});
