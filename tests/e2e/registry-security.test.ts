/**
 * Redis as an untrusted store, against real redis-servers: signed records
 * (a hostile record SET directly in Redis is refused), AUTH and ACL users,
 * TLS with a private CA, read-only brokers, FLUSHALL, and the error that
 * names the fix when Redis cannot be reached.
 */
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import Redis from 'ioredis';
import pino from 'pino';
import type { RegistryEvent } from '../../core/model-spec';
import { parseModelsFile } from '../../model-manager/models-file';
import { RedisModelRegistry, type OpenOptions } from '../../model-manager/redis-registry';
import { freePort } from '../../bench/procs';
import { waitFor } from '../helpers/broker';
import { waitEvent } from '../helpers/events';
import { startRedisServer, type RedisServer } from '../helpers/redis';
import { captureLogger } from '../helpers/logs';

const silent = pino({ level: 'silent' });
const KEY = 'signing-key-' + randomUUID();
const FILE = parseModelsFile('simple:\n  image: simple:1\n  env: { THREADS: 2 }\nother:\n  image: other:1\n', '/srv/models.yaml');

let redis: RedisServer;
let raw: Redis;
let prefix: string;
const opened: RedisModelRegistry[] = [];
const servers: RedisServer[] = [];

async function open(opts: Partial<OpenOptions> = {}): Promise<RedisModelRegistry> {
  const reg = await RedisModelRegistry.open({ redisUrl: redis.url, prefix, logger: silent, ...opts });
  opened.push(reg);
  return reg;
}

beforeAll(async () => {
  redis = await startRedisServer();
  raw = new Redis(redis.url);
});

afterAll(async () => {
  raw?.disconnect();
  await redis?.stop();
  for (const s of [redis, ...servers]) if (s) await rm(s.dir, { recursive: true, force: true });
});

beforeEach(() => {
  prefix = `sec-${randomUUID()}:`;
});

afterEach(async () => {
  await Promise.all(opened.splice(0).map((r) => r.close()));
  await Promise.all(servers.map((s) => s.stop()));
});

describe('signed records', () => {
  test('a hostile record SET directly in Redis is refused; the cached spec is kept', async () => {
    const { logger, lines } = captureLogger();
    const reg = await open({ file: FILE, signingKey: KEY, logger });
    const stored = JSON.parse((await raw.get(`${prefix}model:simple`))!);
    expect(stored.sig).toMatch(/^[0-9a-f]{64}$/);

    // An attacker with Redis access but without the key.
    const hostile = { ...stored, env: { NODE_OPTIONS: '--import=data:text/javascript,process.exit(7)' } };
    delete hostile.sig;
    await raw.set(`${prefix}model:simple`, JSON.stringify(hostile));
    await raw.set(`${prefix}model:evil`, JSON.stringify({ ...hostile, name: 'evil' }));
    await raw.sadd(`${prefix}models`, 'evil');
    const refused = waitFor(() => lines.filter((l) => l.includes('not signed')).length >= 2, 5000, 'two refusals');
    await raw.publish(`${prefix}events`, JSON.stringify({ type: 'put', name: 'simple' }));
    await raw.publish(`${prefix}events`, JSON.stringify({ type: 'put', name: 'evil' }));
    await refused;
    expect(reg.get('simple')?.env).toEqual({ THREADS: '2' });
    expect(reg.get('evil')).toBeUndefined();

    // A wrong signature is refused too.
    await raw.set(`${prefix}model:evil`, JSON.stringify({ ...hostile, name: 'evil', sig: 'ab'.repeat(32) }));
    const wrong = waitFor(() => lines.some((l) => l.includes('wrong signature')), 5000, 'wrong signature refused');
    await raw.publish(`${prefix}events`, JSON.stringify({ type: 'put', name: 'evil' }));
    await wrong;
    expect(reg.get('evil')).toBeUndefined();

    // Another broker with the key: its writes are accepted.
    const other = await open({ signingKey: KEY });
    const seen = waitEvent<[RegistryEvent]>(reg, 'change', (e) => e.name === 'fresh');
    await other.put({ ...other.get('other')!, name: 'fresh', source: 'api' }, 'api');
    expect((await seen)[0]).toMatchObject({ type: 'put', spec: { image: 'other:1', source: 'api' } });
  });

  test('a reseed replaces an unsigned record that claims source api', async () => {
    await raw.set(`${prefix}model:simple`, JSON.stringify({ name: 'simple', image: 'evil:1', source: 'api' }));
    await raw.sadd(`${prefix}models`, 'simple');
    const reg = await open({ file: FILE, signingKey: KEY });
    expect(reg.get('simple')).toMatchObject({ image: 'simple:1', source: 'file' });
  });
});

