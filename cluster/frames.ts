/**
 * The body of a forwarded request and of its answer: the ZeroMQ client
 * protocol's frames (proto/client.proto: a protobuf header, then one raw frame
 * per tensor), each preceded by its length (4 bytes, big-endian), in one HTTP
 * body. Tensor bytes are neither converted nor copied on decode (views).
 */
import { ClientDecodeError } from '../proto/client';

export const FRAMES_TYPE = 'application/x-tensorbroker-frames';

/** Length-prefixed frames as a list of buffers to write (the frames themselves are not copied). */
export function frameBody(frames: readonly Buffer[]): Buffer[] {
  const out: Buffer[] = [];
  for (const f of frames) {
    const len = Buffer.allocUnsafe(4);
    len.writeUInt32BE(f.length, 0);
    out.push(len, f);
  }
  return out;
}

/** Splits a body into its frames (views of `body`); ClientDecodeError when truncated. */
export function splitFrames(body: Buffer, maxFrames: number): Buffer[] {
  const frames: Buffer[] = [];
  let pos = 0;
  while (pos < body.length) {
    if (frames.length >= maxFrames) throw new ClientDecodeError(`more than ${maxFrames} frames`);
    if (pos + 4 > body.length) throw new ClientDecodeError('truncated frame length');
    const len = body.readUInt32BE(pos);
    pos += 4;
    if (pos + len > body.length) throw new ClientDecodeError(`frame ${frames.length} is truncated (${len} bytes announced, ${body.length - pos} left)`);
    frames.push(body.subarray(pos, pos + len));
    pos += len;
  }
  return frames;
}
