/**
 * `tensorbroker build` of projects made with `tensorbroker init` (outside the repo,
 * SDKs from the packed artifacts), on the offline bases (never pulled): docker's steps
 * as progress, the smoke test's READY, then each image registered and answering through
 * a broker with the Docker runtime. A project that cannot start fails the build.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { OFFLINE_BASE } from '../../examples/build-images';
import { postJson, ROOT, startTestBroker, waitReady, type TestBroker } from '../helpers/broker';
import { buildPythonWheel, npmInstallOffline, packNodeSdk, pythonMissing, venvWithWheel } from '../helpers/sdk-artifacts';

jest.setTimeout(600_000);

const run = promisify(execFile);
const CLI = path.join(ROOT, 'dist', 'app', 'cli.js');
const cli = (args: string[]) => run(process.execPath, [CLI, ...args], { maxBuffer: 32 << 20, env: { ...process.env, TB_BASE_IMAGE: process.env.TB_BASE_IMAGE ?? OFFLINE_BASE } });
const id = randomBytes(3).toString('hex');
const tags = { node: `tb-test/doubler-node:${id}`, python: `tb-test/doubler-py:${id}`, broken: `tb-test/broken:${id}` };

describe('tensorbroker build (Docker)', () => {
  let work: string;
  let b: TestBroker | undefined;
  let noPython: string | undefined;

  beforeAll(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-build-test-'));
    noPython = await pythonMissing();
  });
  afterAll(async () => {
    await b?.stop();
    await run('docker', ['rmi', '-f', ...Object.values(tags)]).catch(() => undefined);
    fs.rmSync(work, { recursive: true, force: true });
  });

  test('node and python projects: built with progress, smoke-tested, registered, answering with the Docker runtime', async () => {
    const artifacts = path.join(work, 'artifacts');
    fs.mkdirSync(artifacts);
    const tgz = await packNodeSdk(artifacts);
    const nodeProject = path.join(work, 'doubler-node');
    await cli(['init', 'model', 'doubler-node', '--lang', 'node', '--dir', nodeProject, '--sdk', tgz]);
    await npmInstallOffline(nodeProject);
    const built = await cli(['build', nodeProject, '--tag', tags.node]);
    expect(built.stdout.trim()).toBe(tags.node);
    expect(built.stderr).toMatch(/^Step 1\/\d+ : ARG BASE_IMAGE/m);
    expect(built.stderr).toMatch(/smoke test: READY from [^\n]*: model doubler-node, max batch 8, inputs INPUT FP32 \[-1, 4\]/);

    const models: Record<string, Record<string, unknown>> = { 'doubler-node': { image: tags.node, batch_size: 8 } };
    if (!noPython) {
      const wheel = await buildPythonWheel(artifacts);
      const pyProject = path.join(work, 'doubler-py');
      await cli(['init', 'model', 'doubler-py', '--lang', 'python', '--dir', pyProject, '--sdk', wheel]);
      await venvWithWheel(pyProject, wheel);
      const py = await cli(['build', pyProject, '--tag', tags.python]);
      expect(py.stderr).toContain(`python SDK from ${path.join(pyProject, '.venv')}`);
      expect(py.stderr).toMatch(/smoke test: READY from [^\n]*: model doubler-py/);
      models['doubler-py'] = { image: tags.python, batch_size: 8 };
    } else {
      process.stdout.write(`python part skipped: ${noPython}\n`);
    }

    b = await startTestBroker({ runtime: 'docker', models });
    for (const m of Object.keys(models)) {
      await waitReady(b, m, 120_000);
      const r = await postJson(`${b.url}/v2/models/${m}/infer`, { inputs: [{ name: 'INPUT', datatype: 'FP32', shape: [1, 4], data: [1, 2, 3, -4] }] });
      expect(r.status).toBe(200);
      expect(r.json.outputs[0].data).toEqual([2, 4, 6, -8]);
    }
  });

  test('a model that crashes on start fails the build with its output', async () => {
    const project = path.join(work, 'broken');
    await cli(['init', 'model', 'broken', '--lang', 'python', '--dir', project]);
    fs.writeFileSync(path.join(project, 'model.py'), 'raise SystemExit("no weights found")\n');
    const err = await cli(['build', project, '--tag', tags.broken, '--smoke-timeout-ms', '60000']).catch((e: { code: number; stderr: string }) => e);
    expect(err).toMatchObject({ code: 1 });
    expect((err as { stderr: string }).stderr).toMatch(/exited with 1 before READY[^]*no weights found/);
  });
});
