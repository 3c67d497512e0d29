/**
 * The Python client (sdk/python) against the ZeroMQ bridge: the example script
 * and a check script run with Debian's /usr/bin/python3 (python3-zmq,
 * python3-numpy, python3-protobuf). Skipped, with the reason printed, only when
 * those modules are missing.
 */
import { execFile, spawnSync } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import pino from 'pino';
import { startZmqBridge, type ZmqBridge } from '../../bridges/zmq/server';
import { modelMain, ROOT, startTestBroker, waitReady, type TestBroker } from '../helpers/broker';

const PYTHON = '/usr/bin/python3';
const env = { ...process.env, PYTHONPATH: path.join(ROOT, 'sdk', 'python'), PYTHONNOUSERSITE: '1', PYTHONDONTWRITEBYTECODE: '1' };

function pythonMissing(): string | undefined {
  const r = spawnSync(PYTHON, ['-c', 'import zmq, numpy, google.protobuf'], { env, encoding: 'utf8' });
  if (r.error) return `${PYTHON} cannot run (${r.error.message})`;
  if (r.status !== 0) return `${PYTHON} lacks a module: ${r.stderr.trim().split('\n').pop()}`;
  return undefined;
}

const missing = pythonMissing();
if (missing) {
  console.warn(`SKIPPING the Python client tests: ${missing}. Install python3-zmq python3-numpy python3-protobuf.`);
}
const describeIfPython = missing ? describe.skip : describe;

const run = promisify(execFile);
const python = (args: string[]) => run(PYTHON, args, { env, cwd: ROOT, timeout: 60_000 });

describeIfPython('Python client over the ZeroMQ bridge', () => {
  let b: TestBroker;
  let bridge: ZmqBridge;

  beforeAll(async () => {
    b = await startTestBroker({
      models: {
        simple: { command: ['node', modelMain('simple')], batch_size: 8 },
        sleepy: { command: ['node', modelMain('sleepy')], batch_size: 8, env: { SLEEPY_A_MS: '200', SLEEPY_B_MS: '0' } },
      },
    });
    await Promise.all(['simple', 'sleepy'].map((m) => waitReady(b, m)));
    bridge = await startZmqBridge({ broker: b.running.broker, host: '127.0.0.1', port: 0, maxMessageBytes: 64 << 20, logger: pino({ level: 'silent' }) });
  });
  afterAll(async () => {
    await bridge?.close();
    await b?.stop();
  });

  test('the generated client_pb2 imports with this protobuf runtime', async () => {
    const { stdout } = await python(['-c', 'import google.protobuf as p; from tensorbroker_client import client_pb2; print(p.__version__, client_pb2.InferRequest.DESCRIPTOR.full_name)']);
    expect(stdout).toContain('tensorbroker.client.v1.InferRequest');
  });

  test('examples/clients/zmq_client.py: sums, 32 pipelined requests, NOT_FOUND', async () => {
    const { stdout } = await python([path.join('examples', 'clients', 'zmq_client.py'), bridge.endpoint, '--json']);
    const r = JSON.parse(stdout) as { sum: number[][]; diff: number[][]; dtype: string; pipelined: number[]; unknown_model_error: string };
    const a = Array.from({ length: 32 }, (_, i) => i);
    expect(r.sum.flat()).toEqual(a.map((v) => v + 1));
    expect(r.diff.flat()).toEqual(a.map((v) => v - 1));
    expect(r.dtype).toBe('int32');
    expect(r.pipelined).toEqual(Array.from({ length: 32 }, (_, i) => i + 1));
    expect(r.unknown_model_error).toBe('NOT_FOUND');
  });

  test('sdk/python/tests/bridge_check.py: datatypes, BYTES, pipelining, FP32, error codes, timeouts', async () => {
    const res = await python([path.join('sdk', 'python', 'tests', 'bridge_check.py'), bridge.endpoint]).catch((e: { stdout?: string; stderr?: string }) => e);
    const stdout = (res as { stdout?: string }).stdout ?? '';
    let report: { checks: Record<string, string> };
    try {
      report = JSON.parse(stdout);
    } catch {
      throw new Error(`bridge_check.py printed no report: ${stdout}\n${(res as { stderr?: string }).stderr ?? ''}`);
    }
    expect(report.checks).toEqual({
      datatype_mapping: 'ok', bytes_mapping: 'ok', simple_sums: 'ok', pipelined: 'ok', fp32_echo: 'ok', errors: 'ok',
    });
  });
});
