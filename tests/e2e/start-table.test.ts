/**
 * A readable start: on a terminal `tensorbroker serve` prints a table of the models and
 * the bridge URLs; piped, stdout stays JSON lines. GET / points to /v2 and the docs.
 * The terminal is a real pseudo-terminal (util-linux `script`).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { modelMain, ROOT, waitFor } from '../helpers/broker';
import { exited, startCliBroker } from '../helpers/cli-broker';
import { startRedis, type RedisHandle } from '../helpers/redis';

const run = promisify(execFile);
const CLI = path.join(ROOT, 'dist', 'app', 'cli.js');
const hasScript = fs.existsSync('/usr/bin/script');

describe('tensorbroker serve: start table, GET /, --help', () => {
  let redis: RedisHandle;
  let dir: string;
  let models: string;
  const args = (tag: string) => ['--runtime', 'process', '--models', models, '--redis-url', redis.url, '--redis-prefix', `${tag}-${process.pid}:`,
    '--socket-dir', path.join(dir, tag), '--broker-id', `${tag}-${process.pid}`];

  beforeAll(async () => {
    redis = await startRedis();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-table-'));
    models = path.join(dir, 'models.yaml');
    fs.writeFileSync(models, `models:\n  simple:\n    command: [node, ${JSON.stringify(modelMain('simple'))}]\n    batch_size: 8\n  later:\n    command: [node, ${JSON.stringify(modelMain('simple'))}]\n    min_replicas: 0\n`);
  });
  afterAll(async () => {
    await redis?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('serve --help names the three bridges', async () => {
    const { stdout } = await run(process.execPath, [CLI, 'serve', '--help']);
    expect(stdout).toMatch(/KServe v2 REST/);
    expect(stdout).toMatch(/KServe v2 gRPC/);
    expect(stdout).toMatch(/ZeroMQ/);
  });

  test('piped: JSON log lines only; GET / points to /v2 and the docs', async () => {
    const { child, lines, url } = await startCliBroker(args('piped'), {}, { cwd: dir });
    try {
      await waitFor(async () => (await fetch(`${url}/v2/models/simple/ready`)).status === 200, 30_000, 'simple ready');
      const res = await fetch(`${url}/`);
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toMatch(/^application\/json/);
      const body = (await res.json()) as { docs: { protocol: string } };
      expect(body).toMatchObject({ name: 'tensorbroker', kserve_v2: '/v2', endpoints: { infer: 'POST /v2/models/{name}/infer' } });
      expect(body.docs.protocol).toMatch(/^https:\/\//);
      expect(lines.filter((l) => 'raw' in l)).toEqual([]);
    } finally {
      child.kill('SIGTERM');
      await exited(child);
    }
    expect(lines.filter((l) => 'raw' in l)).toEqual([]);
  });

  (hasScript ? test : test.skip)('on a terminal: a table of models (runtime, phase, copies) and bridge URLs', async () => {
    // `script` gives the broker a pseudo-terminal as stdout; `exec` makes the shell's pid the broker's.
    const cmd = ['exec', process.execPath, CLI, 'serve', '--http-port', '0', '--grpc-port', '0', '--metrics-port', '0', '--zmq-port', '0', ...args('tty')].map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(' ');
    const child: ChildProcess = spawn('script', ['-qfec', cmd, '/dev/null'], { cwd: dir, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    try {
      await waitFor(() => /ZeroMQ +tcp:\/\//.test(out) || child.exitCode !== null, 60_000, 'start table');
      const text = out.replace(/\r/g, '');
      if (!/^simple /m.test(text)) throw new Error(`no table in:\n${text}`);
      expect(text).toMatch(/^MODEL +RUNTIME +PHASE +COPIES$/m);
      expect(text).toMatch(/^simple +process +READY +1\/1$/m);
      expect(text).toMatch(/^later +process +UNAVAILABLE \(at-zero: scaled to zero[^\n]* +0\/0$/m);
      const rest = /^REST \(KServe v2\) +(http:\/\/127\.0\.0\.1:\d+)\/v2$/m.exec(text);
      expect(rest).not.toBeNull();
      expect(text).toMatch(/^gRPC \(KServe v2\) +127\.0\.0\.1:\d+$/m);
      expect(text).toMatch(/^metrics +http:\/\/127\.0\.0\.1:\d+\/metrics$/m);
      // The URL in the table is the one that answers.
      expect((await fetch(`${rest![1]}/v2/models/simple/ready`)).status).toBe(200);
    } finally {
      // The broker is the only child of `script` (exec'd by its shell): SIGTERM it for a graceful stop.
      const { stdout } = await run('ps', ['-o', 'pid=', '--ppid', String(child.pid)]).catch(() => ({ stdout: '' }));
      const pid = Number(stdout.trim().split('\n')[0]);
      if (pid > 0) process.kill(pid, 'SIGTERM');
      else child.kill('SIGTERM');
      await exited(child);
    }
  }, 120_000);
});
