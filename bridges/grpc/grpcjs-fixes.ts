/**
 * Two fixes to @grpc/grpc-js 1.14's server call (BaseServerInterceptingCall),
 * applied once when the bridge starts. Both are gaps of the library, with no
 * option to configure them:
 *
 * 1. Deadlines. grpc-js turns the `grpc-timeout` header into milliseconds with
 *    `| 0` (int32) and hands that to setTimeout: a deadline of 24.8 to 49.7 days
 *    wraps negative and the call fails at once with DEADLINE_EXCEEDED (and larger
 *    ones come out wrong). Here a timeout above 2^31-1 ms keeps its true value
 *    and the timer is re-armed in steps that setTimeout accepts.
 *
 * 2. Response compression. grpc-js servers never compress. Here a call whose
 *    request came compressed (grpc-encoding gzip or deflate, e.g. grpc-js
 *    `grpc.default_compression_algorithm`, tritonclient `compression_algorithm`)
 *    is answered in the same encoding: the client has shown it speaks it.
 *    Messages under COMPRESS_MIN_BYTES go uncompressed (the per-message flag allows it).
 *
 * The internals are checked first: if grpc-js changes them, nothing is patched
 * and the caller logs it (the bridge still works, without the two fixes).
 */
import zlib from 'node:zlib';
import { Metadata } from '@grpc/grpc-js';
import * as interceptors from '@grpc/grpc-js/build/src/server-interceptors';

export const MAX_TIMER_MS = 2 ** 31 - 1;
export const COMPRESS_MIN_BYTES = 1024;

const UNITS: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 0.001, n: 0.000001 };
const TIMEOUT = /(\d{1,8})\s*([HMSmun])/;

/** The private members of BaseServerInterceptingCall these fixes use. */
interface CallInternals {
  deadline: number;
  deadlineTimer: NodeJS.Timeout | null;
  incomingEncoding: string;
  handler: { serialize(value: unknown): Buffer };
  sendStatus(status: { code: number; details: string; metadata: null }): void;
  handleTimeoutHeader(header: string): void;
  serializeMessage(value: unknown): Buffer;
  sendMetadata(metadata?: Metadata): void;
}

let applied: boolean | undefined;

/** Applies the fixes (once); false when grpc-js does not look as expected. */
export function applyGrpcJsFixes(): boolean {
  if (applied !== undefined) return applied;
  const proto = (interceptors as unknown as { BaseServerInterceptingCall?: { prototype: CallInternals } }).BaseServerInterceptingCall?.prototype;
  if (!proto || typeof proto.handleTimeoutHeader !== 'function' || typeof proto.serializeMessage !== 'function' || typeof proto.sendMetadata !== 'function') {
    return (applied = false);
  }

  const handleTimeoutHeader = proto.handleTimeoutHeader;
  proto.handleTimeoutHeader = function (this: CallInternals, header: string) {
    const m = TIMEOUT.exec(String(header));
    const ms = m ? Number(m[1]) * UNITS[m[2]] : 0;
    if (!m || ms <= MAX_TIMER_MS) return handleTimeoutHeader.call(this, header);
    this.deadline = Date.now() + ms;
    const arm = () => {
      const left = this.deadline - Date.now();
      this.deadlineTimer = left > MAX_TIMER_MS
        ? setTimeout(arm, MAX_TIMER_MS)
        : setTimeout(() => this.sendStatus({ code: 4 /* DEADLINE_EXCEEDED */, details: 'Deadline exceeded', metadata: null }), Math.max(0, left));
    };
    arm();
  };

  const compressed = (call: CallInternals) => call.incomingEncoding === 'gzip' || call.incomingEncoding === 'deflate';

  const sendMetadata = proto.sendMetadata;
  proto.sendMetadata = function (this: CallInternals, metadata?: Metadata) {
    if (!compressed(this)) return sendMetadata.call(this, metadata);
    const md = metadata ? metadata.clone() : new Metadata();
    md.set('grpc-encoding', this.incomingEncoding);
    return sendMetadata.call(this, md);
  };

  const serializeMessage = proto.serializeMessage;
  proto.serializeMessage = function (this: CallInternals, value: unknown) {
    if (!compressed(this)) return serializeMessage.call(this, value);
    const raw = this.handler.serialize(value);
    if (raw.byteLength < COMPRESS_MIN_BYTES) {
      const out = Buffer.allocUnsafe(raw.byteLength + 5);
      out.writeUInt8(0, 0);
      out.writeUInt32BE(raw.byteLength, 1);
      raw.copy(out, 5);
      return out;
    }
    const z = this.incomingEncoding === 'gzip' ? zlib.gzipSync(raw) : zlib.deflateSync(raw);
    const out = Buffer.allocUnsafe(z.byteLength + 5);
    out.writeUInt8(1, 0); // compressed-flag
    out.writeUInt32BE(z.byteLength, 1);
    z.copy(out, 5);
    return out;
  };
  return (applied = true);
}
