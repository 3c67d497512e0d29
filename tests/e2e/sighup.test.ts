/** SIGHUP drains like SIGTERM: the request in flight is answered, the copies stop, exit code 0. */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { modelMain, postJson, waitFor } from '../helpers/broker';
import { startCliBroker } from '../helpers/cli-broker';
import { startRedis, type RedisHandle } from '../helpers/redis';

describe('tensorbroker serve and SIGHUP', () => {
  let redis: RedisHandle;
  let dir: string;

  beforeAll(async () => {
    redis = await startRedis();
    dir = await mkdtemp(path.join(os.tmpdir(), 'tb-hup-'));
  });
  afterAll(async () => {
    await redis?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('the request in flight is answered, then the broker stops with code 0', async () => {
    const models = path.join(dir, 'models.yaml');
    await writeFile(models, stringify({ models: { sleepy: { command: ['node', modelMain('sleepy')], batch_size: 1, env: { SLEEPY_A_MS: '400', SLEEPY_B_MS: '0' } } } }));
    const { child, lines, url, metricsUrl } = await startCliBroker([
      '--runtime', 'process', '--models', models, '--redis-url', redis.url, '--redis-prefix', `hup-${process.pid}:`,
      '--socket-dir', path.join(dir, 'sock'), '--broker-id', `hup-${process.pid}`,
    ], {}, { cwd: dir });
    try {
      await waitFor(async () => (await fetch(`${url}/v2/health/ready`)).status === 200, 30_000, 'server ready');
      const answer = postJson(`${url}/v2/models/sleepy/infer`, { inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [1, 1], data: [1] }] });
      // The batch is running on the copy (busy) when the signal comes.
      await waitFor(async () => /tb_copies\{model="sleepy",state="busy"\} 1/.test(await (await fetch(metricsUrl)).text()), 10_000, 'batch in flight');
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      child.kill('SIGHUP');
      expect((await answer).status).toBe(200);
      expect(await exited).toBe(0);
      expect(lines.some((l) => l.msg === 'signal received' && l.signal === 'SIGHUP')).toBe(true);
      expect(lines.some((l) => l.msg === 'stopped')).toBe(true);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });
});
