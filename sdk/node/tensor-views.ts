/** Typed-array and ndarray views over tensors, and helpers to build output tensors. */
import ndarray from 'ndarray';
import {
  bytesOffsets, elementCount, elementSize, encodeBytes, type DataType, type Tensor,
} from '../../proto/tensor';

// Over ArrayBuffer (not SharedArrayBuffer), as ndarray's types want.
export type NumericArray =
  | Uint8Array<ArrayBuffer> | Int8Array<ArrayBuffer> | Uint16Array<ArrayBuffer> | Int16Array<ArrayBuffer>
  | Uint32Array<ArrayBuffer> | Int32Array<ArrayBuffer> | Float32Array<ArrayBuffer> | Float64Array<ArrayBuffer>
  | BigInt64Array<ArrayBuffer> | BigUint64Array<ArrayBuffer>;

type ArrayCtor = {
  new (buffer: ArrayBufferLike, byteOffset: number, length: number): NumericArray;
  new (length: number): NumericArray;
  BYTES_PER_ELEMENT: number;
};

// FP16/BF16 and BYTES have no JS typed array; callers use tensor.data for those.
const CTORS: Partial<Record<DataType, ArrayCtor>> = {
  BOOL: Uint8Array, UINT8: Uint8Array, INT8: Int8Array,
  UINT16: Uint16Array, INT16: Int16Array,
  UINT32: Uint32Array, INT32: Int32Array, FP32: Float32Array,
  UINT64: BigUint64Array, INT64: BigInt64Array, FP64: Float64Array,
};

function ctorFor(dt: DataType): ArrayCtor {
  const c = CTORS[dt];
  if (!c) throw new TypeError(`no typed array for datatype ${dt}; use tensor.data`);
  return c;
}

/**
 * The tensor's elements as a typed array. A view over tensor.data when its
 * offset is aligned (no copy), a copy otherwise. Assumes a little-endian host.
 */
export function typedArray(t: Tensor): NumericArray {
  const C = ctorFor(t.datatype);
  const size = C.BYTES_PER_ELEMENT;
  if (t.data.byteLength % size !== 0) throw new RangeError(`tensor '${t.name}': ${t.data.byteLength} bytes is not a whole number of ${t.datatype}`);
  const n = t.data.byteLength / size;
  if (t.data.byteOffset % size === 0) return new C(t.data.buffer, t.data.byteOffset, n);
  const copy = new C(n);
  new Uint8Array(copy.buffer).set(t.data);
  return copy;
}

/** The tensor as an ndarray with its shape (see typedArray for copy rules). */
export function asNdarray(t: Tensor): ndarray.NdArray<NumericArray> {
  const data = typedArray(t);
  if (data.length !== elementCount(t.shape)) {
    throw new RangeError(`tensor '${t.name}': shape ${JSON.stringify(t.shape)} does not match ${data.length} elements`);
  }
  return ndarray(data, [...t.shape]) as ndarray.NdArray<NumericArray>;
}

/** Builds a tensor over a typed array's bytes (no copy). */
export function tensorFrom(name: string, datatype: DataType, shape: number[], data: ArrayBufferView): Tensor {
  const size = elementSize(datatype);
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  if (size !== undefined && buf.length !== elementCount(shape) * size) {
    throw new RangeError(`tensor '${name}': shape ${JSON.stringify(shape)} of ${datatype} needs ${elementCount(shape) * size} bytes, got ${buf.length}`);
  }
  return { name, datatype, shape: [...shape], data: buf };
}

/** Builds a tensor from an ndarray; copies unless it is a plain row-major view. */
export function tensorFromNdarray(name: string, datatype: DataType, a: ndarray.NdArray<NumericArray>): Tensor {
  const shape = a.shape;
  let expect = 1;
  let rowMajor = true;
  for (let i = shape.length - 1; i >= 0; i--) {
    if (shape[i] > 1 && a.stride[i] !== expect) rowMajor = false;
    expect *= shape[i];
  }
  if (rowMajor) return tensorFrom(name, datatype, shape, a.data.subarray(a.offset, a.offset + a.size));
  const C = ctorFor(datatype);
  const out = new C(a.size);
  const idx = new Array<number>(shape.length).fill(0);
  for (let k = 0; k < a.size; k++) {
    (out as unknown as Array<number | bigint>)[k] = a.get(...idx);
    for (let d = shape.length - 1; d >= 0; d--) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
  return tensorFrom(name, datatype, shape, out);
}

export { encodeBytes };

/** Decodes BYTES elements as views into the data (no copy). */
export function decodeBytes(data: Buffer, count?: number): Buffer[] {
  if (count === undefined) {
    count = 0;
    for (let pos = 0; pos + 4 <= data.length; count++) pos += 4 + data.readUInt32LE(pos);
  }
  const offsets = bytesOffsets(data, count);
  if (typeof offsets === 'string') throw new RangeError(offsets);
  const out: Buffer[] = [];
  for (let i = 0; i < count; i++) out.push(data.subarray(offsets[i] + 4, offsets[i + 1]));
  return out;
}

/** A BYTES tensor's elements as buffers (views, no copy). */
export function bytesElements(t: Tensor): Buffer[] {
  return decodeBytes(t.data, elementCount(t.shape));
}

/** Builds a BYTES tensor; shape defaults to [items.length]. */
export function bytesTensor(name: string, items: ReadonlyArray<string | Uint8Array>, shape: number[] = [items.length]): Tensor {
  if (elementCount(shape) !== items.length) throw new RangeError(`tensor '${name}': shape ${JSON.stringify(shape)} does not hold ${items.length} elements`);
  return { name, datatype: 'BYTES', shape: [...shape], data: encodeBytes(items) };
}
