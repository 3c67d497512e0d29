/**
 * System shared memory through both bridges, with real /dev/shm objects and
 * the `simple` model as a real process: regions registered over one bridge are
 * used over the other, inputs are read from and outputs written into them,
 * and every bad reference (unknown region, out of bounds, too small, a file
 * that shrank, bad keys) is a clear 400 / INVALID_ARGUMENT. CUDA shared memory
 * says it is not supported.
 */
import { existsSync } from 'node:fs';
import { open, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { create } from '@bufbuild/protobuf';
import { ModelInferRequestSchema, type ModelInferResponse } from '../../proto/gen/grpc_service_pb';
import { getJson, modelMain, postJson, simpleModel, startTestBroker, waitReady, type TestBroker } from '../helpers/broker';
import { GrpcTestClient, int32Bytes, int32Values, type InferInit } from '../helpers/grpc-client';

const SHM = '/dev/shm';
const suite = existsSync(SHM) ? describe : describe.skip;
const tag = `tb-shm-test-${process.pid}`;
const key = (name: string) => `/${tag}-${name}`;
const file = (name: string) => `${SHM}${key(name)}`;

const A = Array.from({ length: 16 }, (_, i) => i);
const B = Array.from({ length: 16 }, (_, i) => 100 - 3 * i);
const SUM = A.map((v, i) => v + B[i]);
const DIFF = A.map((v, i) => v - B[i]);

let b: TestBroker;
let client: GrpcTestClient;

async function register(name: string, k: string, byteSize: number, offset = 0) {
  return postJson(`${b.url}/v2/systemsharedmemory/region/${name}/register`, { key: k, offset, byte_size: byteSize });
}

const shmParams = (region: string, byteSize: number, offset = 0) => ({ shared_memory_region: region, shared_memory_byte_size: byteSize, shared_memory_offset: offset });

suite('system shared memory', () => {
  beforeAll(async () => {
    // in: INPUT0 at 0, INPUT1 at 64 (plus 16 spare bytes); out: 128 bytes for two outputs.
    await writeFile(file('in'), Buffer.concat([int32Bytes(A), int32Bytes(B), Buffer.alloc(16)]));
    await writeFile(file('out'), Buffer.alloc(128));
    await writeFile(file('small'), Buffer.alloc(32));
    await writeFile(file('seq'), int32Bytes([0, 11, 7, 5, 3, 2, 0, 1]));
    b = await startTestBroker({
      models: {
        simple: simpleModel(),
        simple_sequence: { command: ['node', modelMain('simple_sequence')], stateless: false, batch_size: 8, max_sequences: 4 },
      },
    });
    client = new GrpcTestClient(b.running.ports.grpc);
    await waitReady(b, 'simple');
    await waitReady(b, 'simple_sequence');
  });

  afterAll(async () => {
    client?.close();
    await b?.stop();
    await Promise.all(['in', 'out', 'small', 'shrinks', 'seq'].map((n) => rm(file(n), { force: true })));
  });

  test('the extension is listed; regions registered over REST show in both bridges\' status', async () => {
    expect((await getJson(`${b.url}/v2`)).extensions).toContain('system_shared_memory');
    expect((await register('input_data', key('in'), 144)).status).toBe(200);
    expect((await register('output_data', key('out'), 128)).status).toBe(200);
    expect(await getJson(`${b.url}/v2/systemsharedmemory/status`)).toEqual([
      { name: 'input_data', key: key('in'), offset: 0, byte_size: 144 },
      { name: 'output_data', key: key('out'), offset: 0, byte_size: 128 },
    ]);
    expect(await getJson(`${b.url}/v2/systemsharedmemory/region/output_data/status`)).toEqual([{ name: 'output_data', key: key('out'), offset: 0, byte_size: 128 }]);
    const st = await client.unary('systemSharedMemoryStatus', {});
    expect(Object.keys(st.regions).sort()).toEqual(['input_data', 'output_data']);
    expect(st.regions.input_data).toMatchObject({ name: 'input_data', key: key('in'), offset: 0n, byteSize: 144n });
  });

  test('REST: inputs read from a region, outputs written into one (no data in the answer)', async () => {
    await writeFile(file('out'), Buffer.alloc(128));
    const res = await postJson(`${b.url}/v2/models/simple/infer`, {
      inputs: [
        { name: 'INPUT0', datatype: 'INT32', shape: [1, 16], parameters: shmParams('input_data', 64) },
        { name: 'INPUT1', datatype: 'INT32', shape: [1, 16], parameters: shmParams('input_data', 64, 64) },
      ],
      outputs: [
        { name: 'OUTPUT0', parameters: shmParams('output_data', 64) },
        { name: 'OUTPUT1', parameters: shmParams('output_data', 64, 64) },
      ],
    });
    expect(res.status).toBe(200);
    expect(res.json.outputs).toEqual([
      { name: 'OUTPUT0', datatype: 'INT32', shape: [1, 16], parameters: shmParams('output_data', 64) },
      { name: 'OUTPUT1', datatype: 'INT32', shape: [1, 16], parameters: shmParams('output_data', 64, 64) },
    ]);
    const out = await readFile(file('out'));
    expect(int32Values(out.subarray(0, 64))).toEqual(SUM);
    expect(int32Values(out.subarray(64, 128))).toEqual(DIFF);
  });

  test('gRPC, with the regions registered over REST: one input in shared memory, one raw; one output each way', async () => {
    await writeFile(file('out'), Buffer.alloc(128));
    const p = (region: string, size: number, offset = 0) => ({
      shared_memory_region: { parameterChoice: { case: 'stringParam', value: region } },
      shared_memory_byte_size: { parameterChoice: { case: 'int64Param', value: BigInt(size) } },
      shared_memory_offset: { parameterChoice: { case: 'int64Param', value: BigInt(offset) } },
    });
    const res = await client.unary('modelInfer', {
      modelName: 'simple',
      inputs: [
        { name: 'INPUT0', datatype: 'INT32', shape: [1n, 16n], parameters: p('input_data', 64) },
        { name: 'INPUT1', datatype: 'INT32', shape: [1n, 16n] },
      ],
      // raw_input_contents has entries only for the inputs not in shared memory, as tritonclient sends it.
      rawInputContents: [int32Bytes(B)],
      outputs: [{ name: 'OUTPUT0', parameters: p('output_data', 64, 64) }, { name: 'OUTPUT1' }],
    } as InferInit);
    expect(res.outputs.map((o) => o.name)).toEqual(['OUTPUT0', 'OUTPUT1']);
    expect(res.rawOutputContents[0]).toHaveLength(0);
    expect(int32Values(res.rawOutputContents[1])).toEqual(DIFF);
    expect(int32Values((await readFile(file('out'))).subarray(64, 128))).toEqual(SUM);
  });

  test('a sequence on a gRPC stream with every input in shared memory keeps its order', async () => {
    const values = [0, 11, 7, 5, 3, 2, 0, 1];
    await client.unary('systemSharedMemoryRegister', { name: 'seq_in', key: key('seq'), offset: 0n, byteSize: 32n });
    const stream = client.stream();
    const got: number[] = [];
    const errors: string[] = [];
    const done = new Promise<void>((resolve, reject) => {
      stream.on('data', (m: { errorMessage: string; inferResponse?: ModelInferResponse }) => {
        if (m.errorMessage) errors.push(m.errorMessage);
        else got.push(int32Values(m.inferResponse!.rawOutputContents[0])[0]);
        if (got.length + errors.length === values.length) resolve();
      });
      stream.on('error', reject);
    });
    const param = (v: string | bigint | boolean) => ({ parameterChoice: typeof v === 'string' ? { case: 'stringParam', value: v } : typeof v === 'bigint' ? { case: 'int64Param', value: v } : { case: 'boolParam', value: v } });
    values.forEach((_, i) => stream.write(create(ModelInferRequestSchema, {
      modelName: 'simple_sequence',
      inputs: [{ name: 'INPUT', datatype: 'INT32', shape: [1n, 1n], parameters: { shared_memory_region: param('seq_in'), shared_memory_byte_size: param(4n), shared_memory_offset: param(BigInt(4 * i)) } }],
      parameters: { sequence_id: param(77n), sequence_start: param(i === 0), sequence_end: param(i === values.length - 1) },
    } as never)));
    await done;
    stream.end();
    expect(errors).toEqual([]);
    expect(got).toEqual([1, 11, 7, 5, 3, 2, 0, 1]);
    await client.unary('systemSharedMemoryUnregister', { name: 'seq_in' });
  });

  test('bad registrations are 400 / INVALID_ARGUMENT with the reason', async () => {
    const cases: [string, string, number, number, string][] = [
      ['beyond', key('small'), 64, 0, 'beyond the end of'],
      ['beyond2', key('small'), 16, 20, 'offset 20 + byte_size 16 is beyond the end'],
      ['missing', key('no-such'), 8, 0, 'no such shared memory object'],
      ['escape', '/../etc/passwd', 8, 0, 'is not a POSIX shared memory name'],
      ['nested', '/a/b', 8, 0, 'is not a POSIX shared memory name'],
      ['input_data', key('in'), 8, 0, "shared memory region 'input_data' is already registered"],
    ];
    for (const [name, k, size, offset, message] of cases) {
      const res = await register(name, k, size, offset);
      expect([name, res.status]).toEqual([name, 400]);
      expect(res.json.error).toContain(message);
    }
    const neg = await register('neg', key('small'), -1);
    expect(neg.status).toBe(400);
    const grpcErr = await client.fails('systemSharedMemoryRegister', { name: 'g', key: key('small'), offset: 0n, byteSize: 33n });
    expect(grpcErr.code).toBe(3);
    expect(grpcErr.details).toContain('beyond the end of');
    expect((await getJson(`${b.url}/v2/systemsharedmemory/status`)).map((r: { name: string }) => r.name)).toEqual(['input_data', 'output_data']);
  });

  test('bad references in a request: unknown region, out of bounds, too small for the result, half the parameters', async () => {
    const infer = (in0: Record<string, unknown>, out0?: Record<string, unknown>) => postJson(`${b.url}/v2/models/simple/infer`, {
      inputs: [
        { name: 'INPUT0', datatype: 'INT32', shape: [1, 16], parameters: in0 },
        { name: 'INPUT1', datatype: 'INT32', shape: [1, 16], data: B },
      ],
      ...(out0 ? { outputs: [{ name: 'OUTPUT0', parameters: out0 }] } : {}),
    });
    const cases: [Record<string, unknown>, Record<string, unknown> | undefined, string][] = [
      [shmParams('nope', 64), undefined, "input 'INPUT0': shared memory region 'nope' is not registered"],
      [shmParams('input_data', 64, 96), undefined, "input 'INPUT0': offset 96 + byte_size 64 is beyond the end of shared memory region 'input_data' (144 bytes)"],
      [{ shared_memory_region: 'input_data' }, undefined, "input 'INPUT0': shared_memory_region 'input_data' needs a shared_memory_byte_size"],
      [{ shared_memory_byte_size: 64 }, undefined, 'need a shared_memory_region'],
      [shmParams('input_data', 60), undefined, "input 'INPUT0': shared_memory_byte_size 60 does not match INT32 [1, 16] (64 bytes)"],
      [shmParams('input_data', 64), shmParams('output_data', 32), "output 'OUTPUT0': shared_memory_byte_size 32 is too small for the 64 bytes of the result"],
      [shmParams('input_data', 64), shmParams('output_data', 64, 100), "output 'OUTPUT0': offset 100 + byte_size 64 is beyond the end"],
    ];
    for (const [in0, out0, message] of cases) {
      const res = await infer(in0, out0);
      expect([message, res.status]).toEqual([message, 400]);
      expect(res.json.error).toContain(message);
    }
    const both = await postJson(`${b.url}/v2/models/simple/infer`, {
      inputs: [{ name: 'INPUT0', datatype: 'INT32', shape: [1, 16], data: A, parameters: shmParams('input_data', 64) }, { name: 'INPUT1', datatype: 'INT32', shape: [1, 16], data: B }],
    });
    expect(both.status).toBe(400);
    expect(both.json.error).toContain('names a shared memory region and carries data too');

    const g = await client.fails('modelInfer', {
      modelName: 'simple',
      inputs: [
        { name: 'INPUT0', datatype: 'INT32', shape: [1n, 16n], parameters: { shared_memory_region: { parameterChoice: { case: 'stringParam', value: 'nope' } }, shared_memory_byte_size: { parameterChoice: { case: 'int64Param', value: 64n } } } },
        { name: 'INPUT1', datatype: 'INT32', shape: [1n, 16n] },
      ],
      rawInputContents: [int32Bytes(B)],
    } as InferInit);
    expect(g.code).toBe(3);
    expect(g.details).toContain("shared memory region 'nope' is not registered");
  });

  test('a region whose file shrank after registration is refused, not read past its end', async () => {
    await writeFile(file('shrinks'), Buffer.concat([int32Bytes(A), int32Bytes(B)]));
    expect((await register('shrinks', key('shrinks'), 128)).status).toBe(200);
    await truncate(file('shrinks'), 32);
    const res = await postJson(`${b.url}/v2/models/simple/infer`, {
      inputs: [
        { name: 'INPUT0', datatype: 'INT32', shape: [1, 16], parameters: shmParams('shrinks', 64) },
        { name: 'INPUT1', datatype: 'INT32', shape: [1, 16], data: B },
      ],
    });
    expect(res.status).toBe(400);
    expect(res.json.error).toContain("shared memory region 'shrinks' has shrunk");
  });

  test('a region stays readable through the broker\'s open file after the client rewrites it', async () => {
    const fh = await open(file('in'), 'r+');
    await fh.write(int32Bytes(A.map((v) => v * 2)), 0, 64, 0);
    await fh.close();
    const res = await postJson(`${b.url}/v2/models/simple/infer`, {
      inputs: [
        { name: 'INPUT0', datatype: 'INT32', shape: [1, 16], parameters: shmParams('input_data', 64) },
        { name: 'INPUT1', datatype: 'INT32', shape: [1, 16], data: A },
      ],
      outputs: [{ name: 'OUTPUT1' }],
    });
    expect(res.status).toBe(200);
    expect(res.json.outputs[0].data).toEqual(A); // 2a - a
  });

  test('unregister one over gRPC, then all over REST', async () => {
    await client.unary('systemSharedMemoryUnregister', { name: 'shrinks' });
    const gone = await fetch(`${b.url}/v2/systemsharedmemory/region/shrinks/status`);
    expect(gone.status).toBe(400);
    expect(((await gone.json()) as { error: string }).error).toContain("shared memory region 'shrinks' is not registered");
    expect((await postJson(`${b.url}/v2/systemsharedmemory/region/shrinks/unregister`, {})).status).toBe(400);
    // tritonclient posts an empty body without a Content-Type.
    expect((await fetch(`${b.url}/v2/systemsharedmemory/unregister`, { method: 'POST' })).status).toBe(200);
    expect(await getJson(`${b.url}/v2/systemsharedmemory/status`)).toEqual([]);
    expect(Object.keys((await client.unary('systemSharedMemoryStatus', {})).regions)).toEqual([]);
  });

  test('CUDA shared memory: not supported (REST 400, gRPC UNIMPLEMENTED); empty status and unregister-all succeed', async () => {
    const rest = await postJson(`${b.url}/v2/cudasharedmemory/region/gpu0/register`, { raw_handle: { b64: 'AAAA' }, device_id: 0, byte_size: 64 });
    expect(rest.status).toBe(400);
    expect(rest.json.error).toContain('CUDA shared memory is not supported');
    expect(await getJson(`${b.url}/v2/cudasharedmemory/status`)).toEqual([]);
    expect((await postJson(`${b.url}/v2/cudasharedmemory/unregister`, {})).status).toBe(200);
    const g = await client.fails('cudaSharedMemoryRegister', { name: 'gpu0', rawHandle: Buffer.from('AAAA'), deviceId: 0n, byteSize: 64n });
    expect(g.code).toBe(12); // UNIMPLEMENTED
    expect(g.details).toContain('CUDA shared memory is not supported');
    expect(Object.keys((await client.unary('cudaSharedMemoryStatus', {})).regions)).toEqual([]);
    await client.unary('cudaSharedMemoryUnregister', {});
  });
});
