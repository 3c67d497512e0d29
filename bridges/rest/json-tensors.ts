/**
 * JSON numbers <-> raw tensor bytes, for the KServe v2 JSON form. Only the
 * REST bridge's JSON path pays for this; binary bodies skip it.
 */
import { BrokerError } from '../../core/errors';
import { elementCount, elementSize, bytesOffsets, encodeBytes, type DataType, type Tensor } from '../../proto/tensor';
import { quote } from '../shared/truncate';
import { checkExact } from './json-body';
import { f16ToF32, f32ToBf16, f32ToF16, bf16ToF32 } from './half';

const invalid = (msg: string) => new BrokerError('INVALID_ARGUMENT', msg);

type IntArrayCtor = Int8ArrayConstructor | Uint8ArrayConstructor | Int16ArrayConstructor | Uint16ArrayConstructor | Int32ArrayConstructor | Uint32ArrayConstructor;
type IntRange = [IntArrayCtor, number, number];

const INT_TYPES: Partial<Record<DataType, IntRange>> = {
  INT8: [Int8Array, -128, 127],
  UINT8: [Uint8Array, 0, 255],
  INT16: [Int16Array, -32768, 32767],
  UINT16: [Uint16Array, 0, 65535],
  INT32: [Int32Array, -2147483648, 2147483647],
  UINT32: [Uint32Array, 0, 4294967295],
};

/**
 * Flattens nested arrays (row-major), without recursion: a body nested
 * thousands deep is a 400, not a stack overflow. Nesting deeper than the
 * shape's rank (a flat array is depth 1) is refused.
 */
function flatten(name: string, data: unknown[], maxDepth: number): unknown[] {
  const out: unknown[] = [];
  const stack: { items: unknown[]; next: number }[] = [{ items: data, next: 0 }];
  while (stack.length > 0) {
    const top = stack[stack.length - 1];
    if (top.next >= top.items.length) {
      stack.pop();
      continue;
    }
    const v = top.items[top.next++];
    if (!Array.isArray(v)) out.push(v);
    else if (stack.length >= maxDepth) throw invalid(`input '${name}': 'data' is nested deeper than its shape's ${maxDepth} dimensions`);
    else stack.push({ items: v, next: 0 });
  }
  return out;
}

/** Encodes a JSON `data` array (flat or nested) into raw little-endian bytes. */
export function tensorFromJson(name: string, datatype: DataType, shape: number[], data: unknown): Tensor {
  if (!Array.isArray(data)) throw invalid(`input '${name}': 'data' must be an array`);
  const values = flatten(name, data, Math.max(1, shape.length));
  const count = elementCount(shape);
  if (values.length !== count) {
    throw invalid(`input '${name}': shape ${JSON.stringify(shape)} needs ${count} elements, 'data' has ${values.length}`);
  }
  const bad = (i: number, what: string) =>
    invalid(`input '${name}': element ${i} (${quote(values[i])}) is not ${what}`);
  const ints = INT_TYPES[datatype];
  let bytes: Buffer;
  if (ints) {
    const [Ctor, min, max] = ints;
    const arr = new Ctor(count);
    for (let i = 0; i < count; i++) {
      const v = values[i];
      if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw bad(i, `a ${datatype} integer`);
      arr[i] = v;
    }
    bytes = Buffer.from(arr.buffer);
  } else {
    switch (datatype) {
      case 'BOOL': {
        const arr = new Uint8Array(count);
        for (let i = 0; i < count; i++) {
          const v = values[i];
          if (v === true || v === 1) arr[i] = 1;
          else if (v !== false && v !== 0) throw bad(i, 'a boolean');
        }
        bytes = Buffer.from(arr.buffer);
        break;
      }
      case 'INT64':
      case 'UINT64': {
        const arr = datatype === 'INT64' ? new BigInt64Array(count) : new BigUint64Array(count);
        for (let i = 0; i < count; i++) {
          const v = values[i];
          let b: bigint;
          checkExact(v, `input '${name}': element ${i}`);
          if (typeof v === 'number' && Number.isSafeInteger(v)) b = BigInt(v);
          else if (typeof v === 'bigint') b = v; // exact, from json-body.ts
          else if (typeof v === 'string' && /^-?\d+$/.test(v)) b = BigInt(v);
          else throw bad(i, `a ${datatype} integer`);
          const ok = datatype === 'INT64' ? b >= -(1n << 63n) && b < 1n << 63n : b >= 0n && b < 1n << 64n;
          if (!ok) throw bad(i, `in the ${datatype} range`);
          arr[i] = b;
        }
        bytes = Buffer.from(arr.buffer);
        break;
      }
      case 'FP32':
      case 'FP64':
      case 'FP16':
      case 'BF16': {
        const arr = datatype === 'FP64' ? new Float64Array(count) : new Float32Array(count);
        for (let i = 0; i < count; i++) {
          const v = values[i];
          if (typeof v === 'number') arr[i] = v;
          else if (typeof v === 'bigint') arr[i] = Number(v); // a long integer literal, as JSON.parse would round it
          else throw bad(i, 'a number');
        }
        if (datatype === 'FP16' || datatype === 'BF16') {
          const half = new Uint16Array(count);
          const conv = datatype === 'FP16' ? f32ToF16 : f32ToBf16;
          for (let i = 0; i < count; i++) half[i] = conv(arr[i]);
          bytes = Buffer.from(half.buffer);
        } else bytes = Buffer.from(arr.buffer);
        break;
      }
      case 'BYTES': {
        for (let i = 0; i < count; i++) if (typeof values[i] !== 'string') throw bad(i, 'a string');
        bytes = encodeBytes(values as string[]);
        break;
      }
      default:
        throw invalid(`input '${name}': unsupported datatype ${datatype}`);
    }
  }
  return { name, datatype, shape, data: bytes };
}

