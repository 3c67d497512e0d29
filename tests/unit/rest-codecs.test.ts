/**
 * The REST bridge's codecs, without a server: JSON tensors per datatype
 * (property-based round trips), exact 64-bit JSON, KServe bodies and the
 * binary extension, the raw form, request parameters, bounded quotes, the
 * planned size of every image resize mode against what sharp really makes,
 * and the decode slots.
 */
import fc from 'fast-check';
import sharp from 'sharp';
import { BrokerError } from '../../core/errors';
import type { DataType } from '../../proto/tensor';
import { tensorFromJson, tensorToJson } from '../../bridges/rest/json-tensors';
import { InexactInteger, parseJson, readJson, stringifyJson } from '../../bridges/rest/json-body';
import { encodeInferResult, parseInferBody, splitBinaryBody } from '../../bridges/rest/infer-body';
import { rawInputTensor } from '../../bridges/rest/raw-input';
import { FITS, probeImage, resizedSize } from '../../bridges/rest/images';
import { requestOptions } from '../../bridges/shared/parameters';
import { quote, truncate } from '../../bridges/shared/truncate';
import { Slots } from '../../bridges/shared/slots';
import type { ModelMetadata } from '../../core/types';

const code = (fn: () => unknown): string | undefined => {
  try {
    fn();
    return undefined;
  } catch (e) {
    if (e instanceof InexactInteger) return 'INEXACT'; // the caller reads the body again exactly (readJson)
    return e instanceof BrokerError ? e.code : `not a BrokerError: ${(e as Error).message}`;
  }
};

const INT_RANGES: [DataType, number, number][] = [
  ['INT8', -128, 127], ['UINT8', 0, 255], ['INT16', -32768, 32767], ['UINT16', 0, 65535],
  ['INT32', -(2 ** 31), 2 ** 31 - 1], ['UINT32', 0, 2 ** 32 - 1],
];

describe('JSON tensors', () => {
  test.each(INT_RANGES)('%s round-trips every value in range and refuses one past each end', (dt, min, max) => {
    fc.assert(fc.property(fc.array(fc.integer({ min, max }), { minLength: 1, maxLength: 40 }), (values) => {
      const t = tensorFromJson('x', dt, [values.length], values);
      expect(tensorToJson(t)).toEqual(values);
    }), { numRuns: 200 });
    expect(code(() => tensorFromJson('x', dt, [1], [max + 1]))).toBe('INVALID_ARGUMENT');
    expect(code(() => tensorFromJson('x', dt, [1], [min - 1]))).toBe('INVALID_ARGUMENT');
    expect(code(() => tensorFromJson('x', dt, [1], [1.5]))).toBe('INVALID_ARGUMENT');
  });

  test('INT64 and UINT64: bigints exact both ways, safe values stay numbers', () => {
    fc.assert(fc.property(fc.array(fc.bigInt({ min: -(1n << 63n), max: (1n << 63n) - 1n }), { minLength: 1, maxLength: 20 }), (values) => {
      const out = tensorToJson(tensorFromJson('x', 'INT64', [values.length], values));
      expect(out.map((v) => BigInt(v as number | bigint))).toEqual(values);
      for (const v of out) if (typeof v === 'bigint') expect(Number.isSafeInteger(Number(v))).toBe(false);
    }), { numRuns: 200 });
    fc.assert(fc.property(fc.array(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), { minLength: 1, maxLength: 20 }), (values) => {
      expect(tensorToJson(tensorFromJson('x', 'UINT64', [values.length], values)).map((v) => BigInt(v as number | bigint))).toEqual(values);
    }), { numRuns: 200 });
    expect(code(() => tensorFromJson('x', 'INT64', [1], [1n << 63n]))).toBe('INVALID_ARGUMENT');
    expect(code(() => tensorFromJson('x', 'UINT64', [1], [-1n]))).toBe('INVALID_ARGUMENT');
    expect(code(() => tensorFromJson('x', 'UINT64', [1], [1n << 64n]))).toBe('INVALID_ARGUMENT');
    expect(tensorToJson(tensorFromJson('x', 'INT64', [2], ['-9223372036854775808', 5]))).toEqual([-(1n << 63n), 5]);
  });

  test('FP32, FP64, FP16, BF16, BOOL and BYTES', () => {
    fc.assert(fc.property(fc.array(fc.double({ noNaN: true }), { minLength: 1, maxLength: 20 }), (values) => {
      expect(tensorToJson(tensorFromJson('x', 'FP64', [values.length], values))).toEqual(values);
      expect(tensorToJson(tensorFromJson('x', 'FP32', [values.length], values))).toEqual(values.map((v) => Math.fround(v)));
    }), { numRuns: 200 });
    expect(tensorToJson(tensorFromJson('x', 'FP16', [3], [0.5, -2, 65504]))).toEqual([0.5, -2, 65504]);
    expect(tensorToJson(tensorFromJson('x', 'BF16', [2], [1.5, -256]))).toEqual([1.5, -256]);
    expect(tensorToJson(tensorFromJson('x', 'FP64', [1], [12345678901234567890n]))).toEqual([12345678901234567890]);
    expect(tensorToJson(tensorFromJson('x', 'BOOL', [3], [true, 0, 1]))).toEqual([true, false, true]);
    fc.assert(fc.property(fc.array(fc.string(), { minLength: 1, maxLength: 10 }), (values) => {
      expect(tensorToJson(tensorFromJson('x', 'BYTES', [values.length], values))).toEqual(values.map((s) => Buffer.from(s).toString()));
    }), { numRuns: 100 });
    expect(code(() => tensorFromJson('x', 'BOOL', [1], [2]))).toBe('INVALID_ARGUMENT');
    expect(code(() => tensorFromJson('x', 'BYTES', [1], [1]))).toBe('INVALID_ARGUMENT');
  });

  test('nested data matching the shape is flattened row-major; deeper nesting, wrong counts and non-arrays are 400s', () => {
    expect(tensorToJson(tensorFromJson('x', 'INT32', [2, 2], [[1, 2], [3, 4]]))).toEqual([1, 2, 3, 4]);
    expect(tensorToJson(tensorFromJson('x', 'INT32', [2, 2], [1, 2, 3, 4]))).toEqual([1, 2, 3, 4]);
    expect(code(() => tensorFromJson('x', 'INT32', [2, 2], [[[1, 2]], [3, 4]]))).toBe('INVALID_ARGUMENT');
    let deep: unknown = [1];
    for (let i = 0; i < 100_000; i++) deep = [deep];
    expect(code(() => tensorFromJson('x', 'INT32', [1], deep))).toBe('INVALID_ARGUMENT');
    expect(code(() => tensorFromJson('x', 'INT32', [3], [1, 2]))).toBe('INVALID_ARGUMENT');
    expect(code(() => tensorFromJson('x', 'INT32', [1], 5))).toBe('INVALID_ARGUMENT');
  });
});

