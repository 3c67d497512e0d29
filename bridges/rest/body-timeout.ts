/**
 * Request-body timeouts. A client that sends its body slowly (or stops)
 * would otherwise hold its connection, and what it has sent, for as long as it
 * likes: 20 such bodies held 1.2 GB for 150 s. A body must keep arriving (no
 * gap longer than `idleMs`) and be complete within `totalMs`.
 */
import type { IncomingMessage } from 'node:http';

export interface BodyTimeouts {
  /** Longest gap between two pieces of the body. */
  idleMs: number;
  /** Longest time to receive the whole body (0 = no limit: video uploads stream for as long as they last). */
  totalMs: number;
}

export const DEFAULT_BODY_TIMEOUTS: BodyTimeouts = { idleMs: 10_000, totalMs: 60_000 };

/** 408 Request Timeout: the answer closes the connection (the rest of the body is not awaited). */
export class RequestTimeout extends Error {
  readonly statusCode = 408;
  constructor(message: string) {
    super(message);
    this.name = 'RequestTimeout';
  }
}

export interface BodyWatch {
  /** The body made progress (called per chunk by readers that see the chunks). */
  touch(): void;
  stop(): void;
}

/**
 * Watches `req`'s body until it ends, the request closes or stop() is called;
 * calls `onTimeout` at most once. Progress is a touch() or, for bodies read by
 * others (multipart), the socket's byte count moving between two checks.
 */
export function watchBody(req: IncomingMessage, limits: BodyTimeouts, onTimeout: (err: RequestTimeout) => void): BodyWatch {
  const started = Date.now();
  let lastProgress = started;
  let bytesSeen = req.socket?.bytesRead ?? 0;
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;

  const stop = () => {
    stopped = true;
    if (timer) clearTimeout(timer);
    timer = undefined;
    req.off('end', stop);
    req.off('close', stop);
  };
  const check = () => {
    timer = undefined;
    if (stopped) return;
    const now = Date.now();
    const bytes = req.socket?.bytesRead ?? bytesSeen;
    if (bytes !== bytesSeen) {
      bytesSeen = bytes;
      lastProgress = now;
    }
    if (limits.totalMs > 0 && now - started >= limits.totalMs) {
      stop();
      return onTimeout(new RequestTimeout(`the request body was not complete within ${limits.totalMs} ms`));
    }
    if (now - lastProgress >= limits.idleMs) {
      stop();
      return onTimeout(new RequestTimeout(`no part of the request body arrived for ${limits.idleMs} ms`));
    }
    schedule(now);
  };
  const schedule = (now: number) => {
    let due = lastProgress + limits.idleMs;
    if (limits.totalMs > 0) due = Math.min(due, started + limits.totalMs);
    timer = setTimeout(check, Math.max(1, due - now));
    timer.unref();
  };

  if (req.complete) stopped = true;
  else {
    req.once('end', stop);
    req.once('close', stop);
    schedule(started);
  }
  return {
    touch: () => {
      lastProgress = Date.now();
    },
    stop,
  };
}
