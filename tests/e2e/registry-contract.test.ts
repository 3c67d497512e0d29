/**
 * The registry contract: the SAME tests run against both stores, the Redis
 * registry (a real redis-server) and the embedded one (in the process,
 * persisted to a file). What a broker may rely on whichever store it uses.
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import type { RegistryEvent } from '../../core/model-spec';
import { EmbeddedModelRegistry } from '../../model-manager/memory-store';
import { parseModelsFile } from '../../model-manager/models-file';
import { RedisModelRegistry } from '../../model-manager/redis-registry';
import type { RegistryFile, StoredRegistry } from '../../model-manager/stored-registry';
import { startRedisServer, type RedisServer } from '../helpers/redis';

const silent = pino({ level: 'silent' });

const FILE_V1 = `
stub:
  address: registry/stub:v5
  batch_size: 256
echo:
  command: node ./echo.js --rows 2
  env: { SECRET: hunter2 }
`;

const file = (text: string): RegistryFile => {
  const f = parseModelsFile(text, '/srv/models/models.yaml');
  expect(f.ok).toBe(true);
  return f;
};

/** Opens a registry on the suite's store; the same `place` means the same stored registry (a restart). */
type Opener = (place: string, f?: RegistryFile) => Promise<StoredRegistry>;

let redis: RedisServer;
let dir: string;

beforeAll(async () => {
  redis = await startRedisServer();
  dir = await mkdtemp(path.join(os.tmpdir(), 'tb-contract-'));
});

afterAll(async () => {
  await redis?.stop();
  await rm(redis.dir, { recursive: true, force: true });
  await rm(dir, { recursive: true, force: true });
});

const stores: [string, Opener][] = [
  ['redis', (place, f) => RedisModelRegistry.open({ redisUrl: redis.url, prefix: `${place}:`, logger: silent, file: f })],
  ['embedded (file)', (place, f) => EmbeddedModelRegistry.open({ registryFile: path.join(dir, `${place}.json`), logger: silent, file: f })],
];

describe.each(stores)('registry contract: %s', (_kind, openAt) => {
  let place: string;
  const opened: StoredRegistry[] = [];
  const open = async (f?: RegistryFile) => {
    const r = await openAt(place, f);
    opened.push(r);
    return r;
  };
  const closeAll = () => Promise.all(opened.splice(0).map((r) => r.close()));

  beforeEach(() => {
    place = `c-${randomUUID()}`;
  });
  afterEach(closeAll);

  test('seeding: file entries with command and cwd merged; source file', async () => {
    const reg = await open(file(FILE_V1));
    expect(reg.list().map((s) => [s.name, s.source])).toEqual([
      ['echo', 'file'],
      ['stub', 'file'],
    ]);
    expect(reg.get('stub')).toMatchObject({ image: 'registry/stub:v5', batch_size: 256, version: '1', max_replicas: 1 });
    expect(reg.get('echo')).toMatchObject({ command: ['node', './echo.js', '--rows', '2'], cwd: '/srv/models', env: { SECRET: 'hunter2' } });
    expect(reg.hasFileCommand('echo')).toBe(true);
  });

  test('exactly one change per effective write, none for a no-op; put, patch, delete', async () => {
    const reg = await open(file(FILE_V1));
    const seen: RegistryEvent[] = [];
    reg.on('change', (e) => seen.push(e));
    const { created } = await reg.put({ ...reg.get('stub')!, name: 'new' }, 'api');
    expect(created).toBe(true);
    expect(reg.get('new')?.source).toBe('api');
    expect((await reg.put({ ...reg.get('new')! }, 'api')).created).toBe(false); // same spec: no change
    expect((await reg.patch('new', { batch_size: 3, env: { K: 'v' } })).batch_size).toBe(3);
    expect(await reg.delete('new')).toBe(true);
    expect(await reg.delete('new')).toBe(false);
    expect(reg.get('new')).toBeUndefined();
    // Echoes of the writes come back through the store: let them land, then count.
    await reg.put({ ...reg.get('stub')!, name: 'marker' }, 'api');
    await new Promise<void>((r) => setImmediate(r));
    expect(seen.filter((e) => e.name === 'new').map((e) => e.type)).toEqual(['put', 'put', 'delete']);
    const patched = seen.filter((e) => e.name === 'new')[1];
    expect(patched.type === 'put' && patched.previous?.batch_size).toBe(256);
  });

  test('patch: merge, null resets, validation, not found', async () => {
    const reg = await open(file(FILE_V1));
    expect(await reg.patch('stub', { max_replicas: 3, address: 'registry/stub:v6' })).toMatchObject({ max_replicas: 3, image: 'registry/stub:v6', source: 'api' });
    expect((await reg.patch('stub', { max_replicas: null })).max_replicas).toBe(1);
    await expect(reg.patch('stub', { min_replicas: 5 })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      errors: ['model "stub": field "min_replicas" (5) must be <= "max_replicas" (1)'],
    });
    await expect(reg.patch('nope', { batch_size: 2 })).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(reg.put({ ...reg.get('stub')!, batch_size: -1 }, 'api')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });

  test('precedence across a restart: api entries survive and shadow the file; file entries follow the file', async () => {
    const a = await open(file(FILE_V1));
    await a.patch('stub', { batch_size: 8 });
    await closeAll();
    const b = await open(file('stub:\n  image: registry/stub:v9\nfresh:\n  image: fresh:1\n'));
    expect(b.get('stub')).toMatchObject({ source: 'api', batch_size: 8, image: 'registry/stub:v5' });
    expect(b.get('fresh')?.source).toBe('file');
    expect(b.get('echo')).toBeUndefined(); // gone from the file
    await b.reload(file('fresh:\n  image: fresh:2\n'));
    expect(b.get('fresh')?.image).toBe('fresh:2');
    expect(b.get('stub')?.source).toBe('api');
  });

  test('a bad file entry leaves the stored one alone', async () => {
    await open(file('simple:\n  image: s:1\n'));
    await closeAll();
    const f = parseModelsFile('simple:\n  image: s:2\n  batch_size: eight\n', '/x/models.yaml');
    const reg = await open(f);
    expect(reg.get('simple')?.image).toBe('s:1');
  });

  test('metadata of the last READY is kept across a restart', async () => {
    const saved = { version: '1', savedAt: 1, metadata: { name: 'stub', version: '1', maxBatch: 8, inputs: [{ name: 'IN', datatype: 'FP32' as const, shape: [-1, 3] }], outputs: [] } };
    const a = await open(file(FILE_V1));
    await a.saveMetadata('stub', saved);
    expect(await a.lastMetadata('stub')).toEqual(saved);
    expect(await a.lastMetadata('echo')).toBeUndefined();
    await closeAll();
    const b = await open(file(FILE_V1));
    expect(await b.lastMetadata('stub')).toEqual(saved);
  });
});

test('embedded without a file: in memory only, nothing survives', async () => {
  const a = await EmbeddedModelRegistry.open({ logger: silent, file: file(FILE_V1) });
  await a.patch('stub', { batch_size: 8 });
  await a.close();
  const b = await EmbeddedModelRegistry.open({ logger: silent, file: file(FILE_V1) });
  expect(b.get('stub')).toMatchObject({ source: 'file', batch_size: 256 });
  await b.close();
});
