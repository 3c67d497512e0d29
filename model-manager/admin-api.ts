/**
 * Admin API for the model registry, as a fastify plugin made of route groups:
 *
 *   reads (no token needed; env values shown as "***" without one)
 *     GET    /admin/models          list
 *     GET    /admin/models/:name    one model, 404 if unknown
 *     GET    /admin/instances       every copy of this broker: model, state, container, GPUs
 *   changes (Authorization: Bearer <TB_ADMIN_TOKEN>; 401 otherwise, 403 with no token configured)
 *     PUT    /admin/models/:name    full entry; 201 created / 200 replaced
 *     PATCH  /admin/models/:name    JSON merge patch onto the current entry, then full validation; 404 if unknown
 *     DELETE /admin/models/:name    204; 404 if unknown
 *     POST   /admin/models/:name/scale  {"replicas": n}: run n copies now (task manager)
 *
 * With a task manager attached, GET /admin/models/:name also carries `status`.
 * Errors are thrown (BrokerError, ModelValidationError) into the one HTTP error
 * handler (app/http-errors.ts): {"error": "..."} with the right status.
 */
import type { FastifyInstance, FastifyPluginAsync } from 'fastify';
import type { Logger } from 'pino';
import { BrokerError } from '../core/errors';
import type { ModelRegistry, ModelSpec } from '../core/model-spec';
import { requireToken, tokenChecker, type AuthResult } from './admin-auth';
import { NameParams, PatchBody, PutBody, ScaleBody, compileValidator, throwValidation } from './admin-schemas';
import { redactSpec, validateEntry } from './schema';
import { ModelValidationError } from './stored-registry';

/** What the admin API needs of the registry (StoredRegistry provides it). */
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

type NameReq = { Params: { name: string } };

/** Present a spec: env values hidden unless authorised; no cwd (a host path). */
function present(spec: ModelSpec, authorised: boolean): Record<string, unknown> {
  const { cwd: _cwd, ...rest } = authorised ? spec : redactSpec(spec);
  return rest;
}

const notFound = (name: string) => new BrokerError('NOT_FOUND', `model "${name}" not found`);

interface GroupOptions extends AdminRoutesOptions {
  auth: (req: Parameters<ReturnType<typeof tokenChecker>>[0]) => AuthResult;
  log: Logger;
}

const readRoutes = async (app: FastifyInstance, opts: GroupOptions) => {
  const { registry, tasks, auth } = opts;
  app.get('/admin/models', async (req) => ({ models: registry.list().map((s) => present(s, auth(req) === 'ok')) }));
  app.get<NameReq>('/admin/models/:name', async (req) => {
    const spec = registry.get(req.params.name);
    if (!spec) throw notFound(req.params.name);
    const out = present(spec, auth(req) === 'ok');
    const status = tasks?.status(spec.name);
    return status ? { ...out, status } : out;
  });
  app.get('/admin/instances', async () => {
    if (!tasks) throw new BrokerError('NOT_FOUND', 'no task manager attached');
    return tasks.instances();
  });
};

const changeRoutes = async (app: FastifyInstance, opts: GroupOptions) => {
  const { registry, tasks, log } = opts;
  app.addHook('onRequest', requireToken(opts.auth, log));
  app.setValidatorCompiler(compileValidator);
  // Validation errors are attached, then thrown here with the model's name in each message.
  app.addHook('preHandler', async (req) => throwValidation(req));
  const route = { attachValidation: true } as const;

  app.put<NameReq & { Body: Record<string, unknown> }>('/admin/models/:name', { ...route, schema: { params: NameParams, body: PutBody } }, async (req, reply) => {
    const { name } = req.params;
    if ('command' in req.body) throw new ModelValidationError([COMMAND_REFUSED]);
    // `source` as returned by GET is accepted and ignored: API writes are always source 'api'.
    const { source: _source, ...entry } = req.body;
    const v = validateEntry(name, entry, { allowCommand: false, requireLaunch: !registry.hasFileCommand(name), source: 'api' });
    if (v.errors) throw new ModelValidationError(v.errors);
    const { created, spec } = await registry.put(v.spec, 'api');
    return reply.code(created ? 201 : 200).send(present(spec, true));
  });

  app.patch<NameReq & { Body: Record<string, unknown> }>('/admin/models/:name', { ...route, schema: { params: NameParams, body: PatchBody } }, async (req) => {
    const { name } = req.params;
    if ('command' in req.body) throw new ModelValidationError([COMMAND_REFUSED]);
    const { source: _source, name: bodyName, ...partial } = req.body;
    if (bodyName !== undefined && bodyName !== name) {
      throw new ModelValidationError([`model "${name}": field "name" is ${JSON.stringify(bodyName)}; renaming is not supported`]);
    }
    return present(await registry.patch(name, partial), true);
  });

  app.delete<NameReq>('/admin/models/:name', { ...route, schema: { params: NameParams } }, async (req, reply) => {
    if (!(await registry.delete(req.params.name))) throw notFound(req.params.name);
    return reply.code(204).send();
  });

  app.post<NameReq & { Body: { replicas: number } }>('/admin/models/:name/scale', { ...route, schema: { params: NameParams, body: ScaleBody } }, async (req) => {
    const { name } = req.params;
    if (!tasks) throw new BrokerError('NOT_FOUND', 'no task manager attached');
    if (!registry.get(name)) throw notFound(name);
    const r = tasks.scale(name, req.body.replicas, `admin api (${req.ip})`);
    log.info({ model: name, ...r, ip: req.ip }, 'manual scale');
    return { model: name, ...r };
  });
};

export const adminRoutes: FastifyPluginAsync<AdminRoutesOptions> = async (app, opts) => {
  const group: GroupOptions = { ...opts, auth: tokenChecker(opts.token), log: opts.logger.child({ component: 'admin-api' }) };
  await app.register(readRoutes, group);
  await app.register(changeRoutes, group);
};
