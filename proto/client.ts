/**
 * Encoding of the ZeroMQ client protocol (client.proto) into frames and back:
 * [header, tensor frame, tensor frame, ...]. Shared by the bridge
 * (bridges/zmq) and the Node client (sdk/node/zmq-client.ts). Tensor frames
 * pass through untouched: no copy on send, decoded tensors are views of the
 * received frames.
 */
import { create, fromBinary, toBinary, type DescMessage, type MessageShape } from '@bufbuild/protobuf';
import {
  InferParameterSchema,
  TensorMetaSchema,
  type InferParameter,
  type TensorMeta,
} from './gen/client_pb';
import { isDataType, type Tensor } from './tensor';

export * from './gen/client_pb';

export const CLIENT_PROTOCOL_VERSION = 1;

/** Upper bound on a header frame, so a garbage frame can't make a decoder allocate much. */
export const MAX_HEADER_BYTES = 1 << 20;

/** What a request parameter may hold on the TypeScript side. */
export type ParameterValue = boolean | number | bigint | string;

export class ClientDecodeError extends Error {}

export function toMeta(t: Tensor): TensorMeta {
  return create(TensorMetaSchema, { name: t.name, datatype: t.datatype, shape: t.shape.map(BigInt) });
}

/** Protobuf bytes as a Buffer view (no copy). */
export function asBuffer(u: Uint8Array): Buffer {
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

/** Encodes a header plus the tensors it lists, in order; the tensor frames are the tensors' own buffers. */
export function encodeFrames<D extends DescMessage>(schema: D, header: MessageShape<D>, tensors: readonly Tensor[] = []): Buffer[] {
  const frames: Buffer[] = [asBuffer(toBinary(schema, header))];
  for (const t of tensors) frames.push(t.data);
  return frames;
}

/** Decodes a header frame, bounded in size; throws ClientDecodeError. */
export function decodeHeader<D extends DescMessage>(schema: D, frame: Buffer | undefined): MessageShape<D> {
  if (frame === undefined) throw new ClientDecodeError('empty message: no header frame');
  if (frame.length > MAX_HEADER_BYTES) throw new ClientDecodeError(`header frame of ${frame.length} bytes is over the limit of ${MAX_HEADER_BYTES}`);
  try {
    return fromBinary(schema, frame);
  } catch (e) {
    throw new ClientDecodeError(`the header frame is not a valid ${schema.typeName}: ${(e as Error).message}`);
  }
}

/**
 * Pairs tensor metadata with its frames, checking count, name, datatype and
 * dimensions (byte sizes are checked by the broker, against the shape).
 */
export function tensorsFromFrames(metas: readonly TensorMeta[], frames: readonly Buffer[]): Tensor[] {
  if (metas.length !== frames.length) {
    throw new ClientDecodeError(`the header lists ${metas.length} tensors but ${frames.length} tensor frames were sent`);
  }
  return metas.map((m, i) => {
    if (m.name === '') throw new ClientDecodeError(`tensor ${i} has no name`);
    if (!isDataType(m.datatype)) throw new ClientDecodeError(`tensor '${m.name}': unknown datatype ${JSON.stringify(m.datatype)}`);
    const shape = m.shape.map((d) => {
      if (d < 0n || d > BigInt(Number.MAX_SAFE_INTEGER)) throw new ClientDecodeError(`tensor '${m.name}': invalid dimension ${d} in its shape`);
      return Number(d);
    });
    return { name: m.name, datatype: m.datatype, shape, data: frames[i] };
  });
}

/** Plain values → protobuf parameters. Integers (and bigints) become int64, other numbers double. */
export function parametersToProto(params: Record<string, ParameterValue> | undefined): Record<string, InferParameter> {
  const out: Record<string, InferParameter> = {};
  for (const [key, v] of Object.entries(params ?? {})) {
    let choice: InferParameter['parameterChoice'];
    if (typeof v === 'boolean') choice = { case: 'boolParam', value: v };
    else if (typeof v === 'bigint') choice = { case: 'int64Param', value: v };
    else if (typeof v === 'string') choice = { case: 'stringParam', value: v };
    else if (typeof v === 'number' && Number.isSafeInteger(v)) choice = { case: 'int64Param', value: BigInt(v) };
    else if (typeof v === 'number') choice = { case: 'doubleParam', value: v };
    else throw new TypeError(`parameter '${key}': unsupported value type ${typeof v}`);
    out[key] = create(InferParameterSchema, { parameterChoice: choice });
  }
  return out;
}

/** Protobuf parameters → plain values (int64 stays a bigint), as bridges/shared/parameters.ts expects. */
export function parametersFromProto(params: Record<string, InferParameter>): Record<string, ParameterValue | undefined> {
  const out: Record<string, ParameterValue | undefined> = {};
  for (const [key, p] of Object.entries(params)) out[key] = p.parameterChoice.value;
  return out;
}

/**
 * Best-effort read of field 1 (the request id, a string) from a header frame
 * that failed to decode or was refused before decoding, so that the error
 * reply can still carry the id. Walks top-level fields only; returns '' when
 * the id can't be found.
 */
export function peekId(buf: Buffer | undefined): string {
  if (!buf) return '';
  let pos = 0;
  const varint = (): number | undefined => {
    let v = 0;
    for (let shift = 0; shift < 35; shift += 7) {
      if (pos >= buf.length) return undefined;
      const b = buf[pos++];
      v += (b & 0x7f) * 2 ** shift;
      if ((b & 0x80) === 0) return v;
    }
    return undefined;
  };
  for (let fields = 0; fields < 64 && pos < buf.length; fields++) {
    const tag = varint();
    if (tag === undefined) return '';
    const field = Math.floor(tag / 8);
    const wire = tag & 7;
    if (wire === 0) {
      if (varint() === undefined) return '';
    } else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else if (wire === 2) {
      const len = varint();
      if (len === undefined || pos + len > buf.length) return '';
      if (field === 1) {
        if (len > 256) return '';
        const s = buf.subarray(pos, pos + len).toString('utf8');
        return s.includes('\ufffd') ? '' : s;
      }
      pos += len;
    } else return '';
  }
  return '';
}
