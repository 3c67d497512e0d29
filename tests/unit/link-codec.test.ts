import { create } from '@bufbuild/protobuf';
import {
  BatchSchema, LinkDecodeError, ResultSchema, decodeFrames, encodeFrames, tensorsFromFrames, toMeta,
} from '../../proto/link';
import type { Tensor } from '../../proto/tensor';
import { asNdarray, bytesElements, bytesTensor, tensorFrom, typedArray } from '../../sdk/node';

const int32 = (name: string, values: number[], shape: number[]): Tensor =>
  tensorFrom(name, 'INT32', shape, Int32Array.from(values));

describe('link codec', () => {
  test('a batch round-trips with its tensor frames', () => {
    const a = int32('INPUT0', [1, 2, 3, 4, 5, 6], [3, 2]);
    const s = bytesTensor('TEXT', ['hi', '', 'héllo']);
    const frames = encodeFrames({
      case: 'batch',
      value: create(BatchSchema, {
        batchId: 42n, model: 'm', outputs: ['OUT'],
        items: [{ requestId: 'r1', rows: 1 }, { requestId: 'r2', rows: 2, sequence: { id: 's', slot: 1, start: true } }],
        tensors: [toMeta(a), toMeta(s)],
      }),
    }, [a, s]);
    expect(frames).toHaveLength(3);
    expect(frames[1]).toBe(a.data); // tensor frames are not copied

    const { envelope, frames: rest } = decodeFrames(frames);
    if (envelope.kind.case !== 'batch') throw new Error(`got ${envelope.kind.case}`);
    const b = envelope.kind.value;
    expect(b.batchId).toBe(42n);
    expect(b.items.map((i) => [i.requestId, i.rows])).toEqual([['r1', 1], ['r2', 2]]);
    expect(b.items[1].sequence?.start).toBe(true);
    expect(b.outputs).toEqual(['OUT']);
    const [ta, ts] = tensorsFromFrames(b.tensors, rest);
    expect(ta.shape).toEqual([3, 2]);
    expect(Array.from(typedArray(ta) as Int32Array)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(asNdarray(ta).get(2, 1)).toBe(6);
    expect(bytesElements(ts).map((x) => x.toString())).toEqual(['hi', '', 'héllo']);
  });

  test('a batch-wide error result carries no tensors', () => {
    const frames = encodeFrames({ case: 'result', value: create(ResultSchema, { batchId: 1n, error: 'boom' }) });
    const { envelope, frames: rest } = decodeFrames(frames);
    expect(envelope.kind.case).toBe('result');
    expect(envelope.kind.value).toMatchObject({ error: 'boom' });
    expect(rest).toHaveLength(0);
  });

  test('bad envelopes are rejected with LinkDecodeError', () => {
    expect(() => decodeFrames([])).toThrow(LinkDecodeError);
    expect(() => decodeFrames([Buffer.from([0xff, 0xff, 0xff])])).toThrow(LinkDecodeError);
    expect(() => decodeFrames([Buffer.alloc(0)])).toThrow(/no message/);
    expect(() => decodeFrames([Buffer.alloc((1 << 20) + 1)])).toThrow(/too large/);
  });

  test('frame count and datatype mismatches are rejected', () => {
    const a = int32('A', [1, 2], [1, 2]);
    expect(() => tensorsFromFrames([toMeta(a)], [])).toThrow(/1 tensors described but 0 frames/);
    expect(() => tensorsFromFrames([], [a.data])).toThrow(LinkDecodeError);
    expect(() => tensorsFromFrames([{ ...toMeta(a), datatype: 'INT33' }], [a.data])).toThrow(/unknown datatype/);
  });

  test('typed views copy when the buffer is misaligned', () => {
    const raw = Buffer.alloc(9);
    const mis = raw.subarray(1);
    mis.writeInt32LE(7, 0);
    mis.writeInt32LE(-8, 4);
    const t: Tensor = { name: 'x', datatype: 'INT32', shape: [2], data: mis };
    expect(Array.from(typedArray(t) as Int32Array)).toEqual([7, -8]);
    expect(() => typedArray({ ...t, datatype: 'FP16' })).toThrow(/no typed array/);
  });
});
