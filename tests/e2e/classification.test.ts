/**
 * The classification extension through REST and gRPC, with real model
 * processes: `classes` (labels declared in READY) and `identity` (none),
 * each also served with a label file named in models.yaml (`labels:`), which
 * wins over READY's labels; label files never come from the API or a load.
 */
import type { ModelInferResponse } from '../../proto/gen/grpc_service_pb';
import { decodeBytes } from '../../sdk/node';
import { getJson, modelMain, postJson, startTestBroker, waitFor, waitReady, type TestBroker } from '../helpers/broker';
import { GrpcTestClient, type InferInit } from '../helpers/grpc-client';

let b: TestBroker;
let client: GrpcTestClient;

const TOKEN = 'classification-token';
const AUTH = { authorization: `Bearer ${TOKEN}` };

beforeAll(async () => {
  b = await startTestBroker({
    adminToken: TOKEN,
    // Triton's label file: one label per line, line i = class i; paths relative to models.yaml.
    files: { 'labels/fruit.txt': 'kiwi\nlime\nplum\nfig\n', 'identity-labels.txt': 'low\r\nmid\r\nhigh\r\n' },
    models: {
      classes: { command: ['node', modelMain('classes')], batch_size: 8 },
      classes_file: { command: ['node', modelMain('classes')], batch_size: 8, labels: { OUTPUT0: 'labels/fruit.txt' } },
      identity: { command: ['node', modelMain('identity')], batch_size: 8 },
      identity_file: { command: ['node', modelMain('identity')], batch_size: 8, labels: { OUT_FP32: './identity-labels.txt' } },
    },
  });
  client = new GrpcTestClient(b.running.ports.grpc);
  await Promise.all(['classes', 'classes_file', 'identity', 'identity_file'].map((m) => waitReady(b, m)));
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

  test('labels from the label file in models.yaml win over READY\'s', async () => {
    const res = await postJson(`${b.url}/v2/models/classes_file/infer`, {
      inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [2, 4], data: SCORES }],
      outputs: [{ name: 'OUTPUT0', parameters: { classification: 2 } }],
    });
    expect(res.status).toBe(200);
    expect(res.json.outputs[0].data).toEqual(['0.7:1:lime', '0.2:2:plum', '4:2:plum', '3:0:kiwi']);
  });

  test('a model without READY labels is labelled from its label file (CRLF lines)', async () => {
    const body = {
      inputs: [{ name: 'IN_FP32', datatype: 'FP32', shape: [1, 3], data: [1.5, -2, 2.25] }],
      outputs: [{ name: 'OUT_FP32', parameters: { classification: 3 } }],
    };
    const res = await postJson(`${b.url}/v2/models/identity_file/infer`, body);
    expect(res.json.outputs[0].data).toEqual(['2.25:2:high', '1.5:0:low', '-2:1:mid']);
    // Without class_count the label file changes nothing: the raw tensor comes back.
    const raw = await postJson(`${b.url}/v2/models/identity_file/infer`, { inputs: body.inputs, outputs: [{ name: 'OUT_FP32' }] });
    expect(raw.json.outputs.find((o: { name: string }) => o.name === 'OUT_FP32')).toMatchObject({ datatype: 'FP32', shape: [1, 3], data: [1.5, -2, 2.25] });
  });

  test('binary_data with class_count (tritonclient HTTP\'s default for image_client): the top-k BYTES after the JSON header', async () => {
    const res = await fetch(`${b.url}/v2/models/classes_file/infer`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [1, 4], data: SCORES[0] }],
        outputs: [{ name: 'OUTPUT0', parameters: { classification: 2, binary_data: true } }],
      }),
    });
    expect(res.status).toBe(200);
    const body = Buffer.from(await res.arrayBuffer());
    const headLength = Number(res.headers.get('inference-header-content-length'));
    const head = JSON.parse(body.subarray(0, headLength).toString()) as { outputs: { name: string; datatype: string; shape: number[]; parameters: { binary_data_size: number } }[] };
    expect(head.outputs[0]).toMatchObject({ name: 'OUTPUT0', datatype: 'BYTES', shape: [1, 2] });
    const bin = body.subarray(headLength);
    expect(head.outputs[0].parameters.binary_data_size).toBe(bin.length);
    expect(decodeBytes(bin).map(String)).toEqual(['0.7:1:lime', '0.2:2:plum']);
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

  test('labels from the label file, and none without it', async () => {
    const res: ModelInferResponse = await client.unary('modelInfer', { ...request(2n), modelName: 'classes_file' });
    expect(decodeBytes(Buffer.from(res.rawOutputContents[0])).map(String)).toEqual(['0.7:1:lime', '0.2:2:plum', '4:2:plum', '3:0:kiwi']);
    const plain: ModelInferResponse = await client.unary('modelInfer', {
      modelName: 'identity',
      inputs: [{ name: 'IN_FP32', datatype: 'FP32', shape: [1n, 3n] }],
      rawInputContents: [Buffer.from(Float32Array.from([1.5, -2, 2.25]).buffer)],
      outputs: [{ name: 'OUT_FP32', parameters: { classification: { parameterChoice: { case: 'int64Param', value: 1n } } } }],
    } as InferInit);
    expect(decodeBytes(Buffer.from(plain.rawOutputContents[0])).map(String)).toEqual(['2.25:2']);
    const labelled: ModelInferResponse = await client.unary('modelInfer', { ...request(1n), modelName: 'identity_file', inputs: [{ name: 'IN_FP32', datatype: 'FP32', shape: [1n, 3n] }],
      rawInputContents: [Buffer.from(Float32Array.from([1.5, -2, 2.25]).buffer)],
      outputs: [{ name: 'OUT_FP32', parameters: { classification: { parameterChoice: { case: 'int64Param', value: 1n } } } }] } as InferInit);
    expect(decodeBytes(Buffer.from(labelled.rawOutputContents[0])).map(String)).toEqual(['2.25:2:high']);
  });

  test('a bad count is INVALID_ARGUMENT', async () => {
    const err = await client.fails('modelInfer', request(-1n));
    expect(err.code).toBe(3);
    expect(err.details).toContain("parameter 'classification' must be an integer");
  });
});

