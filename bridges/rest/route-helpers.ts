/** Small pieces the REST route-group plugins share. */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';

export type ModelParams = { model: string; version?: string };

/** Registers `/v2/models/:model{path}` and its `/versions/:version` twin. */
export function both(app: FastifyInstance, method: 'GET' | 'POST', path: string, handler: (req: FastifyRequest<{ Params: ModelParams }>, reply: FastifyReply) => Promise<unknown>): void {
  app.route({ method, url: `/v2/models/:model${path}`, handler });
  app.route({ method, url: `/v2/models/:model/versions/:version${path}`, handler });
}

/** An AbortSignal that fires when the client goes away before its answer is sent. */
export function abortOnClose(reply: FastifyReply): AbortSignal {
  const aborted = new AbortController();
  reply.raw.on('close', () => {
    if (!reply.raw.writableFinished) aborted.abort();
  });
  return aborted.signal;
}
