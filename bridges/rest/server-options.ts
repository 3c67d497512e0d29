/**
 * Fastify factory options the REST bridge needs, so that every answer,
 * including the ones fastify and Node make before a route runs, has the KServe
 * form `{"error": "..."}`. app/server.ts spreads these into Fastify().
 */
import http from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyError, FastifyReply, FastifyRequest, FastifyServerOptions } from 'fastify';
import { truncate } from '../shared/truncate';

/**
 * Longest path parameter fastify routes (its default, 100, is below the
 * registry's 128-character model names and answered 414 in fastify's format).
 */
export const MAX_PARAM_LENGTH = 1024;

/** A bad URL or an over-long parameter: fastify's framework errors, in the KServe form. */
function frameworkErrors(err: FastifyError, _req: FastifyRequest, reply: FastifyReply): void {
  const status = typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 600 ? err.statusCode : 400;
  reply.code(status).type('application/json').send({ error: truncate(err.message, 300) });
}

/** Errors Node's HTTP parser raises before there is a request (bad request line, headers too large, header timeout). */
function clientErrorHandler(err: NodeJS.ErrnoException, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  let status = 400;
  let message = `malformed HTTP request (${err.code ?? 'parse error'})`;
  if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
    status = 408;
    message = 'the request was not received in time';
  } else if (err.code === 'HPE_HEADER_OVERFLOW') {
    status = 431;
    message = 'the request headers are larger than the limit';
  }
  const body = JSON.stringify({ error: message });
  if (socket.writable) {
    socket.write(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
      `Content-Type: application/json\r\nConnection: close\r\n\r\n${body}`);
  }
  socket.destroy(err);
}

export function restServerOptions(): Pick<FastifyServerOptions, 'routerOptions' | 'frameworkErrors' | 'clientErrorHandler' | 'return503OnClosing'> {
  return {
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
    // While closing, fastify would answer requests on open keep-alive connections with its own
    // 503 body; the routes answer instead (the broker says "shutting down" in the KServe form).
    return503OnClosing: false,
    frameworkErrors,
    clientErrorHandler,
  };
}
