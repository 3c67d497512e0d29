/**
 * The broker as a user starts it (the CLI from dist/): the embedded registry
 * by default (no Redis), persisted with --registry-file; live models.yaml
 * edits (add, change, bad edit kept out, remove); and the one clear error
 * when Redis is asked for and not there.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { freePort } from '../../bench/procs';
import { ROOT, getJson, postJson, row, simpleBody, simpleModel, waitFor } from '../helpers/broker';
import { exited, startCliBroker, type CliBroker } from '../helpers/cli-broker';

jest.setTimeout(120_000);

const TOKEN = 'embedded-token';
const auth = { authorization: `Bearer ${TOKEN}` };
let dir: string;
let broker: CliBroker | undefined;

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'tb-embedded-'));
});

afterEach(async () => {
  if (broker) {
    broker.child.kill('SIGTERM');
    await exited(broker.child);
    broker = undefined;
  }
  await rm(dir, { recursive: true, force: true });
});

const modelsPath = () => path.join(dir, 'models.yaml');
const writeModels = (models: Record<string, unknown>) => writeFile(modelsPath(), stringify({ models }));

async function start(): Promise<CliBroker> {
  const args = ['--runtime', 'process', '--models', modelsPath(), '--registry-file', path.join(dir, 'registry.json'), '--socket-dir', path.join(dir, 'sock'), '--broker-id', `emb-${process.pid}`];
  broker = await startCliBroker(args, { TB_ADMIN_TOKEN: TOKEN, TB_REDIS_URL: '' });
  return broker;
}

const infer = (b: CliBroker, model: string) => postJson(`${b.url}/v2/models/${model}/infer`, simpleBody([row(16, 1)], [row(16)]));
const served = (b: CliBroker, model: string) => waitFor(async () => (await infer(b, model)).status === 200, 30_000, `${model} served`);
const logged = (b: CliBroker, text: string) => waitFor(() => b.lines.some((l) => String(l.msg).includes(text)), 10_000, `log "${text}"`);

test('no --redis-url: the embedded registry serves, keeps admin changes in --registry-file, and follows models.yaml edits', async () => {
  await writeModels({ simple: simpleModel() });
  let b = await start();
  expect(b.lines.find((l) => l.msg === 'model registry open (embedded, persisted to a file)')).toBeDefined();
  await served(b, 'simple');
  const patched = await fetch(`${b.url}/admin/models/simple`, { method: 'PATCH', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ max_wait_ms: 2 }) });
  expect(patched.status).toBe(200);

  // Live edit: a new model.
  await writeModels({ simple: simpleModel(), second: simpleModel({ batch_size: 4 }) });
  await served(b, 'second');

  // A bad entry: logged, the last good one stays and keeps serving.
  await writeModels({ simple: simpleModel(), second: simpleModel({ batch_size: 'eight' }) });
  await logged(b, 'invalid entries ignored');
  expect((await infer(b, 'second')).status).toBe(200);
  expect((await getJson(`${b.url}/admin/models/second`)).batch_size).toBe(4);

  // A file that does not parse: ignored as a whole.
  await writeFile(modelsPath(), 'models: [\n');
  await logged(b, 'does not parse');
  expect((await infer(b, 'second')).status).toBe(200);

  // A changed entry, then a removed one.
  await writeModels({ simple: simpleModel(), second: simpleModel({ batch_size: 2 }) });
  await waitFor(async () => (await getJson(`${b.url}/admin/models/second`)).batch_size === 2, 10_000, 'second changed');
  await writeModels({ simple: simpleModel() });
  await waitFor(async () => (await fetch(`${b.url}/admin/models/second`)).status === 404, 10_000, 'second removed');
  expect((await infer(b, 'second')).status).toBe(404);
  // The admin entry was not touched by the file edits.
  expect(await getJson(`${b.url}/admin/models/simple`)).toMatchObject({ source: 'api', max_wait_ms: 2 });

  // Restart: the admin change was persisted to the registry file.
  b.child.kill('SIGTERM');
  await exited(b.child);
  b = await start();
  expect(await getJson(`${b.url}/admin/models/simple`)).toMatchObject({ source: 'api', max_wait_ms: 2 });
  await served(b, 'simple');
});

test('--redis-url with no Redis there: one error that names the fix, no contradictory line', async () => {
  await writeModels({ simple: simpleModel() });
  const port = await freePort();
  const child = spawn(process.execPath, [path.join(ROOT, 'dist/app/cli.js'), 'serve', '--models', modelsPath(), '--redis-url', `redis://127.0.0.1:${port}`, '--http-port', '0', '--metrics-port', '0', '--grpc-port', '0', '--zmq-port', '0'], {
    env: { ...process.env, TB_LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  expect(code).toBe(1);
  expect(err).toMatch(new RegExp(`cannot reach Redis at redis://127\\.0\\.0\\.1:${port} .*start redis-server there.*drop --redis-url to use the embedded registry`));
  expect(out).not.toMatch(/cached registry|serving/);
});
