/** gRPC conversion (bridges/grpc/convert.ts): ModelInferRequest ↔ InferRequest, typed contents, deadlines. */
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import { contentsToRaw, deadlineMs, parseInferRequest, toInferResponse, withDeadline } from '../../bridges/grpc/convert';
import { ModelInferRequestSchema, ModelInferResponseSchema, InferTensorContentsSchema, type ModelInferRequest } from '../../proto/gen/grpc_service_pb';

const req = (init: Record<string, unknown>): ModelInferRequest => create(ModelInferRequestSchema, init as never);
const contents = (init: Record<string, unknown>) => create(InferTensorContentsSchema, init as never);
const code = (fn: () => unknown) => {
  try {
    fn();
  } catch (e) {
    return `${(e as { code?: string }).code}: ${(e as Error).message}`;
  }
  return 'no error';
};

describe('parseInferRequest', () => {
  test('raw contents stay views of the message; id, version, outputs and parameters carried', () => {
    const raw = Buffer.from(Int32Array.from([1, 2, 3, 4]).buffer);
    const msg = fromBinary(ModelInferRequestSchema, toBinary(ModelInferRequestSchema, req({
      modelName: 'm', modelVersion: '2', id: 'abc',
      inputs: [{ name: 'X', datatype: 'INT32', shape: [2n, 2n] }],
      outputs: [{ name: 'Y' }],
      rawInputContents: [raw],
      parameters: { priority: { parameterChoice: { case: 'int64Param', value: 1n } }, timeout: { parameterChoice: { case: 'int64Param', value: 5000n } } },
    })));
    const { request, clientId } = parseInferRequest(msg, 'fallback');
    expect(clientId).toBe('abc');
    expect(request).toMatchObject({ id: 'abc', model: 'm', version: '2', outputs: ['Y'], priority: 1, timeoutMs: 5 });
    expect(request.inputs[0]).toMatchObject({ name: 'X', datatype: 'INT32', shape: [2, 2] });
    expect(Buffer.from(request.inputs[0].data).equals(raw)).toBe(true);
    expect(request.inputs[0].data.buffer).toBe(msg.rawInputContents[0].buffer); // no copy
  });

  test('no id: the fallback id inside, an empty id echoed', () => {
    const { request, clientId } = parseInferRequest(req({ modelName: 'm', inputs: [{ name: 'X', datatype: 'BOOL', shape: [1n], contents: { boolContents: [true] } }] }), 'g-1');
    expect(request.id).toBe('g-1');
    expect(clientId).toBe('');
  });

  test('typed contents of every datatype become little-endian raw bytes', () => {
    expect([...contentsToRaw('a', 'BOOL', [3], contents({ boolContents: [true, false, true] }))]).toEqual([1, 0, 1]);
    expect([...new Int8Array(new Uint8Array(contentsToRaw('a', 'INT8', [2], contents({ intContents: [-128, 127] }))).buffer)]).toEqual([-128, 127]);
    expect([...new Uint16Array(new Uint8Array(contentsToRaw('a', 'UINT16', [1], contents({ uintContents: [65535] }))).buffer)]).toEqual([65535]);
    expect(new BigInt64Array(new Uint8Array(contentsToRaw('a', 'INT64', [1], contents({ int64Contents: [-(2n ** 63n)] }))).buffer)[0]).toBe(-(2n ** 63n));
    expect(new BigUint64Array(new Uint8Array(contentsToRaw('a', 'UINT64', [1], contents({ uint64Contents: [2n ** 64n - 1n] }))).buffer)[0]).toBe(2n ** 64n - 1n);
    expect([...new Float32Array(new Uint8Array(contentsToRaw('a', 'FP32', [2], contents({ fp32Contents: [1.5, -2] }))).buffer)]).toEqual([1.5, -2]);
    expect([...new Float64Array(new Uint8Array(contentsToRaw('a', 'FP64', [1], contents({ fp64Contents: [Math.PI] }))).buffer)]).toEqual([Math.PI]);
    const bytes = contentsToRaw('a', 'BYTES', [2], contents({ bytesContents: [Buffer.from('hi'), Buffer.from('')] }));
    expect([...bytes]).toEqual([2, 0, 0, 0, 104, 105, 0, 0, 0, 0]);
  });

  test('bad requests are INVALID_ARGUMENT with a message naming the problem', () => {
    expect(code(() => parseInferRequest(req({ inputs: [] }), 'x'))).toMatch(/^INVALID_ARGUMENT: .*model_name/);
    expect(code(() => parseInferRequest(req({ modelName: 'm' }), 'x'))).toMatch(/^INVALID_ARGUMENT: .*no inputs/);
    expect(code(() => parseInferRequest(req({ modelName: 'm', inputs: [{ name: 'X', datatype: 'INT33', shape: [1n] }], rawInputContents: [Buffer.alloc(4)] }), 'x'))).toContain('unknown datatype');
    expect(code(() => parseInferRequest(req({ modelName: 'm', inputs: [{ name: 'X', datatype: 'INT32', shape: [-1n] }], rawInputContents: [Buffer.alloc(4)] }), 'x'))).toContain('invalid dimension');
    expect(code(() => parseInferRequest(req({ modelName: 'm', inputs: [{ name: '', datatype: 'INT32', shape: [1n] }], rawInputContents: [Buffer.alloc(4)] }), 'x'))).toContain('needs a name');
    expect(code(() => parseInferRequest(req({ modelName: 'm', inputs: [{ name: 'X', datatype: 'INT32', shape: [1n] }, { name: 'Y', datatype: 'INT32', shape: [1n] }], rawInputContents: [Buffer.alloc(4)] }), 'x'))).toContain('1 entries for 2 inputs');
    expect(code(() => parseInferRequest(req({ modelName: 'm', inputs: [{ name: 'X', datatype: 'INT32', shape: [1n] }] }), 'x'))).toContain('has no data');
    expect(code(() => contentsToRaw('a', 'INT8', [1], contents({ intContents: [128] })))).toContain('out of the INT8 range');
    expect(code(() => contentsToRaw('a', 'FP16', [1], contents({})))).toContain('raw_input_contents');
    expect(code(() => contentsToRaw('a', 'INT32', [2], contents({ fp32Contents: [1, 2] })))).toContain('the request filled fp32_contents');
  });
});

