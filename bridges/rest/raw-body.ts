/**
 * A content-type parser that reads the body into one Buffer sized from
 * Content-Length: no chunk list, no concat, one copy of each byte. Chunked
 * bodies (no Content-Length) fall back to collecting chunks, under the limit.
 */
import type { FastifyRequest } from 'fastify';
import type { IncomingMessage } from 'node:http';
import { BrokerError } from '../../core/errors';

type Done = (err: Error | null, body?: Buffer) => void;

export function rawBodyParser(limit: number) {
  return (req: FastifyRequest, payload: IncomingMessage, done: Done): void => {
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