describe('exact JSON', () => {
  test('a body is read again exactly only when an INT64/UINT64 value, the id or sequence_id may have been rounded', () => {
    const read = (text: string) => readJson(text, 'the body', (h) => parseInferBody(h, undefined, 'fb'));
    const int64 = (data: string) => `{"inputs": [{"name": "A", "datatype": "INT64", "shape": [1, 2], "data": [${data}]}]}`;
    expect(tensorToJson(read(int64('4611686018427387907, -9223372036854775808')).request.inputs[0])).toEqual([4611686018427387907n, -(1n << 63n)]);
    expect(tensorToJson(read(int64('9007199254740991, 1')).request.inputs[0])).toEqual([9007199254740991, 1]);
    // Not an exact integer even when read exactly: a 400, not a rounded value.
    expect(code(() => read(int64('1e20, 1')))).toBe('INVALID_ARGUMENT');
    const seq = read('{"parameters": {"sequence_id": 12345678901234567891, "sequence_start": true}, "id": 98765432109876543210, "inputs": [{"name": "A", "datatype": "INT8", "shape": [1], "data": [1]}]}');
    expect(seq.request.sequence?.id).toBe('12345678901234567891');
    expect(seq.clientId).toBe('98765432109876543210');
    // Other datatypes never need the exact parser: a big integer is simply out of their range.
    expect(code(() => read('{"inputs": [{"name": "A", "datatype": "INT32", "shape": [1], "data": [12345678901234567890]}]}'))).toBe('INVALID_ARGUMENT');
  });

  test('parse keeps every digit; stringify writes them back; both agree with JSON elsewhere', () => {
    const parsed = parseJson('{"a": [4611686018427387907, -9223372036854775808, 18446744073709551615, 9007199254740991, 1.5, "s"]}', 'x', true) as { a: unknown[] };
    expect(parsed.a).toEqual([4611686018427387907n, -(1n << 63n), (1n << 64n) - 1n, 9007199254740991, 1.5, 's']);
    expect(stringifyJson(parsed)).toBe('{"a":[4611686018427387907,-9223372036854775808,18446744073709551615,9007199254740991,1.5,"s"]}');
    // Elsewhere the same values as JSON.parse, except that integers beyond 2^53 are exact bigints.
    const rounded = (v: unknown): unknown =>
      typeof v === 'bigint' ? Number(v) : Array.isArray(v) ? v.map(rounded) : v && typeof v === 'object' ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, rounded(x)])) : v;
    fc.assert(fc.property(fc.json(), (text) => {
      expect(rounded(parseJson(text, 'x', true))).toEqual(JSON.parse(text));
    }), { numRuns: 300 });
  });

  test('bad or deeply nested JSON is a bounded 400 on both paths', () => {
    expect(code(() => parseJson('{"a": '))).toBe('INVALID_ARGUMENT');
    expect(code(() => parseJson(`[${'['.repeat(50_000)}12345678901234567890`, 'x', true))).toBe('INVALID_ARGUMENT');
    expect(code(() => parseJson(`${'['.repeat(50_000)}1${']'.repeat(50_000)}`, 'x', true))).toBe('INVALID_ARGUMENT');
    try {
      parseJson(`{"x": 12345678901234567890, "y": ${'z'.repeat(1_000_000)}}`, 'x', true);
    } catch (e) {
      expect((e as Error).message.length).toBeLessThan(2200);
    }
  });
});