describe('deadlines', () => {
  test('none, passed, near, and beyond a timer (24.8 days): passed through without overflow', () => {
    const now = 1_000_000;
    expect(deadlineMs(Infinity, now)).toBeUndefined();
    expect(code(() => deadlineMs(now - 1, now))).toMatch(/^DEADLINE_EXCEEDED/);
    expect(deadlineMs(now + 1500.7, now)).toBe(1500);
    expect(withDeadline({ timeoutMs: 100 }, Date.now() + 60_000)).toEqual({ timeoutMs: 100 });
    expect(withDeadline<{ timeoutMs?: number }>({}, Date.now() + 60_000).timeoutMs).toBeGreaterThan(59_000);
    // 30 days: more than setTimeout can wait; left to gRPC, not turned into a timeout that would fire at once.
    expect(withDeadline({}, Date.now() + 30 * 86_400_000)).toEqual({});
    expect(withDeadline({ timeoutMs: 5 }, Date.now() + 30 * 86_400_000)).toEqual({ timeoutMs: 5 });
  });
});

test('toInferResponse: raw outputs, shapes as int64, the client id echoed', () => {
  const data = Buffer.from([1, 2, 3]);
  const msg = toInferResponse({ id: 'inner', model: 'm', version: '1', outputs: [{ name: 'Y', datatype: 'UINT8', shape: [1, 3], data }] }, 'client-id');
  const back = fromBinary(ModelInferResponseSchema, toBinary(ModelInferResponseSchema, msg));
  expect(back).toMatchObject({ modelName: 'm', modelVersion: '1', id: 'client-id', outputs: [{ name: 'Y', datatype: 'UINT8', shape: [1n, 3n] }] });
  expect([...back.rawOutputContents[0]]).toEqual([1, 2, 3]);
});
