/**
 * Model registry against a real redis-server: seeding and precedence, change
 * events across two brokers, the admin API (inject() and one real listen).
 */
import { randomUUID } from 'node:crypto';
import Fastify, { type FastifyInstance } from 'fastify';
import Redis from 'ioredis';
import pino, { type Logger } from 'pino';
import { installErrorHandlers } from '../../app/http-errors';
import { adminRoutes } from '../../model-manager/admin-api';
import { parseModelsFile } from '../../model-manager/models-file';
import { RedisModelRegistry, type RegistryFile } from '../../model-manager/redis-registry';
import type { RegistryEvent } from '../../core/model-spec';
import { startRedis, type RedisHandle } from '../helpers/redis';
import { captureLogger } from '../helpers/logs';

// fastify's inject() loads light-my-request, which require()s the ESM-only
// `cookie` 2.x: Jest's CommonJS runtime cannot load it. inject() only needs
// stringifySetCookie (for request cookies, unused here). Project-wide fix:
// a moduleNameMapper / transform for `cookie` in jest.config.js.
jest.mock('cookie', () => ({
  stringifySetCookie: (c: { name: string; value: string }) => `${c.name}=${encodeURIComponent(c.value)}`,
}));

let redis: RedisHandle;
let raw: Redis;
let prefix: string;
const opened: RedisModelRegistry[] = [];
const apps: FastifyInstance[] = [];

const silent = pino({ level: 'silent' });

function file(text: string, path = '/srv/models/models.yaml'): RegistryFile & { errors: string[] } {
  const f = parseModelsFile(text, path);
  expect(f.ok).toBe(true);
  return f;
}

async function open(opts: { file?: RegistryFile; logger?: Logger } = {}): Promise<RedisModelRegistry> {
  const reg = await RedisModelRegistry.open({ redisUrl: redis.url, prefix, logger: opts.logger ?? silent, file: opts.file });
  opened.push(reg);
  return reg;
}

/** Resolves with the next 'change' matching `pred`; rejects after `ms`. */
function nextChange(reg: RedisModelRegistry, pred: (e: RegistryEvent) => boolean, ms = 5000): Promise<RegistryEvent> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      reg.off('change', onChange);
      reject(new Error(`no matching registry change within ${ms} ms`));
    }, ms);
    const onChange = (e: RegistryEvent) => {
      if (!pred(e)) return;
      clearTimeout(timer);
      reg.off('change', onChange);
      resolve(e);
    };
    reg.on('change', onChange);
  });
}

beforeAll(async () => {
  redis = await startRedis();
  raw = new Redis(redis.url);
});

afterAll(async () => {
  raw?.disconnect();
  await redis?.stop();
});

beforeEach(() => {
  prefix = `test-${randomUUID()}:`;
});

afterEach(async () => {
  await Promise.all(apps.splice(0).map((a) => a.close()));
  await Promise.all(opened.splice(0).map((r) => r.close()));
});

const FILE_V1 = `
stub:
  address: registry/stub:v5
  batch_size: 256
  run_on_gpu: False
  stateless: True
echo:
  command: node ./echo.js --rows 2
  env: { SECRET: hunter2 }
`;

