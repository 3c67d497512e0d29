/**
 * Two brokers on one host (issue 12): `tensorbroker serve` twice with the process
 * runtime, the default socket folder layout under one --socket-dir, one Redis.
 * Each serves and restarts its own copies; a third broker with a live broker's id
 * refuses to start with a clear message and leaves that broker serving. Needs `npm run build`.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { exited, startCliBroker, type CliBroker } from '../helpers/cli-broker';
import { ROOT, modelMain, postJson, simpleBody, waitFor } from '../helpers/broker';
import { startRedis, type RedisHandle } from '../helpers/redis';
import { spawn } from 'node:child_process';

const haveDist = fs.existsSync(path.join(ROOT, 'dist/app/cli.js')) && fs.existsSync(modelMain('simple'));
const describeDist = haveDist ? describe : describe.skip;
if (!haveDist) console.warn('SKIPPING two-brokers: run `npm run build` first');

interface Instance { id: string; state: string; pid?: number }

async function copiesOf(b: CliBroker): Promise<Instance[]> {
  const res = await fetch(`${b.url}/admin/instances`);
  return ((await res.json()) as { instances: Instance[] }).instances;
}

async function infer(b: CliBroker, a: number): Promise<number> {
  const row = Array.from({ length: 16 }, () => a);
  const { status, json } = await postJson(`${b.url}/v2/models/simple/infer`, simpleBody([row], [Array.from({ length: 16 }, () => 1)]));
  expect(status).toBe(200);
  return json.outputs.find((o: { name: string }) => o.name === 'OUTPUT0').data[0];
}

/** Kills the broker's copy; waits until another copy of the same broker serves. */
async function killAndRestart(b: CliBroker): Promise<void> {
  const [old] = (await copiesOf(b)).filter((c) => c.state === 'ready');
  process.kill(old.pid!, 'SIGKILL');
  await waitFor(async () => (await copiesOf(b)).some((c) => c.id !== old.id && c.state === 'ready'), 30_000, 'a restarted copy');
  expect(await infer(b, 41)).toBe(42);
}

describeDist('two brokers on one host (process runtime)', () => {
  let redis: RedisHandle;
  let base: string;
  let models: string;
  const brokers: CliBroker[] = [];

  beforeAll(async () => {
    redis = await startRedis();
    base = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-2b-'));
    models = path.join(base, 'models.yaml');
    fs.writeFileSync(models, `models:\n  simple:\n    command: [${JSON.stringify(process.execPath)}, ${JSON.stringify(modelMain('simple'))}]\n    batch_size: 8\n`);
  });

  afterAll(async () => {
    for (const b of brokers) if (b.child.exitCode === null) b.child.kill('SIGTERM');
    await Promise.all(brokers.map((b) => exited(b.child)));
    await redis.stop();
    fs.rmSync(base, { recursive: true, force: true });
  });

  const args = (id: string) => ['--runtime', 'process', '--models', models, '--redis-url', redis.url, '--redis-prefix', `tb2-${process.pid}:`, '--socket-dir', base, '--broker-id', id, '--heartbeat-ms', '200'];

  test('each serves and restarts its own copies; a broker with a live id refuses to start', async () => {
    const a = await startCliBroker(args('alpha'));
    brokers.push(a);
    const b = await startCliBroker(args('beta'));
    brokers.push(b);
    await waitFor(async () => (await copiesOf(a)).some((c) => c.state === 'ready') && (await copiesOf(b)).some((c) => c.state === 'ready'), 30_000, 'both brokers ready');
    expect(fs.existsSync(path.join(base, 'alpha', 'link.sock'))).toBe(true);
    expect(fs.existsSync(path.join(base, 'beta', 'link.sock'))).toBe(true);
    expect(await infer(a, 1)).toBe(2);
    expect(await infer(b, 2)).toBe(3);

    // A third broker with alpha's id: exits 1 naming the cause, touches nothing of alpha's.
    const dup = spawn(process.execPath, [path.join(ROOT, 'dist/app/cli.js'), 'serve', '--http-port', '0', '--metrics-port', '0', '--grpc-port', '0', '--zmq-port', '0', ...args('alpha')], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    dup.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    await exited(dup);
    expect(dup.exitCode).toBe(1);
    expect(stderr).toMatch(/failed to start: another live broker holds the link socket .*alpha.*link\.sock \(broker id 'alpha'\).*TB_BROKER_ID/);
    expect(fs.existsSync(path.join(base, 'alpha', 'link.sock'))).toBe(true);

    await killAndRestart(a);
    await killAndRestart(b);
    await killAndRestart(a);
    expect(await infer(b, 5)).toBe(6);
  });
});
