/**
 * A content-type parser that reads the body into one Buffer sized from
 * Content-Length: no chunk list, no concat, one copy of each byte. Chunked
 * bodies (no Content-Length) fall back to collecting chunks, under the limit.
 * A gzip or deflate Content-Encoding is undone after reading (media.ts), the
 * decoded size bounded by the same limit; other encodings are a 415.
 */
import type { FastifyRequest } from 'fastify';
import type { IncomingMessage } from 'node:http';
import { BrokerError } from '../../core/errors';
import { bodyEncoding, decodeBody, type BodyEncoding } from './media';

type Done = (err: Error | null, body?: Buffer) => void;

/** Wraps `done` so a complete body is decompressed (zlib's thread pool) before the handler sees it. */
function decoding(encoding: BodyEncoding, limit: number, done: Done): Done {
  return (err, body) => {
    if (err || !body) return done(err);
    decodeBody(body, encoding, limit).then((decoded) => done(null, decoded), (e: Error) => done(e));
  };
}

export function rawBodyParser(limit: number) {
  return (req: FastifyRequest, payload: IncomingMessage, rawDone: Done): void => {
    let encoding: BodyEncoding | undefined;
    try {
      encoding = bodyEncoding(req.headers['content-encoding']);
    } catch (e) {
      payload.resume();
      return rawDone(e as Error);
    }
    const done = encoding ? decoding(encoding, limit, rawDone) : rawDone;
    const tooLarge = () => new BrokerError('PAYLOAD_TOO_LARGE', `the body is larger than the limit of ${limit} bytes`);
    const declared = req.headers['content-length'];
    if (declared !== undefined) {
      const length = Number(declared);
      if (!Number.isInteger(length) || length < 0) return done(new BrokerError('INVALID_ARGUMENT', 'invalid Content-Length'));
      if (length > limit) {
        payload.resume(); // drain, so the connection can carry the 413
        return done(tooLarge());
      }
      const body = Buffer.allocUnsafe(length);
      let offset = 0;
      payload.on('data', (chunk: Buffer) => {
        if (offset + chunk.length > length) {
          payload.removeAllListeners('data');
          payload.resume();
          offset = -1;
          return done(new BrokerError('INVALID_ARGUMENT', 'the body is longer than its Content-Length'));
        }
        chunk.copy(body, offset);
        offset += chunk.length;
      });
      payload.on('end', () => {
        if (offset === -1) return;
        if (offset !== length) return done(new BrokerError('INVALID_ARGUMENT', 'the body is shorter than its Content-Length'));
        done(null, body);
      });
      payload.on('error', (e) => done(e));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    payload.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        payload.removeAllListeners('data');
        payload.resume();
        return done(tooLarge());
      }
      chunks.push(chunk);
    });
    payload.on('end', () => {
      if (size <= limit) done(null, Buffer.concat(chunks, size));
    });
    payload.on('error', (e) => done(e));
  };
}
