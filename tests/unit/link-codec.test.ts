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

// ---- issue 10: every message kind round-trips; malformed frames only ever raise LinkDecodeError ----

import {
  EndSequenceSchema, EndSequence_Reason, EnvelopeSchema, HeartbeatSchema, ReadySchema, ShutdownSchema, TensorSpecSchema,
  type Envelope,
} from '../../proto/link';
import { toBinary } from '@bufbuild/protobuf';
import { DATATYPES, checkTensorData, elementSize } from '../../proto/tensor';

/** A small seeded PRNG (mulberry32): the same cases on every run. */
function rng(seed: number): () => number {
  return () => {
    seed |= 0;
    seed = (seed + 0x6d2b79f5) | 0;
    let x = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

const spec = (name: string) => create(TensorSpecSchema, { name, datatype: 'FP32', shape: [-1n, 3n], optional: true });
const KINDS: Envelope['kind'][] = [
  { case: 'ready', value: create(ReadySchema, { protocolVersion: 1, model: 'm', version: '2', maxBatch: 8, credits: 2, inputs: [spec('X')], outputs: [spec('Y')], pid: 42, maxSequences: 3, secret: 'ab'.repeat(32) }) },
  { case: 'heartbeat', value: create(HeartbeatSchema, { timeMs: 1_700_000_000_000n }) },
  { case: 'endSequence', value: create(EndSequenceSchema, { id: 'cam-1', slot: 2, reason: EndSequence_Reason.IDLE }) },
  { case: 'shutdown', value: create(ShutdownSchema, { graceMs: 5000, reason: 'scale down' }) },
  { case: 'result', value: create(ResultSchema, { batchId: 2n ** 64n - 1n, items: [{ error: '' }, { error: 'row rejected' }], computeNs: 17n, tensors: [] }) },
];

describe('link codec: round trips', () => {
  test.each(KINDS.map((k) => [k.case, k] as const))('%s', (_case, kind) => {
    const { envelope, frames } = decodeFrames(encodeFrames(kind));
    expect(frames).toEqual([]);
    expect(envelope.kind.case).toBe(kind.case);
    expect(envelope.kind.value).toEqual(kind.value);
  });

  test('every datatype with a result, in order, bytes untouched', () => {
    const tensors: Tensor[] = DATATYPES.map((dt, i) => {
      const size = elementSize(dt);
      const data = size === undefined ? bytesTensor('b', ['', 'x', 'yz']).data : Buffer.from(Array.from({ length: 3 * size }, (_, j) => (i * 7 + j) & 0xff));
      return { name: `T${i}`, datatype: dt, shape: [3], data };
    });
    const frames = encodeFrames({ case: 'result', value: create(ResultSchema, { batchId: 9n, items: [{ error: '' }], tensors: tensors.map(toMeta) }) }, tensors);
    const { envelope, frames: rest } = decodeFrames(frames);
    if (envelope.kind.case !== 'result') throw new Error('not a result');
    const back = tensorsFromFrames(envelope.kind.value.tensors, rest);
    expect(back.map((t) => [t.name, t.datatype, t.shape])).toEqual(tensors.map((t) => [t.name, t.datatype, t.shape]));
    back.forEach((t, i) => expect(t.data.equals(tensors[i].data)).toBe(true));
  });

  test('a READY from an older copy (no secret field) still decodes, with an empty secret', () => {
    const old = create(ReadySchema, { protocolVersion: 1, model: 'm' });
    const { envelope } = decodeFrames([Buffer.from(toBinary(EnvelopeSchema, create(EnvelopeSchema, { kind: { case: 'ready', value: old } })))]);
    expect(envelope.kind.case === 'ready' && envelope.kind.value.secret).toBe('');
  });
});

describe('link codec: malformed frames', () => {
  const only = (fn: () => unknown): 'ok' | 'decode-error' => {
    try {
      fn();
      return 'ok';
    } catch (e) {
      if (e instanceof LinkDecodeError) return 'decode-error';
      throw e; // anything else is a bug: the broker would log it as unexpected
    }
  };

  test('tensor frames must match their shape and datatype exactly', () => {
    const meta = (datatype: string, shape: bigint[]) => ({ ...toMeta({ name: 'A', datatype: 'INT32', shape: [1], data: Buffer.alloc(4) }), datatype, shape });
    expect(() => tensorsFromFrames([meta('INT32', [2n, 2n])], [Buffer.alloc(15)])).toThrow(/shape \[2,2\] of INT32 needs 16 bytes, the frame has 15/);
    expect(() => tensorsFromFrames([meta('FP64', [1n])], [Buffer.alloc(16)])).toThrow(LinkDecodeError);
    expect(() => tensorsFromFrames([meta('INT32', [-1n, 2n])], [Buffer.alloc(8)])).toThrow(/dimension -1 is out of range/);
    expect(() => tensorsFromFrames([meta('UINT8', [2n ** 62n])], [Buffer.alloc(1)])).toThrow(/out of range/);
    expect(() => tensorsFromFrames([meta('UINT8', [2n ** 26n, 2n ** 26n, 2n ** 26n])], [Buffer.alloc(1)])).toThrow(LinkDecodeError);
    expect(tensorsFromFrames([meta('BOOL', [0n, 5n])], [Buffer.alloc(0)])[0].shape).toEqual([0, 5]);
    // Long names from a peer are cut in messages.
    const long = { ...meta('NOPE', [1n]), name: 'n'.repeat(100_000) };
    expect(() => tensorsFromFrames([long], [Buffer.alloc(1)])).toThrow(LinkDecodeError);
    try {
      tensorsFromFrames([long], [Buffer.alloc(1)]);
    } catch (e) {
      expect((e as Error).message.length).toBeLessThan(300);
    }
  });

  test('every truncation of a valid envelope decodes or raises LinkDecodeError, never anything else', () => {
    for (const kind of KINDS) {
      const head = encodeFrames(kind)[0];
      for (let n = 0; n < head.length; n++) expect(['ok', 'decode-error']).toContain(only(() => decodeFrames([head.subarray(0, n)])));
    }
  });

  test('5000 mutated messages (bit flips, inserted and deleted bytes, extra and missing frames) never raise anything but LinkDecodeError', () => {
    const rand = rng(20261128);
    const a: Tensor = { name: 'X', datatype: 'FP32', shape: [2, 3], data: Buffer.alloc(24, 1) };
    const s = bytesTensor('S', ['a', 'bc']);
    const base = [
      ...KINDS.map((k) => encodeFrames(k)),
      encodeFrames({ case: 'batch', value: create(BatchSchema, { batchId: 1n, model: 'm', items: [{ requestId: 'r', rows: 2 }], tensors: [toMeta(a), toMeta(s)] }) }, [a, s]),
      encodeFrames({ case: 'result', value: create(ResultSchema, { batchId: 1n, items: [{ error: '' }], tensors: [toMeta(a), toMeta(s)] }) }, [a, s]),
    ];
    const counts = { ok: 0, 'decode-error': 0 };
    for (let i = 0; i < 5000; i++) {
      const frames = base[Math.floor(rand() * base.length)].map((f) => Buffer.from(f));
      const op = Math.floor(rand() * 5);
      const f = Math.floor(rand() * frames.length);
      const buf = frames[f];
      const at = Math.floor(rand() * Math.max(1, buf.length));
      if (op === 0 && buf.length > 0) buf[at] ^= 1 << Math.floor(rand() * 8);
      else if (op === 1) frames[f] = Buffer.concat([buf.subarray(0, at), Buffer.from([Math.floor(rand() * 256)]), buf.subarray(at)]);
      else if (op === 2) frames[f] = Buffer.concat([buf.subarray(0, at), buf.subarray(at + 1 + Math.floor(rand() * 4))]);
      else if (op === 3) frames.push(Buffer.alloc(Math.floor(rand() * 32)));
      else if (frames.length > 1) frames.pop();
      const outcome = only(() => {
        const { envelope, frames: rest } = decodeFrames(frames);
        const k = envelope.kind;
        if (k.case === 'batch' || k.case === 'result') {
          // As the broker does with a RESULT: BYTES frames are walked, and a bad one is refused.
          for (const t of tensorsFromFrames(k.value.tensors, rest)) {
            const bad = checkTensorData(t);
            if (bad) throw new LinkDecodeError(bad);
          }
        }
      });
      counts[outcome]++;
    }
    expect(counts.ok + counts['decode-error']).toBe(5000);
    expect(counts['decode-error']).toBeGreaterThan(100); // the mutations do hit
    expect(counts.ok).toBeGreaterThan(100);
  });
});
