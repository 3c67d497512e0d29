/** Server-level KServe v2 routes: server metadata, liveness, readiness, all models' statistics. */
import type { FastifyInstance } from 'fastify';
import type { BrokerApi } from '../../core/broker';
import { BrokerError } from '../../core/errors';
import { EXTENSIONS } from '../shared/extensions';

export async function healthRoutes(app: FastifyInstance, opts: { broker: BrokerApi; version: string }): Promise<void> {
  const { broker } = opts;
  app.get('/v2', async () => ({ name: 'tensorbroker', version: opts.version, extensions: EXTENSIONS }));
  app.get('/v2/health/live', async (_req, reply) => reply.code(200).send());
  app.get('/v2/health/ready', async (_req, reply) => {
    const r = broker.ready();
    if (!r.ready) throw new BrokerError('UNAVAILABLE', r.reason ?? 'not ready');
    return reply.code(200).send();
  });
  app.get('/v2/models/stats', async () => ({ model_stats: broker.stats() }));
}
