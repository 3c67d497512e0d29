/**
 * Encoding of link messages into ZeroMQ frames and back:
 * [Envelope, tensor frame, tensor frame, ...]. Tensor frames pass through
 * untouched (no copy on send; decoded frames are the received buffers).
 */
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import {
  EnvelopeSchema,
  TensorMetaSchema,
  type Envelope,
  type TensorMeta,
} from './gen/link_pb';
import { elementCount, elementSize, isDataType, type Tensor } from './tensor';

export * from './gen/link_pb';

/** 2: decoupled models (READY decoupled, Response), whole batches, timed RESULT; version 1 copies still work. */
export const PROTOCOL_VERSION = 2;

/** Upper bound on the envelope frame, so a garbage frame can't make us allocate much. */
export const MAX_ENVELOPE_BYTES = 1 << 20;

export type EnvelopeKind = NonNullable<Envelope['kind']['case']>;

export function toMeta(t: Tensor): TensorMeta {
  return create(TensorMetaSchema, { name: t.name, datatype: t.datatype, shape: t.shape.map(BigInt) });
}

/** Encodes an envelope plus the tensors its message lists, in order. */
export function encodeFrames(kind: Envelope['kind'], tensors: readonly Tensor[] = []): Buffer[] {
  const env = create(EnvelopeSchema, { kind });
  const head = toBinary(EnvelopeSchema, env);
  const frames: Buffer[] = [Buffer.from(head.buffer, head.byteOffset, head.byteLength)];
  for (const t of tensors) frames.push(t.data);
  return frames;
}

export interface DecodedMessage {
  envelope: Envelope;
  /** Raw frames after the envelope. */
  frames: Buffer[];
}

export class LinkDecodeError extends Error {}

export function decodeFrames(frames: Buffer[]): DecodedMessage {
  if (frames.length === 0) throw new LinkDecodeError('empty message');
  const head = frames[0];
  if (head.length > MAX_ENVELOPE_BYTES) throw new LinkDecodeError(`envelope of ${head.length} bytes is too large`);
  let envelope: Envelope;
  try {
    envelope = fromBinary(EnvelopeSchema, head);
  } catch (e) {
    throw new LinkDecodeError(`bad envelope: ${(e as Error).message}`);
  }
  if (envelope.kind.case === undefined) throw new LinkDecodeError('envelope has no message');
  return { envelope, frames: frames.slice(1) };
}

/** A name for error messages: bounded, whatever the peer sent. */
function shown(name: string): string {
  return name.length > 100 ? `${name.slice(0, 100)}…` : name;
}

const MAX_DIM = BigInt(Number.MAX_SAFE_INTEGER);

/**
 * Pairs tensor metadata with its frames, checking the count, datatype, that each
 * dimension is a safe non-negative integer and, for fixed-size datatypes, that the
 * frame holds exactly elements × size bytes (BYTES frames: see checkTensorData).
 */
export function tensorsFromFrames(metas: readonly TensorMeta[], frames: readonly Buffer[]): Tensor[] {
  if (metas.length !== frames.length) {
    throw new LinkDecodeError(`${metas.length} tensors described but ${frames.length} frames sent`);
  }
  return metas.map((m, i) => {
    if (!isDataType(m.datatype)) throw new LinkDecodeError(`tensor '${shown(m.name)}': unknown datatype '${shown(m.datatype)}'`);
    const shape = m.shape.map((d) => {
      if (d < 0n || d > MAX_DIM) throw new LinkDecodeError(`tensor '${shown(m.name)}': dimension ${d} is out of range`);
      return Number(d);
    });
    const size = elementSize(m.datatype);
    if (size !== undefined) {
      const need = elementCount(shape) * size;
      if (frames[i].length !== need) {
        throw new LinkDecodeError(`tensor '${shown(m.name)}': shape [${shape.join(',')}] of ${m.datatype} needs ${need} bytes, the frame has ${frames[i].length}`);
      }
    }
    return { name: m.name, datatype: m.datatype, shape, data: frames[i] };
  });
}
