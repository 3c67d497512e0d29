/**
 * The Python model SDK (sdk/python/tensorbroker_model) against a real ZeroMQ ROUTER
 * playing the broker: tests/python/sdk_test_model.py run by Debian's /usr/bin/python3.
 * Skipped, with the reason printed, only when python3-zmq/numpy/protobuf are missing.
 */
import { spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { create } from '@bufbuild/protobuf';
import { EndSequenceSchema, EndSequence_Reason, ShutdownSchema, tensorsFromFrames } from '../../proto/link';
import type { Tensor } from '../../proto/tensor';
import { exitOf, startCopy, type FakeLinkBroker } from '../helpers/fake-link-broker';
import { ROOT } from '../helpers/broker';

const PYTHON = '/usr/bin/python3';
const MODEL = path.join(ROOT, 'tests', 'python', 'sdk_test_model.py');
const PY_VARS = { PYTHONNOUSERSITE: '1', PYTHONDONTWRITEBYTECODE: '1' };
const pyEnv = { ...process.env, ...PY_VARS };

function pythonMissing(): string | undefined {
  const r = spawnSync(PYTHON, ['-c', 'import zmq, numpy, google.protobuf'], { env: pyEnv, encoding: 'utf8' });
  if (r.error) return `${PYTHON} cannot run (${r.error.message})`;
  if (r.status !== 0) return `${PYTHON} lacks a module: ${r.stderr.trim().split('\n').pop()}`;
  return undefined;
}
const missing = pythonMissing();
if (missing) console.warn(`SKIPPING the Python SDK tests: ${missing}. Install python3-zmq python3-numpy python3-protobuf.`);
const describeIfPython = missing ? describe.skip : describe;

function fp32(rows: number[][]): Tensor {
  const a = Float32Array.from(rows.flat());
  return { name: 'X', datatype: 'FP32', shape: [rows.length, rows[0].length], data: Buffer.from(a.buffer) };
}
const floats = (t: Tensor) => Array.from(new Float32Array(t.data.buffer.slice(t.data.byteOffset, t.data.byteOffset + t.data.length)));
const ints = (t: Tensor) => Array.from(new Int32Array(t.data.buffer.slice(t.data.byteOffset, t.data.byteOffset + t.data.length)));
function bytesStrings(t: Tensor): string[] {
  const out: string[] = [];
  for (let p = 0; p < t.data.length;) {
    const n = t.data.readUInt32LE(p);
    out.push(t.data.subarray(p + 4, p + 4 + n).toString());
    p += 4 + n;
  }
  return out;
}
const outputsOf = (r: { value: { tensors: Parameters<typeof tensorsFromFrames>[0] }; frames: Buffer[] }) =>
  Object.fromEntries(tensorsFromFrames(r.value.tensors, r.frames).map((t) => [t.name, t]));

describeIfPython('Python model SDK', () => {
  let dir: string;
  const children: ChildProcess[] = [];
  const brokers: FakeLinkBroker[] = [];

  async function start(name: string, env: Record<string, string> = {}) {
    const copy = await startCopy(dir, [PYTHON, MODEL], name, { ...PY_VARS, TB_MODEL: 'py-sdk', ...env });
    brokers.push(copy.broker);
    children.push(copy.child);
    return copy;
  }

  beforeAll(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-pysdk-')); });
  afterAll(() => {
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
    for (const b of brokers) b.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  describe('one copy', () => {
    let broker: FakeLinkBroker;
    let child: ChildProcess;
    let stderr: () => string;
    beforeAll(async () => { ({ broker, child, stderr } = await start('py-1')); });

    test('sends READY with its metadata (the broker\'s model name wins)', async () => {
      const ready = await broker.next('ready', 20_000);
      expect(ready.value).toMatchObject({ protocolVersion: 2, model: 'py-sdk', version: '7', maxBatch: 8, credits: 1, maxSequences: 4, pid: child.pid });
      expect(ready.value.inputs.map((s) => [s.name, s.datatype, s.shape.map(Number)])).toEqual([['X', 'FP32', [-1, 4]]]);
      expect(ready.value.outputs.map((s) => [s.name, s.datatype])).toEqual([['Y', 'FP32'], ['VIEW', 'BOOL'], ['COUNT', 'INT32'], ['LAST_END', 'BYTES']]);
    });

    test('sends heartbeats every TB_HEARTBEAT_MS', async () => {
      const n = broker.heartbeats.length;
      await broker.heartbeatsSeen(n + 3, 3000);
      expect(stderr()).toMatch(/^\{"level":"info","time":\d+,"copyId":"py-1","model":"py-sdk","loadMs":\d+,"maxBatch":8,"msg":"ready"\}$/m);
    });

    test('a batch of 3 rows in 2 items: outputs, zero-copy input view, compute time', async () => {
      const x = [[1, 2, 3, 4], [5, 6, 7, 8], [-1.5, 0, 0.25, 9]];
      const r = await broker.batch(1n, [['a', 1], ['b', 2]], [fp32(x)]);
      expect(r.value.error).toBe('');
      expect(r.value.items.map((i) => i.error)).toEqual(['', '']);
      expect(r.value.computeNs).toBeGreaterThan(0n);
      const out = outputsOf(r);
      expect(Object.keys(out)).toEqual(['Y', 'VIEW', 'COUNT', 'LAST_END']);
      expect(out.Y.shape).toEqual([3, 4]);
      expect(floats(out.Y)).toEqual(x.flat().map((v) => v * 2));
      expect([...out.VIEW.data]).toEqual([1, 1, 1]);
      expect(ints(out.COUNT)).toEqual([0, 0, 0]);
      expect(bytesStrings(out.LAST_END)).toEqual(['', '', '']);
    });

    test('only the outputs the broker names are sent', async () => {
      const r = await broker.batch(2n, [['a', 1]], [fp32([[1, 1, 1, 1]])], ['COUNT']);
      expect(Object.keys(outputsOf(r))).toEqual(['COUNT']);
    });

    test('a rejected row fails only its own item', async () => {
      const r = await broker.batch(3n, [['ok', 1], ['bad', 2], ['ok2', 1]], [fp32([[1, 0, 0, 0], [2, 0, 0, 0], [999, 0, 0, 0], [3, 0, 0, 0]])]);
      expect(r.value.error).toBe('');
      expect(r.value.items.map((i) => i.error)).toEqual(['', 'row rejected by model', '']);
      expect(floats(outputsOf(r).Y).filter((_, i) => i % 4 === 0)).toEqual([2, 4, 1998, 6]);
    });

    test('an exception fails the batch, the copy lives on', async () => {
      const bad = await broker.batch(4n, [['r', 1]], [fp32([[-1, 0, 0, 0]])]);
      expect(bad.value.error).toBe('asked to raise');
      expect(bad.value.items).toHaveLength(0);
      expect(bad.frames).toHaveLength(0);
      const good = await broker.batch(5n, [['r', 1]], [fp32([[4, 0, 0, 0]])]);
      expect(good.value.error).toBe('');
      expect(floats(outputsOf(good).Y)[0]).toBe(8);
      expect(child.exitCode).toBeNull();
    });

    test('an output with the wrong batch dimension is a batch error naming it', async () => {
      const r = await broker.batch(6n, [['r', 2]], [fp32([[777, 0, 0, 0], [1, 0, 0, 0]])]);
      expect(r.value.error).toBe("output 'Y' has batch dimension 1 but the batch has 2 rows");
    });

    test('inputs that do not match the items or the frames are refused', async () => {
      const rows = await broker.batch(7n, [['r', 2]], [fp32([[1, 0, 0, 0]])]);
      expect(rows.value.error).toBe("input 'X' has batch dimension 1 but the batch has 2 rows");
      const t = fp32([[1, 0, 0, 0]]);
      const short = await broker.batch(8n, [['r', 1]], [{ ...t, data: t.data.subarray(0, 8) }]);
      expect(short.value.error).toMatch(/FP32 shape \[1, 4\] needs 16 bytes, got 8/);
    });

    test('sequences: per-sequence state across batches, fresh at start, dropped on END_SEQUENCE and handed to end_sequence', async () => {
      const one = [1, 0, 0, 0];
      let r = await broker.batch(10n, [['a1', 1, { id: 'A', slot: 0, start: true }], ['b1', 2, { id: 'B', slot: 1, start: true }], ['plain', 1]], [fp32([one, one, one, one])]);
      expect(ints(outputsOf(r).COUNT)).toEqual([1, 1, 1, 0]);
      r = await broker.batch(11n, [['b2', 1, { id: 'B', slot: 1 }], ['a2', 1, { id: 'A', slot: 0, end: true }]], [fp32([one, one])]);
      expect(ints(outputsOf(r).COUNT)).toEqual([2, 2]);
      await broker.send({ case: 'endSequence', value: create(EndSequenceSchema, { id: 'A', slot: 0, reason: EndSequence_Reason.END }) });
      // The END_SEQUENCE is handled before this batch: A starts afresh, B keeps its state.
      r = await broker.batch(12n, [['a1', 1, { id: 'A', slot: 0, start: true }], ['b3', 1, { id: 'B', slot: 1 }]], [fp32([one, one])]);
      let out = outputsOf(r);
      expect(ints(out.COUNT)).toEqual([1, 3]);
      expect(bytesStrings(out.LAST_END)).toEqual(['A:end:0:2', 'A:end:0:2']);
      // A late END_SEQUENCE for another slot leaves the current A alone; an unknown id gets state None.
      await broker.send({ case: 'endSequence', value: create(EndSequenceSchema, { id: 'A', slot: 3, reason: EndSequence_Reason.CANCELLED }) });
      await broker.send({ case: 'endSequence', value: create(EndSequenceSchema, { id: 'gone', slot: 2, reason: EndSequence_Reason.IDLE }) });
      r = await broker.batch(13n, [['a2', 1, { id: 'A', slot: 0 }]], [fp32([one])]);
      out = outputsOf(r);
      expect(ints(out.COUNT)).toEqual([2]);
      expect(bytesStrings(out.LAST_END)).toEqual(['gone:idle:2:none']);
      // A start flag on a live sequence resets its state too.
      r = await broker.batch(14n, [['b1', 1, { id: 'B', slot: 1, start: true }]], [fp32([one])]);
      expect(ints(outputsOf(r).COUNT)).toEqual([1]);
    });

    test('heartbeats keep coming while a long batch runs', async () => {
      const before = broker.heartbeats.length;
      const t0 = Date.now();
      const r = await broker.batch(15n, [['slow', 1]], [fp32([[555, 0, 0, 0]])]);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(1400);
      expect(r.value.error).toBe('');
      expect(broker.heartbeats.slice(before).filter((at) => at > t0).length).toBeGreaterThanOrEqual(4);
    });

    test('SIGTERM mid-batch: SHUTDOWN first, then the batch\'s RESULT, then exit 0', async () => {
      await broker.sendBatch(16n, [['slow', 1]], [fp32([[555, 1, 0, 0]])]);
      await new Promise((r) => setTimeout(r, 300));
      const exited = exitOf(child);
      child.kill('SIGTERM');
      const bye = await broker.next('shutdown');
      expect(bye.value.reason).toBe('sigterm');
      const res = await broker.next('result');
      expect(res.value.batchId).toBe(16n);
      expect(res.value.error).toBe('');
      expect(floats(outputsOf(res).Y)[1]).toBe(2);
      expect(await exited).toBe(0);
    });
  });

  test('a SHUTDOWN from the broker: batches in flight finish, later ones are refused, exit 0', async () => {
    const { broker, child } = await start('py-2', { SDK_TEST_SLEEP_S: '0.5' });
    await broker.next('ready', 20_000);
    await broker.sendBatch(1n, [['slow', 1]], [fp32([[555, 0, 0, 0]])]);
    await new Promise((r) => setTimeout(r, 100));
    const exited = exitOf(child);
    await broker.send({ case: 'shutdown', value: create(ShutdownSchema, { graceMs: 5000, reason: 'test' }) });
    await broker.sendBatch(2n, [['late', 1]], [fp32([[1, 0, 0, 0]])]);
    const late = await broker.next('result');
    expect(late.value).toMatchObject({ batchId: 2n, error: 'model copy is shutting down' });
    const first = await broker.next('result');
    expect(first.value).toMatchObject({ batchId: 1n, error: '' });
    expect(await exited).toBe(0);
  });

  test('credits 2, serial (default): the second batch waits at the copy and runs after the first', async () => {
    const { broker, child } = await start('py-3s', { SDK_TEST_CREDITS: '2', SDK_TEST_SLEEP_S: '1' });
    const ready = await broker.next('ready', 20_000);
    expect(ready.value.credits).toBe(2);
    // Batch 1 sleeps, batch 2 is quick: on two threads 2 would answer first.
    await broker.sendBatch(1n, [['s1', 1]], [fp32([[555, 0, 0, 0]])]);
    await broker.sendBatch(2n, [['s2', 1]], [fp32([[1, 0, 0, 0]])]);
    const ids = [(await broker.next('result')).value.batchId, (await broker.next('result')).value.batchId];
    expect(ids).toEqual([1n, 2n]);
    child.kill('SIGTERM');
    expect(await exitOf(child)).toBe(0);
  });

  test('credits 2, parallel: two batches run at once on two threads', async () => {
    const { broker, child } = await start('py-3', { SDK_TEST_CREDITS: '2', SDK_TEST_PARALLEL: '1', SDK_TEST_SLEEP_S: '1' });
    const ready = await broker.next('ready', 20_000);
    expect(ready.value.credits).toBe(2);
    // Batch 1 sleeps, batch 2 is quick and does not wait for it.
    await broker.sendBatch(1n, [['s1', 1]], [fp32([[555, 0, 0, 0]])]);
    await broker.sendBatch(2n, [['s2', 1]], [fp32([[1, 0, 0, 0]])]);
    const ids = [(await broker.next('result')).value.batchId, (await broker.next('result')).value.batchId];
    expect(ids).toEqual([2n, 1n]);
    child.kill('SIGTERM');
    expect(await exitOf(child)).toBe(0);
  });

  test('load() raising: the copy logs it, sends no READY and exits 1', async () => {
    const { child, stderr } = await start('py-4', { SDK_TEST_LOAD_FAIL: '1' });
    expect(await exitOf(child, 20_000)).toBe(1);
    expect(stderr()).toMatch(/load failed/);
    expect(stderr()).toMatch(/weights missing/);
  });

  test('SIGTERM during load(): SHUTDOWN, no READY, exit 0', async () => {
    const { broker, child } = await start('py-5', { SDK_TEST_LOAD_S: '1.5' });
    await new Promise((r) => setTimeout(r, 700));
    child.kill('SIGTERM');
    expect(await exitOf(child)).toBe(0);
    expect((await broker.next('shutdown')).value.reason).toBe('sigterm');
  });
});
