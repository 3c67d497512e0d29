/**
 * The gRPC bridge against an independent client: tests/clients/grpc_client.py
 * (Debian's python3-grpcio, stubs generated at run time from
 * proto/grpc_service.proto with grpc_tools.protoc, tensors built with numpy).
 * Skipped, with the reason printed, when /usr/bin/python3 lacks those modules.
 */
import { spawnSync, spawn } from 'node:child_process';
import path from 'node:path';
import pino from 'pino';
import { startGrpcBridge, type GrpcBridge } from '../../bridges/grpc/server';
import { modelMain, ROOT, startTestBroker, waitFor, type TestBroker } from '../helpers/broker';

const PYTHON = '/usr/bin/python3';
const probe = spawnSync(PYTHON, ['-c', 'import grpc, grpc_tools.protoc, numpy'], { encoding: 'utf8' });
const missing = probe.status !== 0 ? (probe.error?.message ?? probe.stderr.trim().split('\n').pop() ?? 'unknown error') : undefined;
if (missing) {
  console.warn(`Skipping the Python gRPC client test: ${PYTHON} cannot import grpc, grpc_tools and numpy (${missing}). Install python3-grpcio python3-grpc-tools python3-numpy.`);
}
const suite = missing ? describe.skip : describe;

function runClient(port: number): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(PYTHON, [path.join(ROOT, 'tests', 'clients', 'grpc_client.py'), '--port', String(port), '--proto-dir', path.join(ROOT, 'proto')], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

suite('gRPC bridge with the Python grpcio client', () => {
  let b: TestBroker;
  let bridge: GrpcBridge;

  beforeAll(async () => {
    b = await startTestBroker({ models: { simple: { command: ['node', modelMain('simple')], batch_size: 8 } } });
    bridge = await startGrpcBridge({
      broker: b.running.broker,
      host: '127.0.0.1',
      port: 0,
      maxMessageBytes: 64 * 1024 * 1024,
      logger: pino({ level: process.env.TB_TEST_LOG ?? 'silent' }),
      version: 'py-test',
    });
    await waitFor(() => b.running.broker.modelReady('simple').ready, 30_000, 'simple ready');
  });
  afterAll(async () => {
    await bridge?.close(1000);
    await b?.stop();
  });

  test('health, metadata, config, raw and typed ModelInfer, NOT_FOUND and a stream, all from Python', async () => {
    const run = await runClient(bridge.port);
    if (run.code !== 0) console.error(run.stderr);
    const out = JSON.parse(run.stdout.trim().split('\n').pop()!);
    expect(out.checks).toEqual({ raw_sums: true, raw_diffs: true, typed_one_output: true, typed_sums: true, stream: true });
    expect(out).toMatchObject({
      ok: true,
      live: true,
      ready: true,
      server: { name: 'tensorbroker', version: 'py-test' },
      metadata: {
        name: 'simple',
        versions: ['1'],
        inputs: [{ name: 'INPUT0', datatype: 'INT32', shape: [-1, 16] }, { name: 'INPUT1', datatype: 'INT32', shape: [-1, 16] }],
      },
      config: { name: 'simple', max_batch_size: 8, input: [{ name: 'INPUT0', data_type: 'TYPE_INT32', dims: [16] }, { name: 'INPUT1' }], dynamic_batching: true },
      infer: { id: 'py-1', model_name: 'simple', model_version: '1', outputs: [{ name: 'OUTPUT0', datatype: 'INT32', shape: [2, 16] }, { name: 'OUTPUT1' }] },
      not_found: { code: 'NOT_FOUND' },
    });
    expect(out.server.extensions).toContain('model_configuration');
    expect(out.not_found.details).toContain("unknown model 'no-such-model'");
    expect(run.code).toBe(0);
  });
});
