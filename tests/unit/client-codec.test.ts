/** The ZeroMQ client frame codec (proto/client.ts): headers, tensor frames, parameters, peekId. */
import { create, toBinary } from '@bufbuild/protobuf';
import {
  ClientDecodeError, InferReplySchema, InferRequestSchema, MAX_HEADER_BYTES, decodeHeader, encodeFrames,
  parametersFromProto, parametersToProto, peekId, tensorsFromFrames, toMeta,
} from '../../proto/client';

const header = (init: Record<string, unknown>) => Buffer.from(toBinary(InferRequestSchema, create(InferRequestSchema, init as never)));

test('encodeFrames / decodeHeader round trip; tensor frames are the tensors own buffers', () => {
  const data = Buffer.from([1, 2, 3, 4]);
  const t = { name: 'OUT', datatype: 'UINT8' as const, shape: [1, 4], data };
  const frames = encodeFrames(InferReplySchema, create(InferReplySchema, { id: 'r1', model: 'm', outputs: [toMeta(t)] }), [t]);
  expect(frames).toHaveLength(2);
  expect(frames[1]).toBe(data);
  const h = decodeHeader(InferReplySchema, frames[0]);
  expect(h).toMatchObject({ id: 'r1', model: 'm', outputs: [{ name: 'OUT', datatype: 'UINT8', shape: [1n, 4n] }] });
});

test('decodeHeader refuses a missing, oversized or malformed header with ClientDecodeError', () => {
  expect(() => decodeHeader(InferRequestSchema, undefined)).toThrow(ClientDecodeError);
  expect(() => decodeHeader(InferRequestSchema, Buffer.alloc(MAX_HEADER_BYTES + 1))).toThrow(/over the limit/);
  expect(() => decodeHeader(InferRequestSchema, Buffer.from([0x0a, 0xff, 0x01]))).toThrow(/not a valid/);
});

test('tensorsFromFrames checks count, name, datatype and dimensions; frames become views', () => {
  const f = Buffer.alloc(8);
  const meta = (over: Record<string, unknown>) => ({ ...toMeta({ name: 'X', datatype: 'INT32', shape: [1, 2], data: f }), ...over });
  const [t] = tensorsFromFrames([meta({})], [f]);
  expect(t).toMatchObject({ name: 'X', datatype: 'INT32', shape: [1, 2] });
  expect(t.data).toBe(f);
  expect(() => tensorsFromFrames([meta({})], [])).toThrow(/1 tensors but 0 tensor frames/);
  expect(() => tensorsFromFrames([meta({ name: '' })], [f])).toThrow(/no name/);
  expect(() => tensorsFromFrames([meta({ datatype: 'F32' })], [f])).toThrow(/unknown datatype/);
  expect(() => tensorsFromFrames([meta({ shape: [-1n] })], [f])).toThrow(/invalid dimension/);
  expect(() => tensorsFromFrames([meta({ shape: [2n ** 60n] })], [f])).toThrow(/invalid dimension/);
});

test('parameters: booleans, integers (int64, bigint kept), doubles and strings both ways', () => {
  const p = parametersToProto({ a: true, b: 7, c: 2n ** 62n, d: 0.5, e: 'x' });
  expect(Object.fromEntries(Object.entries(p).map(([k, v]) => [k, v.parameterChoice.case]))).toEqual({ a: 'boolParam', b: 'int64Param', c: 'int64Param', d: 'doubleParam', e: 'stringParam' });
  expect(parametersFromProto(p)).toEqual({ a: true, b: 7n, c: 2n ** 62n, d: 0.5, e: 'x' });
  expect(() => parametersToProto({ bad: {} as never })).toThrow(TypeError);
});

describe('peekId', () => {
  test('reads field 1 of a valid header, after other fields too', () => {
    expect(peekId(header({ id: 'abc', model: 'm' }))).toBe('abc');
    const modelFirst = Buffer.concat([Buffer.from([0x12, 0x01, 0x6d]), Buffer.from([0x0a, 0x02, 0x69, 0x64])]); // model "m", then id "id"
    expect(peekId(modelFirst)).toBe('id');
  });

  test('gives up cleanly on garbage: truncated, bad wire type, long or non-UTF-8 ids', () => {
    expect(peekId(undefined)).toBe('');
    expect(peekId(Buffer.alloc(0))).toBe('');
    expect(peekId(Buffer.from([0x0a, 0x05, 0x61]))).toBe(''); // length past the end
    expect(peekId(Buffer.from([0x0f]))).toBe(''); // wire type 7
    expect(peekId(Buffer.from([0x80, 0x80, 0x80, 0x80, 0x80, 0x80]))).toBe(''); // unterminated varint
    expect(peekId(header({ id: 'x'.repeat(300) }))).toBe('');
    expect(peekId(Buffer.from([0x0a, 0x02, 0xff, 0xfe]))).toBe('');
    // A header truncated after the id still yields it.
    const h = header({ id: 'keep', model: 'mmmm' });
    expect(peekId(h.subarray(0, h.length - 2))).toBe('keep');
  });
});