describe('seeding and precedence', () => {
  test('file entries land in Redis (without command) and in the cache (with command and cwd)', async () => {
    const reg = await open({ file: file(FILE_V1) });
    expect(reg.list().map((s) => [s.name, s.source])).toEqual([
      ['echo', 'file'],
      ['stub', 'file'],
    ]);
    expect(reg.get('stub')).toMatchObject({ image: 'registry/stub:v5', batch_size: 256, stateless: true });
    expect(reg.get('echo')).toMatchObject({ command: ['node', './echo.js', '--rows', '2'], cwd: '/srv/models' });

    expect(await raw.smembers(`${prefix}models`)).toEqual(expect.arrayContaining(['echo', 'stub']));
    const rec = JSON.parse((await raw.get(`${prefix}model:echo`))!);
    expect(rec).toMatchObject({ name: 'echo', source: 'file', env: { SECRET: 'hunter2' } });
    expect(rec.command).toBeUndefined();
    expect(rec.cwd).toBeUndefined();

    // A broker without the file reads the shared registry, but has no command.
    const other = await open();
    expect(other.get('echo')?.command).toBeUndefined();
    expect(other.get('stub')?.image).toBe('registry/stub:v5');
  });

  test('api entry survives a reseed; file entries are overwritten; a file entry gone from the file is removed', async () => {
    const a = await open({ file: file(FILE_V1) });
    await a.put({ ...a.get('stub')!, batch_size: 8 }, 'api');
    await a.close();

    const { logger, lines } = captureLogger();
    const b = await open({
      logger,
      file: file(`
stub:
  address: registry/stub:v6
  batch_size: 512
  run_on_gpu: false
  stateless: true
fresh:
  image: fresh:1
`),
    });
    expect(b.get('stub')).toMatchObject({ source: 'api', batch_size: 8, image: 'registry/stub:v5' });
    expect(b.get('fresh')).toMatchObject({ source: 'file', image: 'fresh:1' });
    expect(b.get('echo')).toBeUndefined();
    expect(await raw.get(`${prefix}model:echo`)).toBeNull();
    expect(await raw.sismember(`${prefix}models`, 'echo')).toBe(0);
    expect(lines.some((l) => l.includes('shadowed') && l.includes('"model":"stub"'))).toBe(true);

    // File entries are overwritten by a changed file.
    await b.close();
    const c = await open({ file: file('fresh:\n  image: fresh:2\n') });
    expect(c.get('fresh')?.image).toBe('fresh:2');
    expect(c.get('stub')?.source).toBe('api');
  });

  test('a bad entry is reported and skipped; its existing record is left alone', async () => {
    await (await open({ file: file('simple:\n  image: s:1\ngood:\n  image: g:1\n') })).close();
    const f = parseModelsFile('simple:\n  image: s:2\n  batch_size: eight\ngood:\n  image: g:2\n', '/x/models.yaml');
    expect(f.errors).toEqual(['models file /x/models.yaml: model "simple": field "batch_size" must be an integer >= 0 (0: a non-batching model) (got "eight")']);
    const reg = await open({ file: f });
    expect(reg.get('good')?.image).toBe('g:2');
    expect(reg.get('simple')?.image).toBe('s:1');
  });

  test('an invalid record in Redis is logged and ignored, not a crash', async () => {
    await raw.multi().set(`${prefix}model:junk`, '{"batch_size":"x"').sadd(`${prefix}models`, 'junk').exec();
    const { logger, lines } = captureLogger();
    const reg = await open({ logger, file: file('ok:\n  image: ok:1\n') });
    expect(reg.list().map((s) => s.name)).toEqual(['ok']);
    expect(lines.some((l) => l.includes('not JSON'))).toBe(true);
  });
});

describe('change events between brokers', () => {
  test('put, patch and delete on one broker reach the other; exactly one change per write on each', async () => {
    const a = await open({ file: file(FILE_V1) });
    const b = await open();
    const seenA: RegistryEvent[] = [];
    const seenB: RegistryEvent[] = [];
    a.on('change', (e) => seenA.push(e));
    b.on('change', (e) => seenB.push(e));

    const onB = nextChange(b, (e) => e.name === 'new');
    const { created } = await a.put({ ...a.get('stub')!, name: 'new', source: 'api' }, 'api');
    expect(created).toBe(true);
    expect(a.get('new')?.source).toBe('api'); // the writer's cache is current when put() resolves
    const e1 = await onB;
    expect(e1).toMatchObject({ type: 'put', name: 'new', spec: { image: 'registry/stub:v5', source: 'api' } });
    expect(e1.type === 'put' && e1.previous).toBeUndefined();

    const patched = nextChange(b, (e) => e.name === 'new' && e.type === 'put' && e.spec.batch_size === 3);
    const spec = await a.patch('new', { batch_size: 3, env: { K: 'v' } });
    expect(spec).toMatchObject({ batch_size: 3, env: { K: 'v' }, source: 'api' });
    const e2 = await patched;
    expect(e2.type === 'put' && e2.previous?.batch_size).toBe(256);

    const deleted = nextChange(b, (e) => e.name === 'new' && e.type === 'delete');
    expect(await a.delete('new')).toBe(true);
    expect(a.get('new')).toBeUndefined();
    expect((await deleted).type === 'delete').toBe(true);
    expect(await a.delete('new')).toBe(false);

    // Barrier: a marker write seen by both means every earlier notice (and echo) was applied.
    const markA = nextChange(a, (e) => e.name === 'marker');
    const markB = nextChange(b, (e) => e.name === 'marker');
    await b.put({ ...b.get('stub')!, name: 'marker' }, 'api');
    await Promise.all([markA, markB]);

    const forNew = (list: RegistryEvent[]) => list.filter((e) => e.name === 'new').map((e) => e.type);
    expect(forNew(seenA)).toEqual(['put', 'put', 'delete']);
    expect(forNew(seenB)).toEqual(['put', 'put', 'delete']);
    expect(seenA.filter((e) => e.name === 'marker')).toHaveLength(1);
    expect(seenB.filter((e) => e.name === 'marker')).toHaveLength(1);
  });

  test('a reseed on one broker is seen by the other, with command merged by name', async () => {
    const a = await open({ file: file(FILE_V1) });
    const b = await open({ file: file(FILE_V1) });
    const gone = nextChange(b, (e) => e.name === 'stub' && e.type === 'delete');
    const changed = nextChange(b, (e) => e.name === 'echo' && e.type === 'put');
    await a.reload(file('echo:\n  command: node ./echo.js\n  batch_size: 4\n'));
    await gone;
    const e = await changed;
    expect(e.type === 'put' && e.spec).toMatchObject({ batch_size: 4, command: ['node', './echo.js', '--rows', '2'] });
  });

  test('patch of an unknown model and invalid patches are refused', async () => {
    const a = await open({ file: file(FILE_V1) });
    await expect(a.patch('nope', { batch_size: 2 })).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(a.patch('stub', { min_replicas: 5 })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      errors: ['model "stub": field "min_replicas" (5) must be <= "max_replicas" (1)'],
    });
  });
});

