/** Tensors as they travel inside the broker: raw little-endian, row-major bytes. */

export const DATATYPES = [
  'BOOL', 'UINT8', 'UINT16', 'UINT32', 'UINT64', 'INT8', 'INT16', 'INT32', 'INT64',
  'FP16', 'FP32', 'FP64', 'BYTES', 'BF16',
] as const;

export type DataType = (typeof DATATYPES)[number];

/** Bytes per element; BYTES is variable (4-byte length prefix + bytes) and has none. */
const ELEMENT_SIZE: Record<Exclude<DataType, 'BYTES'>, number> = {
  BOOL: 1, UINT8: 1, INT8: 1,
  UINT16: 2, INT16: 2, FP16: 2, BF16: 2,
  UINT32: 4, INT32: 4, FP32: 4,
  UINT64: 8, INT64: 8, FP64: 8,
};

export interface Tensor {
  name: string;
  datatype: DataType;
  /** Full shape, batch dimension first for batching models. */
  shape: number[];
  /** Raw bytes. For BYTES: each element is a uint32 LE length followed by that many bytes. */
  data: Buffer;
}

/** The declared form of a model input or output (-1 = any size). */
export interface TensorSpec {
  name: string;
  datatype: DataType;
  shape: number[];
  optional?: boolean;
  /** Class labels of an output, by index (Triton's label file): classification answers "value:index:label". */
  labels?: string[];
}

export function isDataType(s: unknown): s is DataType {
  return typeof s === 'string' && (DATATYPES as readonly string[]).includes(s);
}

export function elementSize(dt: DataType): number | undefined {
  return dt === 'BYTES' ? undefined : ELEMENT_SIZE[dt];
}

export function elementCount(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/**
 * Walks the length prefixes of a BYTES tensor's `count` elements, calling
 * `each(i, start)` with where element i's prefix starts; returns an error
 * string, or undefined when the elements exactly fill `data`.
 */
function walkBytes(data: Buffer, count: number, each?: (i: number, start: number) => void): string | undefined {
  let pos = 0;
  for (let i = 0; i < count; i++) {
    if (pos + 4 > data.length) return `BYTES element ${i} is truncated`;
    each?.(i, pos);
    pos += 4 + data.readUInt32LE(pos);
    if (pos > data.length) return `BYTES element ${i} is truncated`;
  }
  if (pos !== data.length) return `BYTES data has ${data.length - pos} trailing bytes`;
  return undefined;
}

/** Encodes BYTES elements (strings as UTF-8): each a uint32 LE length followed by the bytes, in one buffer. */
export function encodeBytes(items: ReadonlyArray<string | Uint8Array>): Buffer {
  const parts = items.map((x) => (typeof x === 'string' ? Buffer.from(x, 'utf8') : Buffer.from(x.buffer, x.byteOffset, x.byteLength)));
  const out = Buffer.allocUnsafe(parts.reduce((n, p) => n + 4 + p.length, 0));
  let pos = 0;
  for (const p of parts) {
    out.writeUInt32LE(p.length, pos);
    p.copy(out, pos + 4);
    pos += 4 + p.length;
  }
  return out;
}

/**
 * Byte offsets of each element of a BYTES tensor, or an error string.
 * offsets[i] is where element i's length prefix starts; offsets[count] = data.length.
 */
export function bytesOffsets(data: Buffer, count: number): number[] | string {
  const offsets = new Array<number>(count + 1);
  const err = walkBytes(data, count, (i, start) => (offsets[i] = start));
  if (err) return err;
  offsets[count] = data.length;
  return offsets;
}

/** Checks that `data` holds exactly the elements `shape` asks for; returns an error or undefined. */
export function checkTensorData(t: Tensor, role: 'input' | 'output' = 'input'): string | undefined {
  for (const d of t.shape) {
    if (!Number.isInteger(d) || d < 0) return `${role} '${t.name}': shape ${JSON.stringify(t.shape)} has an invalid dimension`;
  }
  const count = elementCount(t.shape);
  const size = elementSize(t.datatype);
  if (size === undefined) {
    const err = walkBytes(t.data, count); // checks only: no offsets array per request
    return err ? `${role} '${t.name}': ${err} (shape ${JSON.stringify(t.shape)})` : undefined;
  }
  if (t.data.length !== count * size) {
    return `${role} '${t.name}': shape ${JSON.stringify(t.shape)} of ${t.datatype} needs ${count * size} bytes, got ${t.data.length}`;
  }
  return undefined;
}

/**
 * Rows [from, from + rows) of a tensor along its first dimension, as a view (no copy).
 */
export function sliceRows(t: Tensor, from: number, rows: number): Tensor {
  const rowShape = t.shape.slice(1);
  const perRow = elementCount(rowShape);
  const size = elementSize(t.datatype);
  let data: Buffer;
  if (size !== undefined) {
    const rowBytes = perRow * size;
    data = t.data.subarray(from * rowBytes, (from + rows) * rowBytes);
  } else {
    const offsets = bytesOffsets(t.data, elementCount(t.shape));
    if (typeof offsets === 'string') throw new Error(`output '${t.name}': ${offsets}`);
    data = t.data.subarray(offsets[from * perRow], offsets[(from + rows) * perRow]);
  }
  return { name: t.name, datatype: t.datatype, shape: [rows, ...rowShape], data };
}
