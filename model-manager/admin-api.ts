/**
 * Admin API for the model registry, as a fastify plugin:
 *
 *   GET    /admin/models          list            (no token needed; env values shown as "***" without one)
 *   GET    /admin/models/:name    one model, 404 if unknown
 *   PUT    /admin/models/:name    full entry; 201 created / 200 replaced
 *   PATCH  /admin/models/:name    JSON merge patch onto the current entry, then full validation; 404 if unknown
 *   DELETE /admin/models/:name    204; 404 if unknown
 *   POST   /admin/models/:name/scale  {"replicas": n}: run n copies now (task manager)
 *   GET    /admin/instances      every copy of this broker: model, state, container, GPUs (no token needed)
 *
 * With a task manager attached, GET /admin/models/:name also carries `status`
 * (readiness, copies, failures, the "unavailable" reason, the last scaling decision).
 *
 * Changes need `Authorization: Bearer <TB_ADMIN_TOKEN>` (401 otherwise); with
 * no token configured they answer 403. Errors are `{"error": "..."}`.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { HTTP_STATUS, toBrokerError } from '../core/errors';
import { ModelValidationError } from './redis-registry';
import { checkModelName, redactSpec, validateEntry } from './schema';
import type { ModelRegistry, ModelSpec } from '../core/model-spec';

/** What the admin API needs of the registry (RedisModelRegistry provides it). */
export interface AdminRegistry extends ModelRegistry {
  put(spec: ModelSpec, source: ModelSpec['source']): Promise<{ created: boolean; spec: ModelSpec }>;
  patch(name: string, partial: Record<string, unknown>): Promise<ModelSpec>;
  delete(name: string): Promise<boolean>;
  hasFileCommand(name: string): boolean;
}

/** What the admin API needs of the task manager (TaskManager provides it). */
export interface AdminTasks {
  instances(): { broker: string; gpus: unknown[]; instances: unknown[] };
  status(model: string): unknown;
  scale(model: string, replicas: number, by: string): { from: number; to: number };
}

export interface AdminRoutesOptions {
  registry: AdminRegistry;
  tasks?: AdminTasks;
  /** TB_ADMIN_TOKEN; empty or undefined disables changes (403). */
  token?: string;
  logger: Logger;
}

const COMMAND_REFUSED = 'command can only be set in models.yaml on disk';