describe('KServe bodies', () => {
  const head = (o: unknown) => Buffer.from(JSON.stringify(o));

  test('JSON body: inputs, outputs with binary_data, parameters, the client id', () => {
    const p = parseInferBody({
      id: 'c1',
      parameters: { binary_data_output: true, timeout: 20_000, priority: 2 },
      inputs: [{ name: 'A', datatype: 'INT32', shape: [1, 2], data: [[1, 2]] }],
      outputs: [{ name: 'O', parameters: { binary_data: false } }, { name: 'P' }],
    }, undefined, 'fallback');
    expect(p.clientId).toBe('c1');
    expect(p.request).toMatchObject({ id: 'c1', outputs: ['O', 'P'], timeoutMs: 20, priority: 2 });
    expect([...p.binaryOutputs]).toEqual(['*']);
    expect(parseInferBody({ inputs: [{ name: 'A', datatype: 'INT8', shape: [1], data: [1] }] }, undefined, 'fb').request.id).toBe('fb');
  });

  test('binary extension: tensors sliced by binary_data_size; bad sizes and leftovers are 400s', () => {
    const header = { inputs: [{ name: 'A', datatype: 'UINT8', shape: [1, 3], parameters: { binary_data_size: 3 } }, { name: 'B', datatype: 'INT8', shape: [1, 1], data: [5] }] };
    const h = head(header);
    const body = Buffer.concat([h, Buffer.from([7, 8, 9])]);
    const split = splitBinaryBody(body, h.length);
    const parsed: unknown = JSON.parse(split.header);
    const p = parseInferBody(parsed, split.binary, 'id');
    expect([...p.request.inputs[0].data]).toEqual([7, 8, 9]);
    expect(code(() => parseInferBody(parsed, Buffer.from([1, 2, 3, 4]), 'id'))).toBe('INVALID_ARGUMENT');
    expect(code(() => parseInferBody(parsed, Buffer.from([1]), 'id'))).toBe('INVALID_ARGUMENT');
    expect(code(() => parseInferBody(parsed, undefined, 'id'))).toBe('INVALID_ARGUMENT');
    expect(code(() => splitBinaryBody(body, body.length + 1))).toBe('INVALID_ARGUMENT');
    expect(code(() => splitBinaryBody(body, NaN))).toBe('INVALID_ARGUMENT');
    const cut = splitBinaryBody(body, 2);
    expect(code(() => readJson(cut.header, 'the JSON header', (x) => parseInferBody(x, cut.binary, 'id')))).toBe('INVALID_ARGUMENT');
  });

  test('malformed headers are 400s, never other errors', () => {
    const bad: unknown[] = [null, [], 'x', {}, { inputs: [] }, { inputs: [1] }, { inputs: [{ name: '' }] },
      { inputs: [{ name: 'a', datatype: 'NOPE', shape: [1], data: [1] }] }, { inputs: [{ name: 'a', datatype: 'INT8', shape: [-1], data: [1] }] },
      { inputs: [{ name: 'a', datatype: 'INT8', shape: [1] }] }, { inputs: [{ name: 'a'.repeat(2000), datatype: 'INT8', shape: [1], data: [1] }] },
      { inputs: [{ name: 'a', datatype: 'INT8', shape: [1], data: [1] }], outputs: 5 }, { inputs: [{ name: 'a', datatype: 'INT8', shape: [1], data: [1] }], outputs: [{}] }];
    for (const h of bad) expect(code(() => parseInferBody(h, undefined, 'id'))).toBe('INVALID_ARGUMENT');
    fc.assert(fc.property(fc.anything(), (h) => {
      const c = code(() => parseInferBody(h, undefined, 'id'));
      expect(c === undefined || c === 'INVALID_ARGUMENT' || c === 'INEXACT').toBe(true);
    }), { numRuns: 500 });
  });

  test('results: JSON data, or binary outputs after the header in order; INT64 beyond 2^53 stays a bigint', () => {
    const out = tensorFromJson('O', 'INT64', [1, 2], ['4611686018427387907', 1]);
    const b = tensorFromJson('B', 'UINT8', [1, 2], [1, 2]);
    const enc = encodeInferResult({ model: 'm', version: '1', outputs: [out, b] } as never, 'c', new Set(['B']));
    expect(stringifyJson(enc.json)).toBe('{"model_name":"m","model_version":"1","id":"c","outputs":[{"name":"O","datatype":"INT64","shape":[1,2],"data":[4611686018427387907,1]},' +
      '{"name":"B","datatype":"UINT8","shape":[1,2],"parameters":{"binary_data_size":2}}]}');
    expect(enc.binary.map((x) => [...x])).toEqual([[1, 2]]);
  });
});

