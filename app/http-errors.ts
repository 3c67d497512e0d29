/**
 * The one place HTTP answers are made from errors, for the REST bridge and the
 * admin API alike: {"error": "..."} with the status of the error's code
 * (BrokerError, core/errors.ts HTTP_STATUS), fastify's own status for its
 * errors (body too large, bad JSON, schema validation), else 500. Handlers
 * throw; none answers an error by itself.
 */
import type { FastifyError, FastifyInstance, FastifyReply } from 'fastify';
import { BrokerError, HTTP_STATUS } from '../core/errors';

/** The HTTP status of any thrown error. */
export function httpStatus(err: unknown): number {
  if (err instanceof BrokerError) return HTTP_STATUS[err.code];
  const status = (err as Partial<FastifyError> | undefined)?.statusCode;
  return typeof status === 'number' && status >= 400 && status < 600 ? status : 500;
}

/** Writes the error answer (Retry-After when the error says when to try again). */
export function sendHttpError(reply: FastifyReply, err: unknown): FastifyReply {
  const status = httpStatus(err);
  if (err instanceof BrokerError && err.retryAfterMs !== undefined) {
    reply.header('Retry-After', String(Math.max(1, Math.ceil(err.retryAfterMs / 1000))));
  }
  const message = err instanceof Error ? err.message : String(err);
  return reply.code(status).type('application/json').send({ error: message });
}

export function installErrorHandlers(app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError | BrokerError, req, reply) => {
    const status = httpStatus(err);
    const model = (req.params as { model?: string; name?: string } | undefined)?.model ?? (req.params as { name?: string } | undefined)?.name;
    if (status >= 500 && status !== 503) req.log.error({ model, err, status }, 'request failed');
    else req.log.info({ model, code: err instanceof BrokerError ? err.code : err.code, reason: err.message, status }, 'request rejected');
    return sendHttpError(reply, err);
  });
  app.setNotFoundHandler((req, reply) => {
    reply.code(404).send({ error: `no route for ${req.method} ${req.url.split('?')[0]}` });
  });
}
