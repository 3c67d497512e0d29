import { BrokerError } from '../../core/errors';
import { applyClassification, classCount, classify, modelLabels } from '../../bridges/shared/classification';
import { decodeBytes } from '../../sdk/node';
import type { Tensor } from '../../proto/tensor';

const fp32 = (shape: number[], values: number[]): Tensor => ({ name: 'OUT', datatype: 'FP32', shape, data: Buffer.from(Float32Array.from(values).buffer) });
const strings = (t: Tensor) => decodeBytes(t.data).map((b) => b.toString());

describe('classify', () => {
  test("Triton's documented example: [1.1, 3.3, 0.5, 2.4], top 2 -> 3.3:1, 2.4:3", () => {
    const out = classify(fp32([4], [1.1, 3.3, 0.5, 2.4]), 2);
    expect(out).toMatchObject({ name: 'OUT', datatype: 'BYTES', shape: [2] });
    expect(strings(out)).toEqual(['3.3:1', '2.4:3']);
  });

  test('per row of a batch, with labels by index', () => {
    const out = classify(fp32([2, 3], [0.1, 0.7, 0.2, 5, -1, 9]), 2, ['cat', 'dog', 'bird']);
    expect(out.shape).toEqual([2, 2]);
    expect(strings(out)).toEqual(['0.7:1:dog', '0.2:2:bird', '9:2:bird', '5:0:cat']);
  });

  test('classes beyond the label list, or an empty label, get none', () => {
    expect(strings(classify(fp32([1, 3], [1, 2, 3]), 3, ['a', '']))).toEqual(['3:2', '2:1', '1:0:a']);
  });

  test('the count is cut to the number of classes; ties keep the lower index first', () => {
    const out = classify(fp32([1, 3], [2, 2, 1]), 10);
    expect(out.shape).toEqual([1, 3]);
    expect(strings(out)).toEqual(['2:0', '2:1', '1:2']);
  });

  test('compared in the output datatype: INT64 beyond 2^53 exactly, UINT8, INT8 negatives, FP16', () => {
    const big = Buffer.alloc(24);
    [9007199254740993n, 9007199254740992n, -5n].forEach((v, i) => big.writeBigInt64LE(v, i * 8));
    expect(strings(classify({ name: 'L', datatype: 'INT64', shape: [1, 3], data: big }, 2))).toEqual(['9007199254740993:0', '9007199254740992:1']);
    expect(strings(classify({ name: 'U', datatype: 'UINT8', shape: [1, 3], data: Buffer.from([3, 250, 7]) }, 1))).toEqual(['250:1']);
    expect(strings(classify({ name: 'I', datatype: 'INT8', shape: [1, 3], data: Buffer.from(Int8Array.from([-3, -1, -2]).buffer) }, 3))).toEqual(['-1:1', '-2:2', '-3:0']);
    // FP16 1.5 = 0x3e00, 0.25 = 0x3400
    const half = Buffer.alloc(4);
    half.writeUInt16LE(0x3400, 0);
    half.writeUInt16LE(0x3e00, 2);
    expect(strings(classify({ name: 'H', datatype: 'FP16', shape: [1, 2], data: half }, 2))).toEqual(['1.5:1', '0.25:0']);
  });

  test('NaN ranks last', () => {
    expect(strings(classify(fp32([1, 3], [NaN, -1, 0]), 3))).toEqual(['0:2', '-1:1', 'NaN:0']);
  });

  test('a BYTES output or a scalar is refused with INVALID_ARGUMENT', () => {
    expect(() => classify({ name: 'S', datatype: 'BYTES', shape: [1, 1], data: Buffer.from([1, 0, 0, 0, 97]) }, 1)).toThrow(/needs a numeric output, not BYTES/);
    expect(() => classify({ name: 'Z', datatype: 'FP32', shape: [], data: Buffer.alloc(4) }, 1)).toThrow(BrokerError);
  });
});

describe('classCount', () => {
  test.each([[3, 3], [3n, 3], ['4', 4], [undefined, undefined]])('%p -> %p', (v, want) => expect(classCount('OUT', v)).toBe(want));
  test.each([0, -1, 1.5, 'x', true, 1 << 20])('%p is refused naming the output', (v) => {
    expect(() => classCount('OUT', v)).toThrow("output 'OUT': parameter 'classification' must be an integer");
  });
});

test('applyClassification replaces only the named outputs, taking labels from the output specs', () => {
  const other: Tensor = { name: 'KEEP', datatype: 'INT32', shape: [1, 1], data: Buffer.alloc(4) };
  const specs = [{ name: 'OUT', datatype: 'FP32' as const, shape: [-1, 2], labels: ['no', 'yes'] }];
  const out = applyClassification([fp32([1, 2], [0.2, 0.8]), other], new Map([['OUT', 1]]), modelLabels(undefined, specs));
  expect(strings(out[0])).toEqual(['0.8:1:yes']);
  // labels from models.yaml win over READY's
  const fromFile = applyClassification([fp32([1, 2], [0.2, 0.8])], new Map([['OUT', 1]]), modelLabels({ OUT: ['neg', 'pos'] }, specs));
  expect(strings(fromFile[0])).toEqual(['0.8:1:pos']);
  expect(out[1]).toBe(other);
  const same = [other];
  expect(applyClassification(same, undefined)).toBe(same);
});
