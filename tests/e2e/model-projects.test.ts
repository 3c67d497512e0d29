/**
 * A model team's projects outside this repository, from the packed SDKs: `npm pack`
 * tarball and Python wheel. For each language: `tensorbroker init model`, install the
 * SDK artifact, `tensorbroker validate` the models.yaml it wrote, run the project's
 * own test (it calls the model through a broker), then serve it here and call it,
 * listing it with `tensorbroker models`. Process runtime; Docker: tests/docker/model-build.test.ts.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { ChildProcess } from 'node:child_process';
import { postJson, ROOT, waitFor } from '../helpers/broker';
import { exited, startCliBroker } from '../helpers/cli-broker';
import { startRedis, type RedisHandle } from '../helpers/redis';
import { buildPythonWheel, npmInstallOffline, packNodeSdk, pythonMissing, venvWithWheel } from '../helpers/sdk-artifacts';

const run = promisify(execFile);
const CLI = path.join(ROOT, 'dist', 'app', 'cli.js');
const cli = (args: string[], opts: { cwd?: string } = {}) => run(process.execPath, [CLI, ...args], { cwd: opts.cwd, maxBuffer: 16 << 20 });

/** The environment of a project outside the repo: nothing pointing back into the checkout. */
function outsideEnv(redisUrl: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, TENSORBROKER: `${process.execPath} ${CLI}`, TB_REDIS_URL: redisUrl, PYTHONNOUSERSITE: '1' };
  delete env.PYTHONPATH;
  delete env.NODE_PATH;
  return env;
}

/** Every relative require of the package's compiled files stays inside the package. */
function requiresLeavingPackage(pkgDir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (p.endsWith('.js')) {
        for (const m of fs.readFileSync(p, 'utf8').matchAll(/require\("(\.[^"]+)"\)/g)) {
          const target = path.resolve(path.dirname(p), m[1]);
          if (!target.startsWith(pkgDir + path.sep) || ![target, `${target}.js`, path.join(target, 'index.js')].some((f) => fs.existsSync(f))) out.push(`${p}: ${m[1]}`);
        }
      }
    }
  };
  walk(path.join(pkgDir, 'dist'));
  return out;
}

/** Serves a project's models.yaml with the process runtime; resolves when its model is READY per `tensorbroker models`. */
async function serveProject(redis: RedisHandle, project: string, tag: string): Promise<{ child: ChildProcess; url: string }> {
  const { child, url } = await startCliBroker([
    '--runtime', 'process', '--models', path.join(project, 'models.yaml'), '--redis-url', redis.url,
    '--redis-prefix', `${tag}-${process.pid}:`, '--socket-dir', path.join(project, '.sock'), '--broker-id', `${tag}-${process.pid}`,
  ], {}, { cwd: project });
  return { child, url };
}