/** A typed view of the bytes; copies only when the buffer is not aligned for the element size. */
function view<T>(data: Buffer, size: number, make: (ab: ArrayBufferLike, off: number, len: number) => T): T {
  const len = data.length / size;
  if (data.byteOffset % size === 0) return make(data.buffer, data.byteOffset, len);
  const copy = new Uint8Array(data);
  return make(copy.buffer, 0, len);
}

const MIN_SAFE = BigInt(Number.MIN_SAFE_INTEGER);
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** A 64-bit value as a number when a double holds it exactly, else as the bigint (written digit for digit by json-body.ts). */
const exactInteger = (b: bigint): number | bigint => (b >= MIN_SAFE && b <= MAX_SAFE ? Number(b) : b);

/** Decodes raw bytes into a flat JSON array of numbers, booleans or strings. */
export function tensorToJson(t: Tensor): unknown[] {
  const d = t.data;
  switch (t.datatype) {
    case 'BOOL':
      return Array.from(d, (b) => b !== 0);
    case 'UINT8':
      return Array.from(d);
    case 'INT8':
      return Array.from(view(d, 1, (b, o, n) => new Int8Array(b, o, n)));
    case 'INT16':
      return Array.from(view(d, 2, (b, o, n) => new Int16Array(b, o, n)));
    case 'UINT16':
      return Array.from(view(d, 2, (b, o, n) => new Uint16Array(b, o, n)));
    case 'INT32':
      return Array.from(view(d, 4, (b, o, n) => new Int32Array(b, o, n)));
    case 'UINT32':
      return Array.from(view(d, 4, (b, o, n) => new Uint32Array(b, o, n)));
    case 'FP32':
      return Array.from(view(d, 4, (b, o, n) => new Float32Array(b, o, n)));
    case 'FP64':
      return Array.from(view(d, 8, (b, o, n) => new Float64Array(b, o, n)));
    case 'INT64':
      return Array.from(view(d, 8, (b, o, n) => new BigInt64Array(b, o, n)), exactInteger);
    case 'UINT64':
      return Array.from(view(d, 8, (b, o, n) => new BigUint64Array(b, o, n)), exactInteger);
    case 'FP16':
      return Array.from(view(d, 2, (b, o, n) => new Uint16Array(b, o, n)), f16ToF32);
    case 'BF16':
      return Array.from(view(d, 2, (b, o, n) => new Uint16Array(b, o, n)), bf16ToF32);
    case 'BYTES': {
      const count = elementCount(t.shape);
      const offsets = bytesOffsets(d, count);
      if (typeof offsets === 'string') throw new BrokerError('INTERNAL', `output '${t.name}': ${offsets}`);
      const out = new Array<string>(count);
      for (let i = 0; i < count; i++) out[i] = d.toString('utf8', offsets[i] + 4, offsets[i + 1]);
      return out;
    }
  }
}

export { elementSize };
