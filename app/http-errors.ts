/** The one place HTTP answers are made from errors: {"error": "..."} with the right status. */
import type { FastifyError, FastifyInstance } from 'fastify';
import { BrokerError, HTTP_STATUS } from '../core/errors';

export function installErrorHandlers(app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError | BrokerError, req, reply) => {
    let status: number;
    if (err instanceof BrokerError) {
      status = HTTP_STATUS[err.code];
      if (err.retryAfterMs !== undefined) reply.header('Retry-After', String(Math.max(1, Math.ceil(err.retryAfterMs / 1000))));
    } else if (typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 600) {
      status = err.statusCode;
    } else {
      status = 500;
    }
    const model = (req.params as { model?: string } | undefined)?.model;
    if (status >= 500 && status !== 503) req.log.error({ model, err: err.message, status }, 'request failed');
    else req.log.info({ model, err: err.message, status }, 'request rejected');
    reply.code(status).type('application/json').send({ error: err.message });
  });
  app.setNotFoundHandler((req, reply) => {
    reply.code(404).send({ error: `no route for ${req.method} ${req.url.split('?')[0]}` });
  });
}
