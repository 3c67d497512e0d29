/**
 * The access policy (bridges/shared/access.ts) on the HTTP port: an onRoute
 * hook at the root of the fastify app classifies each route by its pattern as
 * it is added (so it also covers routes of other plugins, /admin/instances)
 * and gives only the routes with something to check an onRequest guard, which
 * answers 401/403. An onSend hook hides crash log lines from callers without
 * the admin token.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { HTTP_STATUS } from '../../core/errors';
import { AccessControl, credentialOf, withoutLogLines, type CallClass } from '../shared/access';

const MODEL = '/v2/models/:model';
const VERSIONED = '/v2/models/:model/versions/:version';

/** Route pattern (method + url) → class. Anything not listed is open (or guards itself, as /admin/models does). */
const CLASSES = new Map<string, CallClass>([
  [`POST ${MODEL}/infer`, 'infer'],
  [`POST ${VERSIONED}/infer`, 'infer'],
  [`GET ${MODEL}/sequences`, 'admin'],
  [`GET ${VERSIONED}/sequences`, 'admin'],
  ['POST /v2/repository/models/:model/load', 'admin'],
  ['POST /v2/repository/models/:model/unload', 'admin'],
  ['GET /admin/instances', 'admin'],
  // Asynchronous jobs follow the inference rules (the listing guards itself with the admin token).
  [`POST ${MODEL}/jobs`, 'infer'],
  [`POST ${VERSIONED}/jobs`, 'infer'],
  [`GET ${MODEL}/jobs/queue`, 'infer'],
  ['GET /v2/jobs/:id', 'infer'],
  ['DELETE /v2/jobs/:id', 'infer'],
  ['GET /v2/jobs/:id/result', 'infer'],
  ['GET /v2/jobs/:id/events', 'infer'],
  // System shared memory opens files of /dev/shm as the broker's user: a control call, as in Triton (--allow-client-shm).
  ['GET /v2/systemsharedmemory/status', 'admin'],
  ['GET /v2/systemsharedmemory/region/:name/status', 'admin'],
  ['POST /v2/systemsharedmemory/region/:name/register', 'admin'],
  ['POST /v2/systemsharedmemory/unregister', 'admin'],
  ['POST /v2/systemsharedmemory/region/:name/unregister', 'admin'],
]);

export function classOf(method: string, routeUrl: string | undefined): CallClass {
  return (routeUrl && CLASSES.get(`${method} ${routeUrl}`)) || 'open';
}

const callerOf = (req: FastifyRequest) => ({ credential: credentialOf(req.headers.authorization, req.headers['x-api-key']), address: req.socket.remoteAddress });

const LAST_LINES_KEY = '"lastLines":';
const LAST_LINES_ARRAY = /"lastLines":\[(?:"(?:[^"\\]|\\.)*",?)*\]/g;
const mayQuoteLogs = (s: string) => s.includes('model copy ') || s.includes('; last log lines: ');

type Hook = (req: FastifyRequest, reply: FastifyReply) => Promise<unknown>;

/**
 * The check is decided per route when the route is added (onRoute): open
 * routes, and inference while no API key is configured, get no hook at all,
 * so a request pays nothing for a policy that has nothing to check.
 */
export function installAccessHook(app: FastifyInstance, access: AccessControl): void {
  const guard = (cls: CallClass): Hook => async (req, reply) => {
    const refused = access.check(cls, callerOf(req));
    if (refused) {
      req.log.warn({ method: req.method, route: req.routeOptions.url, ip: req.ip, code: refused.code }, 'request refused by the access policy');
      if (refused.code === 'UNAUTHENTICATED') void reply.header('www-authenticate', 'Bearer');
      // Answered here, not thrown: plugins with their own error handler (the admin API) would make it a 500.
      return reply.code(HTTP_STATUS[refused.code]).type('application/json').send({ error: refused.message });
    }
  };
  app.addHook('onRoute', (route) => {
    const methods = Array.isArray(route.method) ? route.method : [route.method];
    const cls = methods.map((m) => classOf(m, route.url)).find((c) => c !== 'open') ?? 'open';
    if (cls === 'open' || (cls === 'infer' && !access.inferenceKeyed)) return;
    const own = route.onRequest === undefined ? [] : Array.isArray(route.onRequest) ? route.onRequest : [route.onRequest];
    route.onRequest = [guard(cls), ...own] as typeof route.onRequest;
  });
  // Crash log lines ride in "unavailable" reasons (errors, repository index, model status);
  // whether the caller may see them is decided only for replies that may quote them.
  app.addHook('onSend', (req, _reply, payload, done) => {
    if (typeof payload === 'string' && (mayQuoteLogs(payload) || payload.includes(LAST_LINES_KEY)) && !access.seesAdminDetails(callerOf(req))) {
      // Each JSON string on its own: the redaction must not run past a closing quote.
      return done(null, payload
        .replace(LAST_LINES_ARRAY, `${LAST_LINES_KEY}[]`) // the model status (/admin/models/{m}) carries them as an array
        .replace(/"(?:[^"\\]|\\.)*"/g, (str) => (mayQuoteLogs(str) ? withoutLogLines(str.slice(0, -1)) + '"' : str)));
    }
    done(null, payload);
  });
}