describe('Redis AUTH, ACL and TLS', () => {
  test('requirepass: the password in the URL works; a wrong one gives an error that names the fix, without the password', async () => {
    const locked = await startRedisServer({ args: ['--save', '', '--appendonly', 'no', '--requirepass', 's3cret'] });
    servers.push(locked);
    const url = `redis://:s3cret@127.0.0.1:${locked.port}`;
    const reg = await RedisModelRegistry.open({ redisUrl: url, prefix, logger: silent, file: FILE });
    opened.push(reg);
    expect(reg.list().map((s) => s.name)).toEqual(['other', 'simple']);

    const err = await RedisModelRegistry.open({ redisUrl: `redis://:wrong-pw@127.0.0.1:${locked.port}`, prefix, logger: silent, connectTimeoutMs: 3000 }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(/refused the credentials.*fix the user and password in --redis-url/);
    expect((err as Error).message).not.toContain('wrong-pw');
  });

  test('an ACL user limited to the prefix can run the registry', async () => {
    const locked = await startRedisServer({ args: ['--save', '', '--appendonly', 'no', '--requirepass', 'admin-pw'] });
    servers.push(locked);
    const admin = new Redis(`redis://:admin-pw@127.0.0.1:${locked.port}`);
    await admin.call('ACL', 'SETUSER', 'broker', 'on', '>broker-pw', `~${prefix}*`, `&${prefix}*`, '+@all');
    admin.disconnect();
    const reg = await RedisModelRegistry.open({ redisUrl: `redis://broker:broker-pw@127.0.0.1:${locked.port}`, prefix, logger: silent, file: FILE });
    opened.push(reg);
    expect((await reg.patch('simple', { batch_size: 4 })).batch_size).toBe(4);
  });

  test('rediss:// with a private CA', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tb-tls-'));
    try {
      const f = (n: string) => path.join(dir, n);
      const ssl = (...args: string[]) => execFileSync('openssl', args, { stdio: 'ignore' });
      ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '1', '-subj', '/CN=tb-test-ca');
      ssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('server.key'), '-out', f('server.csr'), '-subj', '/CN=127.0.0.1');
      writeFileSync(f('ext.cnf'), 'subjectAltName=IP:127.0.0.1\n');
      ssl('x509', '-req', '-in', f('server.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f('server.pem'), '-days', '1', '-extfile', f('ext.cnf'));
      const tlsPort = await freePort();
      const tls = await startRedisServer({
        args: ['--save', '', '--appendonly', 'no', '--tls-port', String(tlsPort), '--tls-cert-file', f('server.pem'), '--tls-key-file', f('server.key'), '--tls-ca-cert-file', f('ca.pem'), '--tls-auth-clients', 'no'],
      });
      servers.push(tls);
      const url = `rediss://127.0.0.1:${tlsPort}`;
      const reg = await RedisModelRegistry.open({ redisUrl: url, redisCaFile: f('ca.pem'), prefix, logger: silent, file: FILE });
      opened.push(reg);
      expect(reg.get('simple')?.image).toBe('simple:1');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('read-only brokers, lost data, unreachable Redis', () => {
  test('a read-only broker never writes: seeding is skipped and writes answer 403', async () => {
    const ro = await open({ file: FILE, readOnly: true });
    expect(await raw.keys(`${prefix}*`)).toEqual([]);
    expect(ro.list()).toEqual([]);
    await expect(ro.put({ ...FILE.specs[0], source: 'api' }, 'api')).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });

    const writer = await open({ file: FILE });
    const seen = waitEvent<[RegistryEvent]>(ro, 'change', (e) => e.name === 'simple' && e.type === 'put' && e.spec.batch_size === 3);
    await writer.patch('simple', { batch_size: 3 });
    await seen;
    expect(ro.get('other')?.image).toBe('other:1');
  });

  test('FLUSHALL (no reconnect): the periodic check writes the models back', async () => {
    const own = await startRedisServer();
    servers.push(own);
    const { logger, lines } = captureLogger();
    const reg = await RedisModelRegistry.open({ redisUrl: own.url, prefix, logger, file: FILE, checkIntervalMs: 100 });
    opened.push(reg);
    await reg.patch('simple', { batch_size: 5 });
    const r = new Redis(own.url);
    try {
      await r.flushall();
      await waitFor(async () => (await r.get(`${prefix}model:simple`)) !== null && (await r.get(`${prefix}model:other`)) !== null, 10_000, 'records back');
      expect(JSON.parse((await r.get(`${prefix}model:simple`))!)).toMatchObject({ source: 'api', batch_size: 5 });
      expect(reg.list().map((s) => s.name)).toEqual(['other', 'simple']);
      expect(lines.some((l) => l.includes('came back without the model registry'))).toBe(true);
    } finally {
      r.disconnect();
    }
  });

  test('no Redis listening: one error that names the fix', async () => {
    const port = await freePort();
    const err = await RedisModelRegistry.open({ redisUrl: `redis://:pw@127.0.0.1:${port}`, prefix, logger: silent, connectTimeoutMs: 3000 }).catch((e: Error) => e);
    expect((err as Error).message).toMatch(new RegExp(`cannot reach Redis at redis://:\\*\\*\\*@127\\.0\\.0\\.1:${port}.*start redis-server.*drop --redis-url to use the embedded registry`));
  });
});
