/**
 * Decoupled models through a real broker and the compiled repeat_int32 example
 * (Node SDK predictStream): 0, 1 and many responses per request over gRPC
 * ModelStreamInfer with Triton's triton_final_response flag and the empty final
 * response, one-answer calls refused as Triton refuses them, and response_stats.
 */
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { startGrpcBridge, type GrpcBridge } from '../../bridges/grpc/server';
import type { ModelStreamInferResponse } from '../../proto/gen/grpc_service_pb';
import path from 'node:path';
import { ROOT, getJson, modelMain, postJson, simpleModel, startTestBroker, waitReady, type TestBroker } from '../helpers/broker';
import { GrpcTestClient, int32Values, simpleRaw, type InferInit } from '../helpers/grpc-client';

const u32 = (values: number[]) => Buffer.from(Uint32Array.from(values).buffer);
const i32 = (values: number[]) => Buffer.from(Int32Array.from(values).buffer);

/** A repeat_int32 request: IN values, DELAY ms each, WAIT ms after. */
function repeatRequest(id: string, values: number[], delayMs: number, opts: { emptyFinal?: boolean; wait?: number; delays?: number[]; model?: string } = {}): InferInit {
  const delays = opts.delays ?? values.map(() => delayMs);
  return {
    modelName: opts.model ?? 'repeat_int32',
    id,
    inputs: [
      { name: 'IN', datatype: 'INT32', shape: [BigInt(values.length)] },
      { name: 'DELAY', datatype: 'UINT32', shape: [BigInt(delays.length)] },
      { name: 'WAIT', datatype: 'UINT32', shape: [1n] },
    ],
    rawInputContents: [i32(values), u32(delays), u32([opts.wait ?? 0])],
    ...(opts.emptyFinal !== undefined
      ? { parameters: { triton_enable_empty_final_response: { parameterChoice: { case: 'boolParam', value: opts.emptyFinal } } } }
      : {}),
  } as InferInit;
}

interface Seen {
  id: string;
  error: string;
  final: boolean | undefined;
  out?: number;
  idx?: number;
  outputs: number;
}

/** Sends the requests on one stream, half-closes, and collects every message until the server ends the stream. */
async function streamAll(c: GrpcTestClient, requests: InferInit[]): Promise<Seen[]> {
  const stream = c.stream();
  const seen: Seen[] = [];
  const done = new Promise<void>((resolve, reject) => {
    stream.on('data', (m: ModelStreamInferResponse) => {
      const r = m.inferResponse!;
      const flag = r.parameters.triton_final_response?.parameterChoice;
      const at = (name: string) => r.outputs.findIndex((o) => o.name === name);
      seen.push({
        id: r.id,
        error: m.errorMessage,
        final: flag?.case === 'boolParam' ? flag.value : undefined,
        out: at('OUT') >= 0 ? int32Values(r.rawOutputContents[at('OUT')])[0] : undefined,
        idx: at('IDX') >= 0 ? new Uint32Array(new Uint8Array(r.rawOutputContents[at('IDX')]).buffer)[0] : undefined,
        outputs: r.outputs.length,
      });
    });
    stream.on('end', resolve);
    stream.on('error', reject);
  });
  for (const r of requests) stream.write(r);
  stream.end();
  await done;
  return seen;
}

