/**
 * The model repository extension (Triton/KServe): index, load, unload. The
 * models themselves are configured in models.yaml or through /admin; these
 * calls only start and stop their copies.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { BrokerApi } from '../../core/broker';
import { BrokerError } from '../../core/errors';
import { configOverridePatch, currentConfig, refuseFileParameters } from '../shared/config-override';

const invalid = (msg: string) => new BrokerError('INVALID_ARGUMENT', msg);

/** An optional JSON object body ({} when there is none). */
function optionalObject(req: FastifyRequest): Record<string, unknown> {
  const body = req.body;
  if (body === undefined || body === null || (Buffer.isBuffer(body) && body.length === 0)) return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.isBuffer(body) ? body.toString('utf8') : String(body));
  } catch (e) {
    throw invalid(`the body is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw invalid('the body must be a JSON object');
  return parsed as Record<string, unknown>;
}

type ModelParams = { Params: { model: string } };

export function repositoryRoutes(app: FastifyInstance, broker: BrokerApi): void {
  app.post('/v2/repository/index', async (req) => {
    const { ready } = optionalObject(req);
    if (ready !== undefined && typeof ready !== 'boolean') throw invalid("'ready' must be a boolean");
    const index = broker.repositoryIndex();
    return ready ? index.filter((e) => e.state === 'READY') : index;
  });

  app.post<ModelParams>('/v2/repository/models/:model/load', async (req) => {
    const { parameters } = optionalObject(req);
    const model = req.params.model;
    if (parameters !== undefined && parameters !== null) {
      if (typeof parameters !== 'object' || Array.isArray(parameters)) throw invalid("'parameters' must be an object");
      const params = parameters as Record<string, unknown>;
      refuseFileParameters(Object.keys(params));
      if (params.config !== undefined) {
        const config = params.config;
        if (typeof config !== 'string') throw invalid("load parameter 'config' must be a string (the model config as JSON)");
        await broker.configureModel(model, () => configOverridePatch(model, config, currentConfig(broker, model)), req.headers.authorization);
      }
    }
    await broker.loadModel(model);
    return {};
  });

  app.post<ModelParams>('/v2/repository/models/:model/unload', async (req) => {
    optionalObject(req); // unload_dependents and the like: accepted, nothing depends on a model here
    await broker.unloadModel(req.params.model);
    return {};
  });
}
