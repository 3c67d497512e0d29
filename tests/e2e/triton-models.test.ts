/**
 * Triton's example models (examples/triton/models.yaml, served by the CLI with
 * the process runtime, exactly as the README shows) through REST and gRPC,
 * checking what Triton's example clients check: simple_string sums and
 * differences as strings, simple_identity returning bytes with NULs,
 * simple_int8 add/sub, and simple_sequence answering INPUT + START for two
 * interleaved sequences on one gRPC stream (int and string ids). Then the
 * independent Python client (tests/clients/triton_examples_client.py, grpcio
 * with stubs from proto/) replays Triton's example scripts against them,
 * including the decoupled repeat_int32 ones (simple_grpc_custom_repeat and the
 * read-until-final loop with enable_empty_final_response).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { create } from '@bufbuild/protobuf';
import { ModelInferRequestSchema, type InferParameter, type ModelInferResponse } from '../../proto/gen/grpc_service_pb';
import { encodeBytes, decodeBytes } from '../../sdk/node';
import { getJson, postJson, ROOT, waitFor } from '../helpers/broker';
import { startCliBroker } from '../helpers/cli-broker';
import { GrpcTestClient, int32Bytes, int32Values, type InferInit } from '../helpers/grpc-client';
import { startRedis, type RedisHandle } from '../helpers/redis';

const MODELS = ['simple_string', 'simple_identity', 'simple_int8', 'simple_sequence'];
const SEQ_VALUES = [11, 7, 5, 3, 2, 0, 1];
// `| 0` turns -0 into 0 (Int32 answers have no -0).
const NEG_VALUES = SEQ_VALUES.map((v) => -v | 0);

let redis: RedisHandle;
let dir: string;
let child: ChildProcess;
let url: string;
let grpcPort: number;
let client: GrpcTestClient;

beforeAll(async () => {
  redis = await startRedis();
  dir = await mkdtemp(path.join(os.tmpdir(), 'tb-triton-'));
  const started = await startCliBroker([
    '--runtime', 'process', '--models', path.join(ROOT, 'examples', 'triton', 'models.yaml'),
    '--redis-url', redis.url, '--redis-prefix', `triton-${process.pid}:`,
    '--socket-dir', path.join(dir, 'sock'), '--broker-id', `triton-${process.pid}`,
  ], {}, { cwd: dir });
  ({ child, url } = started);
  grpcPort = started.lines.find((l) => l.msg === 'tensorbroker serving')!.grpc as number;
  for (const m of MODELS) await waitFor(async () => (await fetch(`${url}/v2/models/${m}/ready`)).status === 200, 30_000, `${m} ready`);
  client = new GrpcTestClient(grpcPort);
});

afterAll(async () => {
  client?.close();
  if (child && child.exitCode === null) child.kill('SIGKILL');
  await redis?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const range16 = Array.from({ length: 16 }, (_, i) => i);

describe('REST', () => {
  test('config and metadata match Triton\'s config.pbtxt', async () => {
    const cfg = await getJson(`${url}/v2/models/simple_string/config`);
    expect(cfg).toMatchObject({ name: 'simple_string', max_batch_size: 8, input: [{ name: 'INPUT0', data_type: 'TYPE_STRING', dims: [16] }, { name: 'INPUT1' }] });
    expect(cfg.output.map((o: { name: string }) => o.name)).toEqual(['OUTPUT0', 'OUTPUT1']);
    expect(await getJson(`${url}/v2/models/simple_identity/config`)).toMatchObject({ max_batch_size: 8, input: [{ name: 'INPUT0', data_type: 'TYPE_STRING', dims: [-1] }] });
    expect(await getJson(`${url}/v2/models/simple_int8/config`)).toMatchObject({ max_batch_size: 8, input: [{ name: 'INPUT0', data_type: 'TYPE_INT8', dims: [16] }, { name: 'INPUT1' }] });
    const seq = await getJson(`${url}/v2/models/simple_sequence/config`);
    expect(seq).toMatchObject({ max_batch_size: 8, input: [{ name: 'INPUT', data_type: 'TYPE_INT32', dims: [1] }], output: [{ name: 'OUTPUT', data_type: 'TYPE_INT32', dims: [1] }] });
    expect(seq.sequence_batching).toBeDefined();
  });

  test('simple_string: sum and difference of integer strings, as strings', async () => {
    const res = await postJson(`${url}/v2/models/simple_string/infer`, {
      inputs: [
        { name: 'INPUT0', datatype: 'BYTES', shape: [1, 16], data: range16.map(String) },
        { name: 'INPUT1', datatype: 'BYTES', shape: [1, 16], data: range16.map(() => '1') },
      ],
    });
    expect(res.status).toBe(200);
    const out = Object.fromEntries(res.json.outputs.map((o: { name: string; data: string[]; datatype: string; shape: number[] }) => [o.name, o]));
    expect(out.OUTPUT0).toMatchObject({ datatype: 'BYTES', shape: [1, 16], data: range16.map((v) => String(v + 1)) });
    expect(out.OUTPUT1).toMatchObject({ datatype: 'BYTES', shape: [1, 16], data: range16.map((v) => String(v - 1)) });
  });

  test('simple_string: an element that is not an integer fails its request with a clear message', async () => {
    const data = range16.map(String);
    data[3] = 'three';
    const res = await postJson(`${url}/v2/models/simple_string/infer`, {
      inputs: [
        { name: 'INPUT0', datatype: 'BYTES', shape: [1, 16], data },
        { name: 'INPUT1', datatype: 'BYTES', shape: [1, 16], data: range16.map(String) },
      ],
    });
    expect(res.status).toBeGreaterThanOrEqual(400);
    expect(res.json.error).toContain('element 3 is not an integer string: "three"');
  });

  test('simple_identity: strings with embedded NULs come back unchanged', async () => {
    const data = Array.from({ length: 16 }, () => 'he\u0000llo');
    const res = await postJson(`${url}/v2/models/simple_identity/infer`, { inputs: [{ name: 'INPUT0', datatype: 'BYTES', shape: [1, 16], data }] });
    expect(res.status).toBe(200);
    expect(res.json.outputs[0]).toMatchObject({ name: 'OUTPUT0', datatype: 'BYTES', shape: [1, 16], data });
  });

  test('simple_int8: add and subtract, wrapping as int8 does', async () => {
    const in0 = [...range16.slice(0, 15), 127];
    const res = await postJson(`${url}/v2/models/simple_int8/infer`, {
      inputs: [
        { name: 'INPUT0', datatype: 'INT8', shape: [1, 16], data: in0 },
        { name: 'INPUT1', datatype: 'INT8', shape: [1, 16], data: range16.map(() => 1) },
      ],
    });
    expect(res.status).toBe(200);
    const out = Object.fromEntries(res.json.outputs.map((o: { name: string; data: number[] }) => [o.name, o.data]));
    expect(out.OUTPUT0).toEqual([...range16.slice(0, 15).map((v) => v + 1), -128]);
    expect(out.OUTPUT1).toEqual(in0.map((v) => v - 1));
  });

  test('simple_sequence: INPUT + START, as Triton\'s sequence clients expect; no sequence id is refused', async () => {
    const values = [0, ...SEQ_VALUES];
    const got: number[] = [];
    for (const [i, v] of values.entries()) {
      const res = await postJson(`${url}/v2/models/simple_sequence/infer`, {
        parameters: { sequence_id: 2000, sequence_start: i === 0, sequence_end: i === values.length - 1 },
        inputs: [{ name: 'INPUT', datatype: 'INT32', shape: [1, 1], data: [v] }],
      });
      expect(res.status).toBe(200);
      got.push(res.json.outputs[0].data[0]);
    }
    expect(got).toEqual([1, ...SEQ_VALUES]);
    const none = await postJson(`${url}/v2/models/simple_sequence/infer`, { inputs: [{ name: 'INPUT', datatype: 'INT32', shape: [1, 1], data: [5] }] });
    expect(none.status).toBe(400);
  });
});

describe('classes (classification extension), listed with min_replicas 0', () => {
  test('loads, then answers class_count as "value:index:label", as examples/README shows', async () => {
    expect((await postJson(`${url}/v2/repository/models/classes/load`, {})).status).toBe(200);
    const res = await postJson(`${url}/v2/models/classes/infer`, {
      inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [1, 4], data: [0.1, 0.7, 0.2, 0] }],
      outputs: [{ name: 'OUTPUT0', parameters: { classification: 2 } }],
    });
    expect(res.status).toBe(200);
    expect(res.json.outputs[0]).toEqual({ name: 'OUTPUT0', datatype: 'BYTES', shape: [1, 2], data: ['0.7:1:pickle', '0.2:2:banana'] });
  });
});

const int8Bytes = (values: number[]) => Buffer.from(Int8Array.from(values).buffer);
const outputsByName = (res: ModelInferResponse) => Object.fromEntries(res.outputs.map((o, i) => [o.name, { meta: o, raw: Buffer.from(res.rawOutputContents[i]) }]));

describe('gRPC', () => {
  test('simple_string with bytes_contents (as tritonclient\'s string example sends it)', async () => {
    const res = await client.unary('modelInfer', {
      modelName: 'simple_string',
      inputs: [
        { name: 'INPUT0', datatype: 'BYTES', shape: [1n, 16n], contents: { bytesContents: range16.map((v) => Buffer.from(String(v))) } },
        { name: 'INPUT1', datatype: 'BYTES', shape: [1n, 16n], contents: { bytesContents: range16.map(() => Buffer.from('1')) } },
      ],
      outputs: [{ name: 'OUTPUT0' }, { name: 'OUTPUT1' }],
    } as InferInit);
    const out = outputsByName(res);
    expect(out.OUTPUT0.meta).toMatchObject({ datatype: 'BYTES', shape: [1n, 16n] });
    expect(decodeBytes(out.OUTPUT0.raw).map((b) => Number(b.toString()))).toEqual(range16.map((v) => v + 1));
    expect(decodeBytes(out.OUTPUT1.raw).map((b) => Number(b.toString()))).toEqual(range16.map((v) => v - 1));
  });

  test('simple_identity with raw BYTES: NULs and binary blobs survive', async () => {
    for (const element of [Buffer.from('he\u0000llo'), Buffer.from([0, 1, 2, 3])]) {
      const items = Array.from({ length: 16 }, () => element);
      const res = await client.unary('modelInfer', {
        modelName: 'simple_identity',
        inputs: [{ name: 'INPUT0', datatype: 'BYTES', shape: [1n, 16n] }],
        rawInputContents: [encodeBytes(items)],
        outputs: [{ name: 'OUTPUT0' }],
      } as InferInit);
      expect(decodeBytes(outputsByName(res).OUTPUT0.raw)).toEqual(items);
    }
  });

  test('simple_int8 with raw contents', async () => {
    const res = await client.unary('modelInfer', {
      modelName: 'simple_int8',
      inputs: [
        { name: 'INPUT0', datatype: 'INT8', shape: [1n, 16n] },
        { name: 'INPUT1', datatype: 'INT8', shape: [1n, 16n] },
      ],
      rawInputContents: [int8Bytes(range16), int8Bytes(range16.map(() => 1))],
    } as InferInit);
    const out = outputsByName(res);
    expect(Array.from(new Int8Array(out.OUTPUT0.raw))).toEqual(range16.map((v) => v + 1));
    expect(Array.from(new Int8Array(out.OUTPUT1.raw))).toEqual(range16.map((v) => v - 1));
  });

  test('simple_sequence: three interleaved sequences on one stream, as simple_grpc_sequence_stream_infer_client sends them', async () => {
    const param = (v: bigint | string | boolean): InferParameter =>
      ({ parameterChoice: typeof v === 'bigint' ? { case: 'int64Param', value: v } : typeof v === 'string' ? { case: 'stringParam', value: v } : { case: 'boolParam', value: v } }) as InferParameter;
    const sequences: { id: bigint | string; values: number[] }[] = [
      { id: 1000n, values: [0, ...SEQ_VALUES] },
      { id: 1001n, values: [100, ...NEG_VALUES] },
      { id: '6f1e8a3c-triton-uuid', values: [20, ...NEG_VALUES] },
    ];
    const stream = client.stream();
    const results = new Map<string, number[]>();
    const errors: string[] = [];
    const total = sequences.reduce((n, s) => n + s.values.length, 0);
    let received = 0;
    const done = new Promise<void>((resolve, reject) => {
      stream.on('data', (msg: { errorMessage: string; inferResponse?: ModelInferResponse }) => {
        if (msg.errorMessage) errors.push(msg.errorMessage);
        else {
          const r = msg.inferResponse!;
          const key = r.id.split('_')[0];
          results.set(key, [...(results.get(key) ?? []), int32Values(r.rawOutputContents[0])[0]]);
        }
        if (++received === total) resolve();
      });
      stream.on('error', reject);
    });
    // The client sends each sequence whole, one after the other, without waiting for answers.
    for (const s of sequences) {
      s.values.forEach((v, i) => {
        stream.write(create(ModelInferRequestSchema, {
          modelName: 'simple_sequence',
          id: `${s.id}_${i + 1}`,
          inputs: [{ name: 'INPUT', datatype: 'INT32', shape: [1n, 1n] }],
          rawInputContents: [int32Bytes([v])],
          outputs: [{ name: 'OUTPUT' }],
          parameters: { sequence_id: param(s.id), sequence_start: param(i === 0), sequence_end: param(i === s.values.length - 1) },
        }));
      });
    }
    await done;
    stream.end();
    expect(errors).toEqual([]);
    expect(results.get('1000')).toEqual([1, ...SEQ_VALUES]);
    expect(results.get('1001')).toEqual([101, ...NEG_VALUES]);
    expect(results.get('6f1e8a3c-triton-uuid')).toEqual([21, ...NEG_VALUES]);
  });
});

const PYTHON = '/usr/bin/python3';
const probe = spawnSync(PYTHON, ['-c', 'import grpc, grpc_tools.protoc, numpy'], { encoding: 'utf8' });
const pythonMissing = probe.status !== 0 ? (probe.error?.message ?? probe.stderr.trim().split('\n').pop() ?? 'unknown error') : undefined;
if (pythonMissing) console.warn(`Skipping the Python Triton-examples client: ${PYTHON} cannot import grpc, grpc_tools and numpy (${pythonMissing}).`);

(pythonMissing ? describe.skip : describe)('Python grpcio client replaying Triton\'s example scripts', () => {
  test('string, int8, sync and streamed sequences, system shared memory, classification, decoupled repeat_int32: every check passes', async () => {
    const run = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
      const py = spawn(PYTHON, [path.join(ROOT, 'tests', 'clients', 'triton_examples_client.py'), '--port', String(grpcPort), '--proto-dir', path.join(ROOT, 'proto'),
        // The custom_repeat script's calls with shorter delays than its 1000 ms (same sequence, a faster test).
        '--repeat-delay-ms', '20', '--repeat-wait-ms', '50'], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      py.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      py.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      py.on('error', reject);
      py.on('close', (code) => resolve({ code, stdout, stderr }));
    });
    if (run.code !== 0) console.error(run.stderr, run.stdout);
    const out = JSON.parse(run.stdout.trim().split('\n').pop()!);
    expect(out.checks).toEqual({
      string_sum: true, string_diff: true, identity_null_chars: true, identity_bytes: true,
      int8_sum: true, int8_diff: true, int8_wrong_version_refused: true,
      sequence_sync: true, sequence_stream: true,
      shm_sum: true, shm_diff: true, shm_unregistered: true, classification: true,
      custom_repeat_outputs: true, custom_repeat_no_empty_final: true, decoupled_final_flags: true,
    });
    expect(out.custom_repeat.OUT).toEqual(Array.from({ length: 10 }, (_, i) => [100 + i]));
    expect(out.decoupled_final.zero).toEqual([{ OUT: null, IDX: null, final: true }]);
    expect(out.classification).toEqual({ datatype: 'BYTES', shape: [2, 3], data: ['0.7:1:pickle', '0.2:2:banana', '0.1:0:apple', '4:2:banana', '3:0:apple', '1:1:pickle'] });
    expect(out.shm_status).toEqual(['input_data', 'output_data']);
    expect(out.string_shape).toEqual([1, 16]);
    // Triton answers INVALID_ARGUMENT "failed to get model version from specified version
    // string"; the broker answers NOT_FOUND for an unknown version (the script only needs an error).
    expect(out.wrong_version.details).toContain('wrong_specification');
    expect(run.code).toBe(0);
  });
});