describe('labels never name host files outside models.yaml', () => {
  const patch = async (model: string, body: unknown) => {
    const res = await fetch(`${b.url}/admin/models/${model}`, { method: 'PATCH', headers: { 'content-type': 'application/json', ...AUTH }, body: JSON.stringify(body) });
    return { status: res.status, json: (await res.json()) as { error?: string; labels?: unknown } };
  };

  test('the admin API refuses a label file path with a 400 naming the field', async () => {
    const res = await patch('identity', { labels: { OUT_FP32: '/etc/passwd' } });
    expect(res.status).toBe(400);
    expect(res.json.error).toContain('field "labels"');
    expect(res.json.error).toContain('only models.yaml on disk may name files');
    const put = await fetch(`${b.url}/admin/models/newcomer`, {
      method: 'PUT', headers: { 'content-type': 'application/json', ...AUTH },
      body: JSON.stringify({ image: 'tensorbroker/simple:dev', min_replicas: 0, labels: { OUTPUT0: 'labels/fruit.txt' } }),
    });
    expect(put.status).toBe(400);
    expect(((await put.json()) as { error: string }).error).toContain('field "labels"');
  });

  test('a repository load naming a label_filename is refused with a 400 naming the field', async () => {
    const cfg = { output: [{ name: 'OUTPUT0', data_type: 'TYPE_FP32', dims: [4], label_filename: '/etc/passwd' }] };
    const res = await postJson(`${b.url}/v2/repository/models/classes/load`, { parameters: { config: JSON.stringify(cfg) } }, AUTH);
    expect(res.status).toBe(400);
    expect(res.json.error).toContain("config field 'output[0].label_filename' is refused");
  });

  test('a list of labels through the admin API is taken', async () => {
    const res = await patch('identity', { labels: { OUT_FP32: ['a', 'b', 'c'] } });
    expect(res.status).toBe(200);
    expect(res.json.labels).toEqual({ OUT_FP32: ['a', 'b', 'c'] });
    const body = { inputs: [{ name: 'IN_FP32', datatype: 'FP32', shape: [1, 3], data: [1.5, -2, 2.25] }], outputs: [{ name: 'OUT_FP32', parameters: { classification: 1 } }] };
    await waitFor(async () => (await postJson(`${b.url}/v2/models/identity/infer`, body)).json.outputs?.[0]?.data?.[0] === '2.25:2:c', 10_000, 'the patched labels');
  });
});
