/**
 * Tensors <-> one Buffer for Redis or the blob store: a 4-byte little-endian
 * header length, a JSON header ({name, datatype, shape, bytes} per tensor),
 * then the raw tensor bytes in order. No base64: inputs stay their size.
 */
import { BrokerError } from '../core/errors';
import { isDataType, type Tensor } from '../proto/tensor';

interface Head { name: string; datatype: string; shape: number[]; bytes: number }

export function encodeTensors(tensors: Tensor[]): Buffer {
  const head: Head[] = tensors.map((t) => ({ name: t.name, datatype: t.datatype, shape: t.shape, bytes: t.data.length }));
  const json = Buffer.from(JSON.stringify(head));
  const len = Buffer.alloc(4);
  len.writeUInt32LE(json.length);
  return Buffer.concat([len, json, ...tensors.map((t) => t.data)]);
}

export function decodeTensors(buf: Buffer): Tensor[] {
  const corrupt = (why: string) => new BrokerError('INTERNAL', `a stored job tensor block is corrupt: ${why}`);
  if (buf.length < 4) throw corrupt('too short');
  const hl = buf.readUInt32LE(0);
  if (4 + hl > buf.length) throw corrupt('header runs past the end');
  const head = JSON.parse(buf.toString('utf8', 4, 4 + hl)) as Head[];
  let offset = 4 + hl;
  const out = head.map((h) => {
    if (!isDataType(h.datatype) || offset + h.bytes > buf.length) throw corrupt(`tensor '${h.name}'`);
    // A copy, so the tensor does not pin the whole block (and survives its reuse).
    const data = Buffer.from(buf.subarray(offset, offset + h.bytes));
    offset += h.bytes;
    return { name: h.name, datatype: h.datatype, shape: h.shape, data };
  });
  if (offset !== buf.length) throw corrupt('trailing bytes');
  return out;
}
