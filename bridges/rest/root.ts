/**
 * GET / : a short pointer for someone who opens the broker's address in a
 * browser or with curl, instead of a bare 404.
 */
import type { FastifyPluginAsync } from 'fastify';

export interface RootRouteOptions { version: string }

export const rootRoute: FastifyPluginAsync<RootRouteOptions> = async (app, opts) => {
  const body = {
    name: 'tensorbroker',
    version: opts.version,
    kserve_v2: '/v2',
    endpoints: {
      server: 'GET /v2',
      live: 'GET /v2/health/live',
      ready: 'GET /v2/health/ready',
      models: 'POST /v2/repository/index',
      model: 'GET /v2/models/{name}',
      infer: 'POST /v2/models/{name}/infer',
      admin: 'GET /admin/models',
    },
    docs: { broker: 'README.md of the tensorbroker repository', protocol: 'https://github.com/kserve/open-inference-protocol' },
  };
  app.get('/', async () => body);
};
