/**
 * `tensorbroker serve` as a user runs it: the compiled CLI, the root
 * models.yaml, the process runtime; then SIGTERM for a graceful stop.
 */
import { execFileSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { getJson, postJson, ROOT, row, simpleBody, waitFor } from '../helpers/broker';
import { startCliBroker } from '../helpers/cli-broker';
import { startRedis, type RedisHandle } from '../helpers/redis';

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe('tensorbroker serve (CLI)', () => {
  let redis: RedisHandle;
  let dir: string;
  let child: ChildProcess;
  let lines: Record<string, unknown>[] = [];
  let url = '';

  beforeAll(async () => {
    redis = await startRedis();
    dir = await mkdtemp(path.join(os.tmpdir(), 'tb-cli-'));
    ({ child, lines, url } = await startCliBroker([
      '--runtime', 'process', '--models', path.join(ROOT, 'models.yaml'),
      '--redis-url', redis.url, '--redis-prefix', `cli-${process.pid}:`,
      '--socket-dir', path.join(dir, 'sock'), '--broker-id', `cli-${process.pid}`,
    ], { TB_ADMIN_TOKEN: 'secret-admin-token' }, { cwd: dir, servingMs: 20_000 }));
    const serving = lines.find((l) => l.msg === 'tensorbroker serving')!;
    expect(serving.runtime).toBe('process');
    await waitFor(async () => (await fetch(`${url}/v2/health/ready`)).status === 200, 30_000, 'server ready');
  });

  afterAll(async () => {
    if (child && child.exitCode === null) child.kill('SIGKILL');
    await redis?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('serves both example models from the root models.yaml', async () => {
    const res = await postJson(`${url}/v2/models/simple/infer`, simpleBody([row(16)], [row(16)]));
    expect(res.status).toBe(200);
    const sleepy = await postJson(`${url}/v2/models/sleepy/infer`, { inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [1, 3], data: [1, 2, 3] }] });
    expect(sleepy.status).toBe(200);
    expect((await getJson(`${url}/v2/models/sleepy/config`)).max_batch_size).toBe(32);
  });

  test('logs are JSON lines with request ids, and never contain the admin token', () => {
    expect(lines.length).toBeGreaterThan(0);
    expect(lines.every((l) => !('raw' in l))).toBe(true);
    expect(JSON.stringify(lines)).not.toContain('secret-admin-token');
  });

  test('SIGTERM: model processes stop, exit code 0', async () => {
    const copies = execFileSync('pgrep', ['-P', String(child.pid)], { encoding: 'utf8' }).trim().split('\n').map(Number);
    expect(copies.length).toBe(2);
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(copies.filter(alive)).toEqual([]);
    expect(lines.some((l) => l.msg === 'stopped')).toBe(true);
  });
});