describe('raw binary form (Inference-Header-Content-Length: 0)', () => {
  const meta = (datatype: string, shape: number[], n = 1): ModelMetadata =>
    ({ name: 'm', inputs: Array.from({ length: n }, (_, i) => ({ name: `I${i}`, datatype, shape })), outputs: [] }) as unknown as ModelMetadata;

  test('fixed, one variable dimension, BYTES; mismatches are 400s', () => {
    expect(rawInputTensor(meta('FP32', [-1, 2, 2]), Buffer.alloc(16)).shape).toEqual([1, 2, 2]);
    expect(rawInputTensor(meta('FP32', [-1, -1, 2]), Buffer.alloc(24)).shape).toEqual([1, 3, 2]);
    const bytes = rawInputTensor(meta('BYTES', [-1, -1]), Buffer.from('hey'));
    expect(bytes.shape).toEqual([1, 1]);
    expect(bytes.data.readUInt32LE(0)).toBe(3);
    expect(code(() => rawInputTensor(meta('FP32', [-1, 2, 2]), Buffer.alloc(15)))).toBe('INVALID_ARGUMENT');
    expect(code(() => rawInputTensor(meta('FP32', [-1, 2, 2]), Buffer.alloc(20)))).toBe('INVALID_ARGUMENT');
    expect(code(() => rawInputTensor(meta('FP32', [-1, -1, -1]), Buffer.alloc(16)))).toBe('INVALID_ARGUMENT');
    expect(code(() => rawInputTensor(meta('FP32', [-1, 2], 2), Buffer.alloc(8)))).toBe('INVALID_ARGUMENT');
    expect(code(() => rawInputTensor(meta('BYTES', [-1, 3]), Buffer.alloc(8)))).toBe('INVALID_ARGUMENT');
  });
});

describe('request parameters', () => {
  test('timeout in µs, priority, sequences (numbers, bigints and strings alike)', () => {
    expect(requestOptions({ timeout: 1500, priority: 1 })).toEqual({ timeoutMs: 2, priority: 1 });
    expect(requestOptions({ sequence_id: 12345678901234567890n, sequence_start: true }).sequence).toEqual({ id: '12345678901234567890', start: true, end: false });
    expect(requestOptions({ sequence_id: '7', sequence_end: 'true' }).sequence).toEqual({ id: '7', start: false, end: true });
    expect(requestOptions({ sequence_id: 7 }).sequence?.id).toBe('7');
    for (const p of [{ timeout: -1 }, { priority: 'high' }, { sequence_start: true }, { sequence_id: -1 }, { sequence_id: 'x'.repeat(300) }, { sequence_start: 'maybe', sequence_id: 1 }]) {
      expect(code(() => requestOptions(p))).toBe('INVALID_ARGUMENT');
    }
    expect(() => requestOptions({ priority: 'y'.repeat(1_000_000) })).toThrow(/more characters/);
    // Found by the fuzzer: quoting a parameter nested 10,000 deep overflowed the stack (a 500).
    let deep: unknown = [1];
    for (let i = 0; i < 20_000; i++) deep = [deep];
    for (const key of ['timeout', 'priority', 'sequence_id', 'sequence_start']) expect(code(() => requestOptions({ [key]: deep }))).toBe('INVALID_ARGUMENT');
    expect(code(() => parseInferBody({ id: deep, inputs: [{ name: 'A', datatype: 'INT8', shape: [1], data: [1] }] }, undefined, 'x'))).toBe('INVALID_ARGUMENT');
  });
});

