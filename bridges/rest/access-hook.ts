/**
 * The access policy (bridges/shared/access.ts) on the HTTP port: one onRequest
 * hook at the root of the fastify app, so it also covers routes of other
 * plugins (/admin/instances). It classifies each request by its route pattern,
 * answers 401/403 through the app's error handler, and hides crash log lines
 * from callers without the admin token.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
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

const adminRequests = new WeakSet<FastifyRequest>();

/** Whether this request carried the admin token (or no token is configured and it came from loopback). */
export function seesAdminDetails(req: FastifyRequest): boolean {
  return adminRequests.has(req);
}

const LAST_LINES_KEY = '"lastLines":';
const LAST_LINES_ARRAY = /"lastLines":\[(?:"(?:[^"\\]|\\.)*",?)*\]/g;
const mayQuoteLogs = (s: string) => s.includes('model copy ') || s.includes('; last log lines: ');

export function installAccessHook(app: FastifyInstance, access: AccessControl): void {
  app.addHook('onRequest', async (req, reply) => {
    const caller = { credential: credentialOf(req.headers.authorization, req.headers['x-api-key']), address: req.socket.remoteAddress };
    if (access.seesAdminDetails(caller)) adminRequests.add(req);
    const cls = classOf(req.method, req.routeOptions.url);
    const refused = access.check(cls, caller);
    if (refused) {
      req.log.warn({ method: req.method, route: req.routeOptions.url, ip: req.ip, code: refused.code }, 'request refused by the access policy');
      if (refused.code === 'UNAUTHENTICATED') void reply.header('www-authenticate', 'Bearer');
      // Answered here, not thrown: plugins with their own error handler (the admin API) would make it a 500.
      return reply.code(HTTP_STATUS[refused.code]).type('application/json').send({ error: refused.message });
    }
  });
  // Crash log lines ride in "unavailable" reasons (errors, repository index, model status).
  app.addHook('onSend', async (req, _reply, payload) => {
    if (typeof payload === 'string' && !adminRequests.has(req) && (mayQuoteLogs(payload) || payload.includes(LAST_LINES_KEY))) {
      // Each JSON string on its own: the redaction must not run past a closing quote.
      return payload
        .replace(LAST_LINES_ARRAY, `${LAST_LINES_KEY}[]`) // the model status (/admin/models/{m}) carries them as an array
        .replace(/"(?:[^"\\]|\\.)*"/g, (str) => (mayQuoteLogs(str) ? withoutLogLines(str.slice(0, -1)) + '"' : str));
    }
    return payload;
  });
}
