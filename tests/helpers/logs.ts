/** A pino logger whose lines are kept for assertions. */
import { Writable } from 'node:stream';
import pino, { type Logger } from 'pino';

export function captureLogger(): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(chunk.toString());
      cb();
    },
  });
  return { logger: pino({ level: 'debug' }, stream), lines };
}
