/**
 * The classification extension through REST and gRPC, with real model
 * processes: `classes` (labels declared in READY) and `identity` (none).
 */
import type { ModelInferResponse } from '../../proto/gen/grpc_service_pb';
import { decodeBytes } from '../../sdk/node';
import { getJson, modelMain, postJson, startTestBroker, waitReady, type TestBroker } from '../helpers/broker';
import { GrpcTestClient, type InferInit } from '../helpers/grpc-client';

let b: TestBroker;
let client: GrpcTestClient;

beforeAll(async () => {
  b = await startTestBroker({
    models: {
      classes: { command: ['node', modelMain('classes')], batch_size: 8 },
      identity: { command: ['node', modelMain('identity')], batch_size: 8 },
    },
  });
  client = new GrpcTestClient(b.running.ports.grpc);
  await waitReady(b, 'classes');
  await waitReady(b, 'identity');
});

afterAll(async () => {
  client?.close();
  await b?.stop();
});

const SCORES = [[0.1, 0.7, 0.2, 0], [3, 1, 4, 1]];

describe('REST', () => {
  test('server metadata lists classification', async () => {
    expect((await getJson(`${b.url}/v2`)).extensions).toContain('classification');
  });

  test('top-k "value:index:label" per row, BYTES [rows, k]', async () => {
    const res = await postJson(`${b.url}/v2/models/classes/infer`, {
      inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [2, 4], data: SCORES }],
      outputs: [{ name: 'OUTPUT0', parameters: { classification: 2 } }],
    });
    expect(res.status).toBe(200);
    expect(res.json.outputs).toEqual([{ name: 'OUTPUT0', datatype: 'BYTES', shape: [2, 2], data: ['0.7:1:pickle', '0.2:2:banana', '4:2:banana', '3:0:apple'] }]);
  });

  test('"value:index" when the model has no labels; k beyond the classes is cut to them', async () => {
    const res = await postJson(`${b.url}/v2/models/identity/infer`, {
      inputs: [{ name: 'IN_FP32', datatype: 'FP32', shape: [1, 3], data: [1.5, -2, 2.25] }],
      outputs: [{ name: 'OUT_FP32', parameters: { classification: 5 } }],
    });
    expect(res.status).toBe(200);
    expect(res.json.outputs[0]).toEqual({ name: 'OUT_FP32', datatype: 'BYTES', shape: [1, 3], data: ['2.25:2', '1.5:0', '-2:1'] });
  });

  test('a bad count, or a BYTES output, is a 400 naming the output', async () => {
    const bad = await postJson(`${b.url}/v2/models/classes/infer`, {
      inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [1, 4], data: SCORES[0] }],
      outputs: [{ name: 'OUTPUT0', parameters: { classification: 0 } }],
    });
    expect(bad.status).toBe(400);
    expect(bad.json.error).toContain("output 'OUTPUT0': parameter 'classification' must be an integer");
    const bytes = await postJson(`${b.url}/v2/models/identity/infer`, {
      inputs: [{ name: 'IN_BYTES', datatype: 'BYTES', shape: [1, 1], data: ['x'] }],
      outputs: [{ name: 'OUT_BYTES', parameters: { classification: 1 } }],
    });
    expect(bytes.status).toBe(400);
    expect(bytes.json.error).toContain("output 'OUT_BYTES': classification needs a numeric output, not BYTES");
  });
});

describe('gRPC', () => {
  const request = (classification: bigint): InferInit => ({
    modelName: 'classes',
    inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [2n, 4n] }],
    rawInputContents: [Buffer.from(Float32Array.from(SCORES.flat()).buffer)],
    outputs: [{ name: 'OUTPUT0', parameters: { classification: { parameterChoice: { case: 'int64Param', value: classification } } } }],
  }) as InferInit;

  test('server metadata lists classification', async () => {
    expect((await client.unary('serverMetadata', {})).extensions).toContain('classification');
  });

  test('int64_param classification: BYTES [rows, k] with labels', async () => {
    const res: ModelInferResponse = await client.unary('modelInfer', request(3n));
    expect(res.outputs[0]).toMatchObject({ name: 'OUTPUT0', datatype: 'BYTES', shape: [2n, 3n] });
    expect(decodeBytes(Buffer.from(res.rawOutputContents[0])).map(String)).toEqual([
      '0.7:1:pickle', '0.2:2:banana', '0.1:0:apple', '4:2:banana', '3:0:apple', '1:1:pickle',
    ]);
  });

  test('on a ModelStreamInfer stream too, with the error of a bad count as a stream answer', async () => {
    const stream = client.stream();
    const answers: { errorMessage: string; inferResponse?: ModelInferResponse }[] = [];
    const done = new Promise<void>((resolve, reject) => {
      stream.on('data', (m: { errorMessage: string; inferResponse?: ModelInferResponse }) => {
        answers.push(m);
        if (answers.length === 2) resolve();
      });
      stream.on('error', reject);
    });
    stream.write({ ...request(1n), id: 'good' });
    stream.write({ ...request(0n), id: 'bad' });
    await done;
    stream.end();
    const good = answers.find((a) => a.inferResponse?.id === 'good' && !a.errorMessage)!;
    expect(decodeBytes(Buffer.from(good.inferResponse!.rawOutputContents[0])).map(String)).toEqual(['0.7:1:pickle', '4:2:banana']);
    const bad = answers.find((a) => a.inferResponse?.id === 'bad')!;
    expect(bad.errorMessage).toContain("parameter 'classification' must be an integer");
  });

  test('a bad count is INVALID_ARGUMENT', async () => {
    const err = await client.fails('modelInfer', request(-1n));
    expect(err.code).toBe(3);
    expect(err.details).toContain("parameter 'classification' must be an integer");
  });
});