describe('bounded quotes', () => {
  test('truncate and quote bound any value', () => {
    expect(truncate('abc', 5)).toBe('abc');
    expect(truncate('abcdef', 3)).toBe('abc… (3 more characters)');
    expect(quote('x'.repeat(10_000)).length).toBeLessThan(200);
    expect(quote(Array(100_000).fill(1)).length).toBeLessThan(200);
    expect(quote(1n << 200n).length).toBeLessThan(200);
    expect(quote(undefined)).toBe('undefined');
  });
});

describe('image resize planning', () => {
  test('resizedSize never underestimates what sharp makes, in any mode', async () => {
    const images = new Map<string, Buffer>();
    const image = async (w: number, h: number) => {
      const key = `${w}x${h}`;
      if (!images.has(key)) images.set(key, await sharp({ create: { width: w, height: h, channels: 3, background: '#123456' } }).png().toBuffer());
      return images.get(key) as Buffer;
    };
    await fc.assert(fc.asyncProperty(
      fc.integer({ min: 1, max: 64 }), fc.integer({ min: 1, max: 64 }),
      fc.option(fc.integer({ min: 1, max: 300 }), { nil: undefined }), fc.option(fc.integer({ min: 1, max: 300 }), { nil: undefined }),
      fc.constantFrom(...FITS),
      async (iw, ih, width, height, fit) => {
        const planned = resizedSize(iw, ih, { width, height, fit });
        let pipeline = sharp(await image(iw, ih));
        if (width !== undefined || height !== undefined) pipeline = pipeline.resize({ width, height, fit });
        const { info } = await pipeline.raw().toBuffer({ resolveWithObject: true });
        expect(planned.width).toBeGreaterThanOrEqual(info.width);
        expect(planned.height).toBeGreaterThanOrEqual(info.height);
        expect(planned.width * planned.height).toBeLessThanOrEqual((info.width + 1) * (info.height + 1));
      },
    ), { numRuns: 150 });
  });

  test('the probe refuses from the header: a 65535-wide resize of a tall picture', async () => {
    const tall = await sharp({ create: { width: 2, height: 300, channels: 3, background: '#000' } }).png().toBuffer();
    await expect(probeImage(tall, 'x', { width: 65535, fit: 'cover' }, 64 * 1024 * 1024)).rejects.toMatchObject({ code: 'PAYLOAD_TOO_LARGE' });
    await expect(probeImage(tall, 'x', { width: 65535, height: 1, fit: 'outside' }, 64 * 1024 * 1024)).rejects.toMatchObject({ code: 'PAYLOAD_TOO_LARGE' });
    await expect(probeImage(tall, 'x', { width: 4, fit: 'cover' }, 64 * 1024 * 1024)).resolves.toMatchObject({ width: 4, height: 600 });
    await expect(probeImage(Buffer.from('not an image'), 'x', { fit: 'cover' }, 100)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });
});

describe('Slots', () => {
  test('never more than `size` at once; every job runs, in arrival order', async () => {
    const slots = new Slots(2);
    let running = 0;
    let peak = 0;
    const started: number[] = [];
    const gates = Array.from({ length: 6 }, () => {
      let open!: () => void;
      const p = new Promise<void>((r) => (open = r));
      return { p, open };
    });
    const jobs = gates.map((g, i) => slots.run(async () => {
      started.push(i);
      running++;
      peak = Math.max(peak, running);
      await g.p;
      running--;
      return i;
    }));
    expect(slots.load).toEqual({ used: 2, waiting: 4 });
    for (const g of gates) {
      g.open();
      await new Promise((r) => setImmediate(r));
    }
    expect(await Promise.all(jobs)).toEqual([0, 1, 2, 3, 4, 5]);
    expect(peak).toBe(2);
    expect(started).toEqual([0, 1, 2, 3, 4, 5]);
    expect(slots.load).toEqual({ used: 0, waiting: 0 });
  });
});