describe('Redis outage', () => {
  test('the cache keeps serving; writes fail with UNAVAILABLE', async () => {
    const own = await startRedis();
    const reg = await RedisModelRegistry.open({ redisUrl: own.url, prefix, logger: silent, file: file(FILE_V1) });
    try {
      await own.stop();
      expect(reg.get('stub')?.image).toBe('registry/stub:v5');
      expect(reg.list()).toHaveLength(2);
      await expect(reg.put({ ...reg.get('stub')!, batch_size: 2 }, 'api')).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    } finally {
      await reg.close();
    }
  });
});

describe('admin API', () => {
  const TOKEN = 'tok-' + randomUUID();
  const auth = { authorization: `Bearer ${TOKEN}` };

  async function makeApp(reg: RedisModelRegistry, token: string | undefined): Promise<FastifyInstance> {
    const app = Fastify({ logger: false });
    installErrorHandlers(app); // the broker's one error handler, as in app/server.ts
    await app.register(adminRoutes, { registry: reg, token, logger: silent });
    apps.push(app);
    return app;
  }

  test('through inject(): auth, CRUD, validation, command refused, 404s', async () => {
    const reg = await open({ file: file(FILE_V1) });
    const other = await open();
    const app = await makeApp(reg, TOKEN);

    // Reads need no token, but hide env values without one.
    let res = await app.inject({ method: 'GET', url: '/admin/models' });
    expect(res.statusCode).toBe(200);
    expect(res.json().models.map((m: { name: string }) => m.name)).toEqual(['echo', 'stub']);
    expect((await app.inject({ method: 'GET', url: '/admin/models/echo' })).json().env).toEqual({ SECRET: '***' });
    expect((await app.inject({ method: 'GET', url: '/admin/models/echo', headers: auth })).json().env).toEqual({
      SECRET: 'hunter2',
    });
    res = await app.inject({ method: 'GET', url: '/admin/models/missing' });
    expect(res.statusCode).toBe(404);
    expect(res.json()).toEqual({ error: 'model "missing" not found' });

    // Changes need the token.
    const body = { image: 'det:1', batch_size: 8, env: { API_KEY: 'k' } };
    res = await app.inject({ method: 'PUT', url: '/admin/models/det', payload: body });
    expect(res.statusCode).toBe(401);
    expect(res.json().error).toMatch(/bearer token/);
    res = await app.inject({ method: 'PUT', url: '/admin/models/det', payload: body, headers: { authorization: 'Bearer nope' } });
    expect(res.statusCode).toBe(401);
    expect((await app.inject({ method: 'DELETE', url: '/admin/models/stub' })).statusCode).toBe(401);
    expect((await app.inject({ method: 'PATCH', url: '/admin/models/stub', payload: {} })).statusCode).toBe(401);

    // PUT: 201 created, seen by the other broker; then 200 replaced.
    const seen = nextChange(other, (e) => e.name === 'det');
    res = await app.inject({ method: 'PUT', url: '/admin/models/det', payload: body, headers: auth });
    expect(res.statusCode).toBe(201);
    expect(res.json()).toMatchObject({ name: 'det', image: 'det:1', batch_size: 8, source: 'api', version: '1' });
    expect((await seen).type).toBe('put');
    res = await app.inject({ method: 'PUT', url: '/admin/models/det', payload: { ...body, address: 'det:1', version: 2 }, headers: auth });
    expect(res.statusCode).toBe(200);
    expect(res.json().version).toBe('2');

    // Validation errors are 400 with the model and field named.
    res = await app.inject({ method: 'PUT', url: '/admin/models/det', payload: { image: 'x', batch_size: 'eight' }, headers: auth });
    expect(res.statusCode).toBe(400);
    expect(res.json()).toEqual({ error: 'model "det": field "batch_size" must be an integer >= 0 (0: a non-batching model) (got "eight")' });
    res = await app.inject({ method: 'PUT', url: '/admin/models/det', payload: { image: 'x', colour: 'red' }, headers: auth });
    expect(res.statusCode).toBe(400);
    expect(res.json().error).toMatch(/unknown field "colour"/);
    res = await app.inject({ method: 'PUT', url: '/admin/models/a:b', payload: { image: 'x' }, headers: auth });
    expect(res.statusCode).toBe(400);
    res = await app.inject({ method: 'PUT', url: '/admin/models/det', payload: { batch_size: 2 }, headers: auth });
    expect(res.statusCode).toBe(400);
    expect(res.json().error).toMatch(/needs "image"/);
    res = await app.inject({
      method: 'PUT',
      url: '/admin/models/det',
      headers: { ...auth, 'content-type': 'application/json' },
      payload: '{"image": ',
    });
    expect(res.statusCode).toBe(400);
    expect(typeof res.json().error).toBe('string');

    // Route schemas: a body that is not an object, a bad name, a bad scale body.
    res = await app.inject({ method: 'PATCH', url: '/admin/models/stub', headers: { ...auth, 'content-type': 'application/json' }, payload: '[1]' });
    expect(res.statusCode).toBe(400);
    expect(res.json()).toEqual({ error: 'model "stub": the body must be a JSON object (got [1])' });
    res = await app.inject({ method: 'DELETE', url: '/admin/models/a:b', headers: auth });
    expect(res.statusCode).toBe(400);
    expect(res.json().error).toMatch(/^model name "a:b" is invalid/);

    // command is refused on PUT and PATCH.
    for (const method of ['PUT', 'PATCH'] as const) {
      res = await app.inject({ method, url: '/admin/models/det', payload: { image: 'x', command: 'rm -rf /' }, headers: auth });
      expect(res.statusCode).toBe(400);
      expect(res.json()).toEqual({ error: 'command can only be set in models.yaml on disk' });
    }

    // A file model with a command may be overridden without an image; the command stays from the file.
    res = await app.inject({ method: 'PUT', url: '/admin/models/echo', payload: { batch_size: 4 }, headers: auth });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({ source: 'api', batch_size: 4, command: ['node', './echo.js', '--rows', '2'] });

    // PATCH merges then validates.
    res = await app.inject({ method: 'PATCH', url: '/admin/models/stub', payload: { max_replicas: 3, env: { A: '1' } }, headers: auth });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({ max_replicas: 3, batch_size: 256, env: { A: '1' }, source: 'api' });
    res = await app.inject({ method: 'PATCH', url: '/admin/models/stub', payload: { min_replicas: 9 }, headers: auth });
    expect(res.statusCode).toBe(400);
    expect(res.json().error).toBe('model "stub": field "min_replicas" (9) must be <= "max_replicas" (3)');
    res = await app.inject({ method: 'PATCH', url: '/admin/models/missing', payload: { batch_size: 2 }, headers: auth });
    expect(res.statusCode).toBe(404);

    // DELETE: 204 then 404.
    const gone = nextChange(other, (e) => e.name === 'det' && e.type === 'delete');
    res = await app.inject({ method: 'DELETE', url: '/admin/models/det', headers: auth });
    expect(res.statusCode).toBe(204);
    await gone;
    expect(other.get('det')).toBeUndefined();
    res = await app.inject({ method: 'DELETE', url: '/admin/models/det', headers: auth });
    expect(res.statusCode).toBe(404);
    expect(res.json()).toEqual({ error: 'model "det" not found' });
  });

  test('no token configured: changes answer 403, reads work', async () => {
    const reg = await open({ file: file(FILE_V1) });
    const app = await makeApp(reg, undefined);
    const res = await app.inject({ method: 'PUT', url: '/admin/models/x', payload: { image: 'x' }, headers: auth });
    expect(res.statusCode).toBe(403);
    expect(res.json()).toEqual({ error: 'admin API disabled: set TB_ADMIN_TOKEN' });
    expect((await app.inject({ method: 'DELETE', url: '/admin/models/stub' })).statusCode).toBe(403);
    expect((await app.inject({ method: 'GET', url: '/admin/models/stub' })).statusCode).toBe(200);
  });

  test('over a real HTTP listen on port 0', async () => {
    const reg = await open({ file: file(FILE_V1) });
    const app = await makeApp(reg, TOKEN);
    await app.listen({ port: 0, host: '127.0.0.1' });
    const base = `http://127.0.0.1:${(app.server.address() as { port: number }).port}/admin/models`;
    const json = { 'content-type': 'application/json' };

    let res = await fetch(`${base}/web`, { method: 'PUT', headers: json, body: JSON.stringify({ image: 'web:1' }) });
    expect(res.status).toBe(401);
    res = await fetch(`${base}/web`, { method: 'PUT', headers: { ...json, ...auth }, body: JSON.stringify({ image: 'web:1' }) });
    expect(res.status).toBe(201);
    res = await fetch(`${base}/web`, { method: 'PATCH', headers: { ...json, ...auth }, body: JSON.stringify({ timeout_ms: 500 }) });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { timeout_ms: number }).timeout_ms).toBe(500);
    res = await fetch(base);
    expect(((await res.json()) as { models: { name: string }[] }).models.map((m) => m.name)).toEqual(['echo', 'stub', 'web']);
    res = await fetch(`${base}/web`, { method: 'DELETE', headers: auth });
    expect(res.status).toBe(204);
    res = await fetch(`${base}/web`);
    expect(res.status).toBe(404);
  });
});

