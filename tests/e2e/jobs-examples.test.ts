/**
 * The job clients the README shows (examples/jobs/client.mjs and client.py) run
 * against a real broker with jobs on (real redis-server, the simple model).
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { ROOT, simpleModel, startTestBroker, waitReady, type TestBroker } from '../helpers/broker';

const run = promisify(execFile);
let b: TestBroker;

beforeAll(async () => {
  b = await startTestBroker({ models: { simple: simpleModel() }, config: { jobs: { enabled: true, leaseMs: 1000 } } });
  await waitReady(b, 'simple');
});

afterAll(() => b?.stop());

const expected = `OUTPUT0 ${JSON.stringify(Array.from({ length: 16 }, (_, i) => i + 1))}`;

test('the Node client submits a job and prints its result', async () => {
  const { stdout } = await run(process.execPath, [path.join(ROOT, 'examples/jobs/client.mjs')], { env: { ...process.env, TB_URL: b.url } });
  expect(stdout).toMatch(/^job [A-Za-z0-9_-]{22} (queued|running|succeeded)$/m);
  expect(stdout).toContain(expected);
});

test('the Python client does the same, and the same Idempotency-Key returns the same job', async () => {
  const env = { ...process.env, TB_URL: b.url, TB_JOB_KEY: `py-${Date.now()}` };
  const first = await run('python3', [path.join(ROOT, 'examples/jobs/client.py')], { env });
  expect(first.stdout).toContain(expected);
  const again = await run('python3', [path.join(ROOT, 'examples/jobs/client.py')], { env });
  expect(again.stdout.split('\n')[0].split(' ')[1]).toBe(first.stdout.split('\n')[0].split(' ')[1]);
});