describe('model projects outside the repo, from the packed SDKs', () => {
  let redis: RedisHandle;
  let work: string;
  let tgz: string;
  let wheel: string;
  let noPython: string | undefined;

  beforeAll(async () => {
    redis = await startRedis();
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-projects-'));
    fs.mkdirSync(path.join(work, 'artifacts'));
    noPython = await pythonMissing();
    [tgz, wheel] = await Promise.all([
      packNodeSdk(path.join(work, 'artifacts')),
      noPython ? Promise.resolve('') : buildPythonWheel(path.join(work, 'artifacts')),
    ]);
  }, 180_000);

  afterAll(async () => {
    await redis?.stop();
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  test('the npm tarball is self-contained: compiled SDK plus its own proto build, no source, no path out of the package', async () => {
    const { stdout } = await run('tar', ['-tzf', tgz]);
    const files = stdout.trim().split('\n');
    expect(files).toEqual(expect.arrayContaining([
      'package/package.json', 'package/dist/sdk/node/index.js', 'package/dist/sdk/node/index.d.ts',
      'package/dist/proto/tensor.js', 'package/dist/proto/link.js', 'package/dist/proto/client.js',
      'package/dist/proto/gen/link_pb.js', 'package/dist/proto/gen/client_pb.js',
    ]));
    expect(files.filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts'))).toEqual([]);
    expect(files.filter((f) => /core\/|bridges\/|task-manager\//.test(f))).toEqual([]);
  });

  test('node: init → npm install the tarball → validate → its own test through a broker → served and listed', async () => {
    const project = path.join(work, 'doubler-node');
    const init = await cli(['init', 'model', 'doubler-node', '--lang', 'node', '--dir', project, '--sdk', tgz]);
    expect(init.stdout).toContain('model.js');
    for (const f of ['package.json', 'model.js', 'test/model.test.js', 'Dockerfile', 'models.yaml', '.gitignore']) expect(fs.existsSync(path.join(project, f))).toBe(true);
    expect(JSON.parse(fs.readFileSync(path.join(project, 'package.json'), 'utf8')).dependencies).toEqual({ '@tensorbroker/sdk': `file:${tgz}` });
    await expect(cli(['init', 'model', 'doubler-node', '--lang', 'node', '--dir', project])).rejects.toMatchObject({ stderr: expect.stringContaining('is not empty') });

    await npmInstallOffline(project);
    const installed = path.join(project, 'node_modules', '@tensorbroker', 'sdk');
    expect(fs.lstatSync(installed).isSymbolicLink()).toBe(false); // unpacked from the tarball, not linked to sdk/node
    expect(requiresLeavingPackage(installed)).toEqual([]);

    const valid = await cli(['validate', path.join(project, 'models.yaml')]);
    expect(valid.stdout).toMatch(/ok {2}doubler-node \(image doubler-node:dev, command node model\.js\)/);

    // The project's own test: REST and the packaged ZmqClient, through a broker it starts.
    const own = await run('npm', ['test'], { cwd: project, env: outsideEnv(redis.url), maxBuffer: 16 << 20 });
    expect(own.stdout).toMatch(/(#|ℹ) pass 2\n/);
    expect(own.stdout).toMatch(/(#|ℹ) fail 0/);

    const { child, url } = await serveProject(redis, project, 'node-proj');
    try {
      await waitFor(async () => JSON.parse((await cli(['models', '--url', url, '--json'])).stdout)[0]?.phase === 'READY', 60_000, 'doubler-node READY');
      const rows = JSON.parse((await cli(['models', '--url', url, '--json'])).stdout);
      expect(rows).toEqual([{ name: 'doubler-node', version: '1', phase: 'READY', reason: '', copies: '1/1', runtime: 'process', runs: 'command node model.js' }]);
      expect((await cli(['models', '--url', url])).stdout).toMatch(/^MODEL +VERSION +PHASE +COPIES +RUNTIME +RUNS[^\n]*\ndoubler-node +1 +READY +1\/1 +process +command node model\.js/);
      const r = await postJson(`${url}/v2/models/doubler-node/infer`, { inputs: [{ name: 'INPUT', datatype: 'FP32', shape: [1, 4], data: [1, -2, 3.5, 0] }] });
      expect(r.status).toBe(200);
      expect(r.json.outputs).toEqual([{ name: 'OUTPUT', datatype: 'FP32', shape: [1, 4], data: [2, -4, 7, 0] }]);
    } finally {
      child.kill('SIGTERM');
      await exited(child);
    }
  }, 240_000);

  test('python: init → venv with the wheel → validate → its own test through a broker → served and listed', async () => {
    if (noPython) {
      process.stdout.write(`skipped: ${noPython}\n`);
      return;
    }
    const project = path.join(work, 'doubler-py');
    await cli(['init', 'model', 'doubler-py', '--lang', 'python', '--dir', project, '--sdk', wheel]);
    for (const f of ['model.py', 'test_model.py', 'Dockerfile', 'models.yaml', 'requirements.txt']) expect(fs.existsSync(path.join(project, f))).toBe(true);
    expect(fs.readFileSync(path.join(project, 'model.py'), 'utf8')).toContain('class DoublerPy(Model)');
    const python = await venvWithWheel(project, wheel);

    // Both packages come from the wheel in the venv: the model SDK imports the client's tensor code.
    const where = await run(python, ['-c', 'import tensorbroker_model, tensorbroker_client.tensors as t; print(tensorbroker_model.__file__); print(t.__file__)'], { cwd: os.tmpdir(), env: outsideEnv(redis.url) });
    for (const f of where.stdout.trim().split('\n')) expect(f.startsWith(path.join(project, '.venv'))).toBe(true);

    const valid = await cli(['validate', path.join(project, 'models.yaml')]);
    expect(valid.stdout).toContain('ok  doubler-py (image doubler-py:dev, command .venv/bin/python model.py)');

    const own = await run(python, ['-m', 'unittest', '-v'], { cwd: project, env: outsideEnv(redis.url), maxBuffer: 16 << 20 });
    expect(own.stderr).toMatch(/test_rest \(test_model\.BrokerTest[^\n]*ok/);
    expect(own.stderr).toMatch(/test_zmq \(test_model\.BrokerTest[^\n]*ok/);
    expect(own.stderr).toMatch(/\nOK/);

    const { child, url } = await serveProject(redis, project, 'py-proj');
    try {
      await waitFor(async () => JSON.parse((await cli(['models', '--url', url, '--json'])).stdout)[0]?.phase === 'READY', 60_000, 'doubler-py READY');
      const r = await postJson(`${url}/v2/models/doubler-py/infer`, { inputs: [{ name: 'INPUT', datatype: 'FP32', shape: [2, 4], data: [1, 2, 3, 4, 0.25, 0, -1, 8] }] });
      expect(r.status).toBe(200);
      expect(r.json.outputs).toEqual([{ name: 'OUTPUT', datatype: 'FP32', shape: [2, 4], data: [2, 4, 6, 8, 0.5, 0, -2, 16] }]);
    } finally {
      child.kill('SIGTERM');
      await exited(child);
    }
  }, 240_000);
});