function digest(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

/** Present a spec: env values hidden unless authorised; no cwd (a host path). */
function present(spec: ModelSpec, authorised: boolean): Record<string, unknown> {
  const { cwd: _cwd, ...rest } = authorised ? spec : redactSpec(spec);
  return rest;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

type NameParams = { Params: { name: string } };

export const adminRoutes: FastifyPluginAsync<AdminRoutesOptions> = async (app, opts) => {
  const { registry } = opts;
  const log = opts.logger.child({ component: 'admin-api' });
  const tokenDigest = opts.token ? digest(opts.token) : undefined;

  /** 'ok' | 'none' (no or wrong credentials) | 'disabled' (no token configured). */
  const authOf = (req: FastifyRequest): 'ok' | 'none' | 'disabled' => {
    if (!tokenDigest) return 'disabled';
    const h = req.headers.authorization;
    const m = typeof h === 'string' ? /^Bearer\s+(.+)$/i.exec(h.trim()) : null;
    if (!m) return 'none';
    return timingSafeEqual(digest(m[1]), tokenDigest) ? 'ok' : 'none';
  };

  const sendError = (reply: FastifyReply, status: number, error: string) => reply.code(status).send({ error });

  /** Guard for changes; answers and returns false when not allowed. */
  const mayChange = (req: FastifyRequest, reply: FastifyReply): boolean => {
    const auth = authOf(req);
    if (auth === 'ok') return true;
    if (auth === 'disabled') sendError(reply, 403, 'admin API disabled: set TB_ADMIN_TOKEN');
    else {
      void reply.header('www-authenticate', 'Bearer');
      sendError(reply, 401, 'missing or wrong bearer token');
    }
    log.warn({ method: req.method, url: req.url, ip: req.ip, auth }, 'admin change refused');
    return false;
  };

  const handleError = (reply: FastifyReply, err: unknown) => {
    if (err instanceof ModelValidationError) return sendError(reply, 400, err.errors.join('; '));
    const be = toBrokerError(err);
    if (be.code === 'INTERNAL') log.error({ err: be.message }, 'admin API error');
    return sendError(reply, HTTP_STATUS[be.code], be.message);
  };

  // JSON body parse errors and the like, in our error shape.
  app.setErrorHandler((err: Error & { statusCode?: number }, _req, reply) => {
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 600 ? err.statusCode : 500;
    if (status >= 500) log.error({ err: err.message }, 'admin API error');
    return sendError(reply, status, err.message);
  });

  app.get('/admin/models', async (req) => {
    const authorised = authOf(req) === 'ok';
    return { models: registry.list().map((s) => present(s, authorised)) };
  });

  app.get<NameParams>('/admin/models/:name', async (req, reply) => {
    const spec = registry.get(req.params.name);
    if (!spec) return sendError(reply, 404, `model "${req.params.name}" not found`);
    const out = present(spec, authOf(req) === 'ok');
    const status = opts.tasks?.status(spec.name);
    return status ? { ...out, status } : out;
  });

  app.get('/admin/instances', async (_req, reply) => {
    if (!opts.tasks) return sendError(reply, 404, 'no task manager attached');
    return opts.tasks.instances();
  });

  app.post<NameParams>('/admin/models/:name/scale', async (req, reply) => {
    if (!mayChange(req, reply)) return reply;
    const { name } = req.params;
    if (!opts.tasks) return sendError(reply, 404, 'no task manager attached');
    if (!registry.get(name)) return sendError(reply, 404, `model "${name}" not found`);
    const body: unknown = req.body;
    const replicas = isObject(body) ? body.replicas : undefined;
    if (typeof replicas !== 'number' || !Number.isInteger(replicas)) {
      return sendError(reply, 400, `model "${name}": the body must be {"replicas": <integer>}`);
    }
    try {
      const r = opts.tasks.scale(name, replicas, `admin api (${req.ip})`);
      log.info({ model: name, ...r, ip: req.ip }, 'manual scale');
      return { model: name, ...r };
    } catch (err) {
      return handleError(reply, err);
    }
  });

  app.put<NameParams>('/admin/models/:name', async (req, reply) => {
    if (!mayChange(req, reply)) return reply;
    const { name } = req.params;
    const body: unknown = req.body;
    if (!isObject(body)) return sendError(reply, 400, `model "${name}": the body must be a JSON object (the model entry)`);
    if ('command' in body) return sendError(reply, 400, COMMAND_REFUSED);
    // `source` as returned by GET is accepted and ignored: API writes are always source 'api'.
    const { source: _source, ...entry } = body;
    const v = validateEntry(name, entry, { allowCommand: false, requireLaunch: !registry.hasFileCommand(name), source: 'api' });
    if (v.errors) return sendError(reply, 400, v.errors.join('; '));
    try {
      const { created, spec } = await registry.put(v.spec, 'api');
      return reply.code(created ? 201 : 200).send(present(spec, true));
    } catch (err) {
      return handleError(reply, err);
    }
  });

  app.patch<NameParams>('/admin/models/:name', async (req, reply) => {
    if (!mayChange(req, reply)) return reply;
    const { name } = req.params;
    const body: unknown = req.body;
    if (!isObject(body)) return sendError(reply, 400, `model "${name}": the body must be a JSON object (fields to change)`);
    if ('command' in body) return sendError(reply, 400, COMMAND_REFUSED);
    if (checkModelName(name)) return sendError(reply, 404, `model "${name}" not found`);
    const { source: _source, name: bodyName, ...partial } = body;
    if (bodyName !== undefined && bodyName !== name) {
      return sendError(reply, 400, `model "${name}": field "name" is ${JSON.stringify(bodyName)}; renaming is not supported`);
    }
    try {
      return present(await registry.patch(name, partial), true);
    } catch (err) {
      return handleError(reply, err);
    }
  });

  app.delete<NameParams>('/admin/models/:name', async (req, reply) => {
    if (!mayChange(req, reply)) return reply;
    const { name } = req.params;
    if (checkModelName(name)) return sendError(reply, 404, `model "${name}" not found`);
    try {
      const existed = await registry.delete(name);
      if (!existed) return sendError(reply, 404, `model "${name}" not found`);
      return reply.code(204).send();
    } catch (err) {
      return handleError(reply, err);
    }
  });
};
