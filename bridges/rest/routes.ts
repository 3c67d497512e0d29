/**
 * The KServe v2 REST bridge: health, metadata, config, statistics and infer.
 * It knows the broker's BrokerApi only.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { BrokerApi } from '../../core/broker';
import { BrokerError } from '../../core/errors';
import { tritonConfig, PLATFORM } from '../shared/model-config';
import { encodeInferResult, parseInferBody, splitBinaryBody } from './infer-body';
import { rawBodyParser } from './raw-body';

export interface RestOptions {
  broker: BrokerApi;
  version: string;
  /** Largest request body accepted, in bytes (413 beyond). */
  bodyLimit: number;
}

/** Extensions of the KServe v2 / Triton protocol this server implements. */
export const EXTENSIONS = ['binary_tensor_data', 'model_configuration', 'statistics', 'schedule_policy'];

type ModelParams = { model: string; version?: string };

/** Registers `path` and its `/versions/:version` twin. */
function both(app: FastifyInstance, method: 'GET' | 'POST', path: string, handler: (req: FastifyRequest<{ Params: ModelParams }>, reply: FastifyReply) => Promise<unknown>) {
  app.route({ method, url: `/v2/models/:model${path}`, handler });
  app.route({ method, url: `/v2/models/:model/versions/:version${path}`, handler });
}

export async function restRoutes(app: FastifyInstance, opts: RestOptions): Promise<void> {
  const { broker } = opts;

  // Every body arrives as one Buffer; JSON is parsed in the handler so the
  // binary extension and plain JSON share one path.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { bodyLimit: opts.bodyLimit }, rawBodyParser(opts.bodyLimit));

  app.get('/v2', async () => ({ name: 'tensorbroker', version: opts.version, extensions: EXTENSIONS }));
  app.get('/v2/health/live', async (_req, reply) => reply.code(200).send());
  app.get('/v2/health/ready', async (_req, reply) => {
    const r = broker.ready();
    if (!r.ready) throw new BrokerError('UNAVAILABLE', r.reason ?? 'not ready');
    return reply.code(200).send();
  });

  app.get('/v2/models/stats', async () => ({ model_stats: broker.stats() }));

  both(app, 'GET', '', async (req) => {
    const { model, version } = req.params;
    const meta = broker.metadata(model, version);
    return {
      name: model,
      versions: [meta.version || broker.spec(model).version],
      platform: PLATFORM,
      inputs: meta.inputs.map(({ name, datatype, shape }) => ({ name, datatype, shape })),
      outputs: meta.outputs.map(({ name, datatype, shape }) => ({ name, datatype, shape })),
    };
  });

  both(app, 'GET', '/ready', async (req, reply) => {
    const r = broker.modelReady(req.params.model, req.params.version);
    if (!r.ready) throw new BrokerError('UNAVAILABLE', `model '${req.params.model}' is not ready: ${r.reason ?? r.state ?? 'no ready copy'}`);
    return reply.code(200).send();
  });

  both(app, 'GET', '/config', async (req) => {
    const spec = broker.spec(req.params.model, req.params.version);
    let meta;
    try {
      meta = broker.metadata(req.params.model);
    } catch {
      meta = undefined; // not reported yet: the config still shows the registry's view
    }
    return tritonConfig(spec, meta);
  });

  both(app, 'GET', '/stats', async (req) => ({ model_stats: broker.stats(req.params.model, req.params.version) }));

  both(app, 'POST', '/infer', async (req, reply) => {
    const { model, version } = req.params;
    broker.spec(model, version); // 404 before looking at the body
    const body = req.body;
    if (!Buffer.isBuffer(body) || body.length === 0) throw new BrokerError('INVALID_ARGUMENT', 'the request has no body');
    const headerLength = req.headers['inference-header-content-length'];
    let header: unknown;
    let binary: Buffer | undefined;
    if (headerLength !== undefined) {
      ({ header, binary } = splitBinaryBody(body, Number(headerLength)));
    } else {
      try {
        header = JSON.parse(body.toString('utf8'));
      } catch (e) {
        throw new BrokerError('INVALID_ARGUMENT', `the body is not valid JSON: ${(e as Error).message}`);
      }
    }
    const parsed = parseInferBody(header, binary, String(req.id));
    const aborted = new AbortController();
    reply.raw.on('close', () => {
      if (!reply.raw.writableFinished) aborted.abort();
    });
    req.log.debug({ model, requestId: parsed.request.id }, 'infer');
    const result = await broker.infer({ ...parsed.request, model, version, signal: aborted.signal });
    const clientId = (header as { id?: unknown }).id !== undefined ? parsed.request.id : undefined;
    const enc = encodeInferResult(result, clientId, parsed.binaryOutputs);
    if (enc.binary.length === 0) return reply.send(enc.json);
    const json = Buffer.from(JSON.stringify(enc.json));
    return reply
      .header('Content-Type', 'application/octet-stream')
      .header('Inference-Header-Content-Length', json.length)
      .send(Buffer.concat([json, ...enc.binary]));
  });
}
