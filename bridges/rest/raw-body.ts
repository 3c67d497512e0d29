/**
 * A content-type parser that reads the body into one Buffer. A body of up to
 * 1 MiB declared by Content-Length is read into a Buffer of that size (one
 * copy of each byte); a larger one is collected as it arrives and joined at
 * the end, so a client announcing 64 MB and sending slowly holds only what it
 * has sent. The body must keep coming (body-timeout.ts: 408 otherwise).
 * A gzip or deflate Content-Encoding is undone after reading (media.ts), the
 * decoded size bounded by the same limit; other encodings are a 415.
 *
 * Fast path: a body that arrived whole with its headers (most small JSON
 * requests) is taken from the stream at once, with no listeners and no timer.
 * With a pool, bodies of the pool's sizes are read into a lent slab
 * (body-pool.ts); whoever receives such a body must release it.
 */
import type { FastifyRequest } from 'fastify';
import type { IncomingMessage } from 'node:http';
import { BrokerError } from '../../core/errors';
import { bodyEncoding, decodeBody, type BodyEncoding } from './media';
import { DEFAULT_BODY_TIMEOUTS, watchBody, type BodyTimeouts } from './body-timeout';
import type { BodyPool, PooledBody } from './body-pool';

export interface RawBodyPooling {
  pool: BodyPool;
  /** Which requests may get a lent body (their handler releases it). */
  wants(req: FastifyRequest): boolean;
}

/** Bodies up to this size (by Content-Length) are read into one Buffer allocated up front. */
const PREALLOCATE_MAX = 1024 * 1024;

type Done = (err: Error | null, body?: Buffer) => void;

const tooLarge = (limit: number) => new BrokerError('PAYLOAD_TOO_LARGE', `the body is larger than the limit of ${limit} bytes`);

/** Refused before reading: drain the body so the connection can carry the error. */
function fail(payload: IncomingMessage, done: Done, err: Error): void {
  payload.resume();
  done(err);
}

/** Wraps `done` so a complete body is decompressed (zlib's thread pool) before the handler sees it. */
function decoding(encoding: BodyEncoding, limit: number, done: Done): Done {
  return (err, body) => {
    if (err || !body) return done(err);
    decodeBody(body, encoding, limit).then((decoded) => done(null, decoded), (e: Error) => done(e));
  };
}

export function rawBodyParser(limit: number, timeouts: BodyTimeouts = DEFAULT_BODY_TIMEOUTS, pooling?: RawBodyPooling) {
  return (req: FastifyRequest, payload: IncomingMessage, rawDone: Done): void => {
    let encoding: BodyEncoding | undefined;
    try {
      encoding = bodyEncoding(req.headers['content-encoding']);
    } catch (e) {
      payload.resume();
      return rawDone(e as Error);
    }
    const declared = req.headers['content-length'];
    let length = -1;
    if (declared !== undefined) {
      length = Number(declared);
      if (!Number.isInteger(length) || length < 0) return fail(payload, rawDone, new BrokerError('INVALID_ARGUMENT', 'invalid Content-Length'));
      if (length > limit) return fail(payload, rawDone, tooLarge(limit));
    }
    // Compressed bodies are decoded into a new buffer: only plain ones are lent a slab.
    const lease: PooledBody | undefined = length > 0 && !encoding && pooling?.wants(req) ? pooling.pool.take(length) : undefined;
    if (!lease && length > 0 && payload.complete && payload.readableLength === length) {
      // Arrived whole: nothing to wait for, so no listeners and no body timer.
      const body = payload.read() as Buffer | null;
      if (body && body.length === length) return encoding ? decoding(encoding, limit, rawDone)(null, body) : rawDone(null, body);
      return fail(payload, rawDone, new BrokerError('INVALID_ARGUMENT', 'the body does not match its Content-Length'));
    }
    let finished = false;
    const toDone = encoding ? decoding(encoding, limit, rawDone) : rawDone;
    // A lent slab is given back on failure; on success the handler holds it.
    const decoded: Done = !lease ? toDone : (err, body) => {
      if (err) lease.release();
      toDone(err, body);
    };
    // Exactly one answer, whichever of end, error, limit or timeout comes first.
    const done: Done = (err, body) => {
      if (finished) return;
      finished = true;
      watch.stop();
      if (err) {
        payload.removeListener('data', onData);
        payload.resume(); // drain, so the connection can carry the error (a 408 closes it)
      }
      decoded(err, body);
    };
    const watch = watchBody(payload, timeouts, (e) => done(e));
    const whole = lease ? lease.bytes : length >= 0 && length <= PREALLOCATE_MAX ? Buffer.allocUnsafe(length) : undefined;
    const chunks: Buffer[] = [];
    let size = 0;
    function onData(chunk: Buffer): void {
      watch.touch();
      if (length >= 0 && size + chunk.length > length) return done(new BrokerError('INVALID_ARGUMENT', 'the body is longer than its Content-Length'));
      if (size + chunk.length > limit) return done(tooLarge(limit));
      if (whole) chunk.copy(whole, size);
      else chunks.push(chunk);
      size += chunk.length;
    }
    payload.on('data', onData);
    payload.on('end', () => {
      if (length >= 0 && size !== length) return done(new BrokerError('INVALID_ARGUMENT', 'the body is shorter than its Content-Length'));
      done(null, whole ?? Buffer.concat(chunks, size));
    });
    payload.on('error', (e) => done(e));
  };
}