describe('atomic writes: two registries on one redis-server', () => {
  test('concurrent patches from two brokers lose no change', async () => {
    const a = await open({ file: file(FILE_V1) });
    const b = await open();
    const patches = Array.from({ length: 10 }, (_, i) => [a.patch('stub', { env: { [`A${i}`]: 'a' } }), b.patch('stub', { env: { [`B${i}`]: 'b' } })]).flat();
    await Promise.all(patches);
    const rec = JSON.parse((await raw.get(`${prefix}model:stub`))!);
    expect(Object.keys(rec.env).sort()).toEqual([...Array.from({ length: 10 }, (_, i) => `A${i}`), ...Array.from({ length: 10 }, (_, i) => `B${i}`)].sort());
    expect(rec.source).toBe('api');
  });

  test('two brokers seeding while an admin writes: the admin entries always win, nothing interleaves', async () => {
    for (let round = 0; round < 8; round++) {
      prefix = `test-${randomUUID()}:`;
      const admin = await open({ file: file('gone:\n  image: gone:1\n') });
      const names = ['stub', 'echo', 'gone'];
      // Seeding: stub and echo are in the file and must not overwrite an admin entry; gone is no
      // longer in the file and must not be deleted once an admin wrote it.
      const seeding = [open({ file: file(FILE_V1) }), open({ file: file(FILE_V1) })];
      const writes = names.map((n) => admin.put({ ...admin.get('gone')!, name: n, image: `admin-${n}:1` }, 'api'));
      await Promise.all([...seeding, ...writes]);
      for (const n of names) {
        const rec = JSON.parse((await raw.get(`${prefix}model:${n}`)) ?? 'null');
        expect([n, rec?.source, rec?.image]).toEqual([n, 'api', `admin-${n}:1`]);
      }
      await Promise.all(opened.splice(0).map((r) => r.close()));
    }
  });
});