describe('decoupled models (repeat_int32)', () => {
  let b: TestBroker;
  let bridge: GrpcBridge;
  let c: GrpcTestClient;

  beforeAll(async () => {
    b = await startTestBroker({
      models: {
        repeat_int32: { command: ['node', modelMain('repeat')], batch_size: 0 },
        simple: simpleModel(),
        // The same model written with the Python SDK (predict_stream).
        py_repeat: {
          command: ['/usr/bin/python3', path.join(ROOT, 'tests', 'python', 'repeat_model.py')], batch_size: 0,
          env: { PYTHONPATH: path.join(ROOT, 'sdk', 'python'), PYTHONNOUSERSITE: '1', PYTHONDONTWRITEBYTECODE: '1' },
        },
      },
    });
    bridge = await startGrpcBridge({
      broker: b.running.broker, host: '127.0.0.1', port: 0, maxMessageBytes: 1 << 20,
      logger: pino({ level: 'silent' }), version: 'test',
    });
    c = new GrpcTestClient(bridge.port);
    await Promise.all([waitReady(b, 'repeat_int32'), waitReady(b, 'simple'), waitReady(b, 'py_repeat')]);
  });
  afterAll(async () => {
    c?.close();
    await bridge?.close(1000);
    await b?.stop();
  });

  test('many responses in order, each flagged not final, then the empty final response when asked for', async () => {
    const seen = await streamAll(c, [repeatRequest('many', [7, -3, 12, 0, 5], 5, { emptyFinal: true })]);
    expect(seen.map((s) => [s.id, s.out, s.idx, s.final])).toEqual([
      ['many', 7, 0, false], ['many', -3, 1, false], ['many', 12, 2, false], ['many', 0, 3, false], ['many', 5, 4, false],
      ['many', undefined, undefined, true],
    ]);
    expect(seen[5]).toMatchObject({ outputs: 0, error: '' });
  });

  test('0 and 1 responses, with and without the empty final response', async () => {
    const seen = await streamAll(c, [
      repeatRequest('zero-final', [], 0, { emptyFinal: true }),
      repeatRequest('zero-silent', [], 0, { emptyFinal: false }),
      repeatRequest('one', [42], 0, { wait: 20 }),
      repeatRequest('one-final', [43], 0, { emptyFinal: true }),
    ]);
    const of = (id: string) => seen.filter((s) => s.id === id).map((s) => [s.out, s.final]);
    expect(of('zero-final')).toEqual([[undefined, true]]);
    expect(of('zero-silent')).toEqual([]);
    expect(of('one')).toEqual([[42, false]]);
    expect(of('one-final')).toEqual([[43, false], [undefined, true]]);
    expect(seen).toHaveLength(4);
  });

  test('a model error ends the request with an error message; a plain model answers once, flagged final', async () => {
    const seen = await streamAll(c, [
      repeatRequest('bad', [1, 2], 0, { delays: [0] }),
      { ...simpleRaw([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]], [[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]]), id: 'plain' },
    ]);
    const bad = seen.find((s) => s.id === 'bad')!;
    expect(bad.error).toContain('DELAY has 1 values for 2 in IN');
    expect(seen.filter((s) => s.id === 'plain')).toEqual([expect.objectContaining({ final: true, error: '' })]);
  });

  test('the Python SDK: predict_stream yields 0, 1 and many responses; its errors end the request', async () => {
    const py = { model: 'py_repeat' };
    const seen = await streamAll(c, [
      repeatRequest('py-many', [4, 5, 6], 2, { ...py, emptyFinal: true }),
      repeatRequest('py-zero', [], 0, { ...py, emptyFinal: true }),
      repeatRequest('py-one', [9], 0, py),
      repeatRequest('py-bad', [1, 2], 0, { ...py, delays: [0] }),
    ]);
    const of = (id: string) => seen.filter((s) => s.id === id).map((s) => [s.out, s.idx, s.final]);
    expect(of('py-many')).toEqual([[4, 0, false], [5, 1, false], [6, 2, false], [undefined, undefined, true]]);
    expect(of('py-zero')).toEqual([[undefined, undefined, true]]);
    expect(of('py-one')).toEqual([[9, 0, false]]);
    expect(seen.find((s) => s.id === 'py-bad')?.error).toContain('DELAY has 1 values for 2 in IN');
    const stats = (await getJson(`${b.url}/v2/models/py_repeat/stats`)).model_stats[0];
    expect(stats.inference_stats.compute_input.ns).toBeGreaterThan(0);
    expect(stats.response_stats['0'].success.count).toBe(2);
  });

  test('unary gRPC and REST refuse a decoupled model as Triton does (UNIMPLEMENTED / 501)', async () => {
    const err = await c.fails('modelInfer', repeatRequest('unary', [1], 0));
    expect(err.code).toBe(grpc.status.UNIMPLEMENTED);
    expect(err.details).toContain('decoupled transaction policy');
    const rest = await postJson(`${b.url}/v2/models/repeat_int32/infer`, {
      inputs: [
        { name: 'IN', datatype: 'INT32', shape: [1], data: [1] },
        { name: 'DELAY', datatype: 'UINT32', shape: [1], data: [0] },
        { name: 'WAIT', datatype: 'UINT32', shape: [1], data: [0] },
      ],
    });
    expect(rest.status).toBe(501);
    expect(rest.json.error).toContain('use the gRPC ModelStreamInfer stream');
    // Config says decoupled, as Triton's model_transaction_policy.
    expect((await getJson(`${b.url}/v2/models/repeat_int32/config`)).model_transaction_policy).toEqual({ decoupled: true });
    const { config } = await c.unary('modelConfig', { name: 'repeat_int32' });
    expect(config?.modelTransactionPolicy?.decoupled).toBe(true);
  });

  test('response_stats count each response by its index, the final marker as an empty response', async () => {
    const before = (await getJson(`${b.url}/v2/models/repeat_int32/stats`)).model_stats[0].response_stats;
    const count = (s: Record<string, Record<string, { count: number }>>, k: string, f: string) => s[k]?.[f]?.count ?? 0;
    await streamAll(c, [repeatRequest('stats', [1, 2, 3], 1, { emptyFinal: true })]);
    const after = (await getJson(`${b.url}/v2/models/repeat_int32/stats`)).model_stats[0].response_stats;
    for (const k of ['0', '1', '2']) expect(count(after, k, 'success') - count(before, k, 'success')).toBe(1);
    expect(count(after, '3', 'empty_response') - count(before, '3', 'empty_response')).toBe(1);
    expect(after['1'].compute_infer.ns).toBeGreaterThan(0);
    const g = (await c.unary('modelStatistics', { name: 'repeat_int32' })).modelStats[0];
    expect(Number(g.responseStats['3'].emptyResponse?.count)).toBe(count(after, '3', 'empty_response'));
  });

  test('compute_input, compute_infer and compute_output are timed separately (the SDK reports them in RESULT)', async () => {
    const before = (await getJson(`${b.url}/v2/models/simple/stats`)).model_stats[0];
    const row = Array.from({ length: 16 }, (_, i) => i);
    expect((await c.unary('modelInfer', simpleRaw([row], [row]))).outputs).toHaveLength(2);
    const after = (await getJson(`${b.url}/v2/models/simple/stats`)).model_stats[0];
    for (const k of ['compute_input', 'compute_infer', 'compute_output']) {
      expect(after.inference_stats[k].count - before.inference_stats[k].count).toBe(1);
      expect(after.inference_stats[k].ns).toBeGreaterThan(before.inference_stats[k].ns);
    }
    const one = after.batch_stats.find((s: { batch_size: number }) => s.batch_size === 1);
    expect(one.compute_input.count).toBe(one.compute_infer.count);
    expect(one.compute_output.ns).toBeGreaterThan(0);
  });
});
