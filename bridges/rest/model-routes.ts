/** Per-model KServe v2 routes other than infer: metadata, readiness, config, statistics, sequences. */
import type { FastifyInstance } from 'fastify';
import type { BrokerApi } from '../../core/broker';
import { BrokerError } from '../../core/errors';
import { tritonConfig, PLATFORM } from '../shared/model-config';
import { both } from './route-helpers';

export async function modelRoutes(app: FastifyInstance, opts: { broker: BrokerApi }): Promise<void> {
  const { broker } = opts;

  both(app, 'GET', '', async (req) => {
    const { model, version } = req.params;
    const meta = broker.metadata(model, version);
    return {
      name: model,
      versions: [meta.version || broker.describe(model).version],
      platform: PLATFORM,
      inputs: meta.inputs.map(({ name, datatype, shape }) => ({ name, datatype, shape })),
      outputs: meta.outputs.map(({ name, datatype, shape }) => ({ name, datatype, shape })),
    };
  });

  both(app, 'GET', '/ready', async (req, reply) => {
    const r = broker.modelReady(req.params.model, req.params.version);
    if (!r.ready) throw new BrokerError('UNAVAILABLE', `model '${req.params.model}' is not ready: ${r.reason ?? r.phase}`);
    return reply.code(200).send();
  });

  both(app, 'GET', '/config', async (req) => {
    return tritonConfig(broker.describe(req.params.model, req.params.version));
  });

  both(app, 'GET', '/stats', async (req) => ({ model_stats: broker.stats(req.params.model, req.params.version) }));

  // Not KServe: slots, active and backlogged sequences of a stateful model, ends by reason.
  both(app, 'GET', '/sequences', async (req) => broker.sequences(req.params.model, req.params.version));
}
