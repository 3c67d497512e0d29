/**
 * The Node SDK against a real ZeroMQ ROUTER: spawns the compiled simple example
 * (run `npm run build` first) and plays the broker's side of the link.
 */
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { create } from '@bufbuild/protobuf';
import { BatchSchema, ShutdownSchema, tensorsFromFrames, toMeta } from '../../proto/link';
import type { Tensor } from '../../proto/tensor';
import { exitOf, startCopy, type FakeLinkBroker } from '../helpers/fake-link-broker';

const MAIN = path.resolve(__dirname, '../../dist/examples/models/simple/main.js');
const FAIL_ON = 999;

function int32(name: string, rows: number[][]): Tensor {
  const a = Int32Array.from(rows.flat());
  return { name, datatype: 'INT32', shape: [rows.length, rows[0].length], data: Buffer.from(a.buffer) };
}

function rowsOf(t: Tensor): number[][] {
  const all = Array.from(new Int32Array(t.data.buffer.slice(t.data.byteOffset, t.data.byteOffset + t.data.length)));
  const w = t.shape[1];
  return Array.from({ length: t.shape[0] }, (_, r) => all.slice(r * w, (r + 1) * w));
}

const row = (start: number) => Array.from({ length: 16 }, (_, i) => start + i);

const startModel = (dir: string, name: string, env: Record<string, string> = {}) =>
  startCopy(dir, [process.execPath, MAIN], name, { TB_MODEL: 'simple', ...env });

describe('Node SDK with the simple model', () => {
  let dir: string;
  let broker: FakeLinkBroker;
  let child: ChildProcess;
  const others: ChildProcess[] = [];

  beforeAll(async () => {
    if (!fs.existsSync(MAIN)) throw new Error(`${MAIN} is missing: run \`npm run build\` first`);
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-sdk-'));
    ({ broker, child } = await startModel(dir, 'copy-1', { SIMPLE_FAIL_ON: String(FAIL_ON) }));
  });

  afterAll(() => {
    for (const c of [child, ...others]) if (c && c.exitCode === null) c.kill('SIGKILL');
    broker?.sock.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('sends READY with its metadata', async () => {
    const ready = await broker.next('ready');
    expect(ready.value).toMatchObject({ protocolVersion: 2, model: 'simple', maxBatch: 8, credits: 1, pid: child.pid });
    expect(ready.value.inputs.map((s) => [s.name, s.datatype, s.shape.map(Number)])).toEqual([
      ['INPUT0', 'INT32', [-1, 16]], ['INPUT1', 'INT32', [-1, 16]],
    ]);
    expect(ready.value.outputs.map((s) => s.name)).toEqual(['OUTPUT0', 'OUTPUT1']);
  });

  test('sends heartbeats', async () => {
    await broker.heartbeatsSeen(1);
  });

  test('adds and subtracts a batch of 3 rows in 2 items', async () => {
    const a = [row(0), row(100), row(-50)];
    const b = [row(1), row(1), row(10)];
    const r = await broker.batch(1n, [['req-a', 1], ['req-b', 2]], [int32('INPUT0', a), int32('INPUT1', b)]);
    expect(r.value.error).toBe('');
    expect(r.value.items.map((i) => i.error)).toEqual(['', '']);
    expect(r.value.computeNs).toBeGreaterThan(0n);
    const out = tensorsFromFrames(r.value.tensors, r.frames);
    expect(out.map((t) => [t.name, t.shape])).toEqual([['OUTPUT0', [3, 16]], ['OUTPUT1', [3, 16]]]);
    expect(rowsOf(out[0])).toEqual(a.map((ra, i) => ra.map((x, j) => x + b[i][j])));
    expect(rowsOf(out[1])).toEqual(a.map((ra, i) => ra.map((x, j) => x - b[i][j])));
  });

  test('a rejected row fails only its own item', async () => {
    const a = [row(5), row(FAIL_ON), row(7)];
    const r = await broker.batch(2n, [['ok', 1], ['bad', 1], ['ok2', 1]], [int32('INPUT0', a), int32('INPUT1', a)]);
    expect(r.value.error).toBe('');
    expect(r.value.items.map((i) => i.error)).toEqual(['', 'row rejected by model', '']);
    expect(rowsOf(tensorsFromFrames(r.value.tensors, r.frames)[0])[2]).toEqual(row(7).map((x) => 2 * x));
  });

  test('a thrown error fails the batch and the copy lives on', async () => {
    const narrow = int32('INPUT0', [[1, 2, 3]]);
    const bad = await broker.batch(3n, [['r', 1]], [narrow, { ...narrow, name: 'INPUT1' }]);
    expect(bad.value.error).toMatch(/16 columns/);
    expect(bad.value.tensors).toHaveLength(0);
    expect(bad.frames).toHaveLength(0);

    const good = await broker.batch(4n, [['r', 1]], [int32('INPUT0', [row(1)]), int32('INPUT1', [row(2)])]);
    expect(good.value.error).toBe('');
    expect(rowsOf(tensorsFromFrames(good.value.tensors, good.frames)[0])).toEqual([row(1).map((x, j) => x + row(2)[j])]);
    expect(child.exitCode).toBeNull();
  });

  test('a batch whose rows do not match its items is refused', async () => {
    const r = await broker.batch(5n, [['r', 2]], [int32('INPUT0', [row(1)]), int32('INPUT1', [row(1)])]);
    expect(r.value.error).toMatch(/batch dimension 1 but the batch has 2 rows/);
  });

  test('SIGTERM sends SHUTDOWN and exits 0', async () => {
    const exited = exitOf(child);
    child.kill('SIGTERM');
    const bye = await broker.next('shutdown');
    expect(bye.value.reason).toBe('sigterm');
    expect(await exited).toBe(0);
  });

  test('a SHUTDOWN from the broker makes the copy exit 0', async () => {
    const m = await startModel(dir, 'copy-2');
    others.push(m.child);
    await m.broker.next('ready');
    const exited = exitOf(m.child);
    await m.broker.send({ case: 'shutdown', value: create(ShutdownSchema, { graceMs: 1000, reason: 'test' }) });
    expect(await exited).toBe(0);
    m.broker.sock.close();
  });

  test('SIMPLE_CRASH_ON makes the process exit 3 mid-batch', async () => {
    const m = await startModel(dir, 'copy-3', { SIMPLE_CRASH_ON: '13' });
    others.push(m.child);
    await m.broker.next('ready');
    const exited = exitOf(m.child);
    await m.broker.send({
      case: 'batch',
      value: create(BatchSchema, { batchId: 1n, items: [{ requestId: 'r', rows: 1 }], tensors: [toMeta(int32('INPUT0', [row(13)])), toMeta(int32('INPUT1', [row(13)]))] }),
    }, [int32('INPUT0', [row(13)]), int32('INPUT1', [row(13)])]);
    expect(await exited).toBe(3);
    m.broker.sock.close();
  });

  describe('credits 2 (the sleepy example: a batch of n rows takes 100 ms × n)', () => {
    const SLEEPY = path.resolve(__dirname, '../../dist/examples/models/sleepy/main.js');
    const fp32 = (rows: number): Tensor => ({ name: 'INPUT0', datatype: 'FP32', shape: [rows, 1], data: Buffer.from(new Float32Array(rows).fill(rows).buffer) });
    /** Batch 1 (5 rows, 500 ms) then batch 2 (1 row, 100 ms), sent back to back: the order of their RESULTs. */
    async function order(name: string, env: Record<string, string>): Promise<bigint[]> {
      const m = await startCopy(dir, [process.execPath, SLEEPY], name, { TB_MODEL: 'sleepy', SLEEPY_A_MS: '0', SLEEPY_B_MS: '100', SLEEPY_CREDITS: '2', ...env });
      others.push(m.child);
      try {
        expect((await m.broker.next('ready')).value.credits).toBe(2);
        await m.broker.sendBatch(1n, [['long', 5]], [fp32(5)]);
        await m.broker.sendBatch(2n, [['short', 1]], [fp32(1)]);
        const results = [await m.broker.next('result'), await m.broker.next('result')];
        for (const r of results) expect(r.value.error).toBe('');
        return results.map((r) => r.value.batchId);
      } finally {
        m.child.kill('SIGKILL');
        m.broker.sock.close();
      }
    }

    test('batches run one after the other in arrival order: the second waits at the copy', async () => {
      expect(await order('copy-c2', {})).toEqual([1n, 2n]);
    });

    test('parallel: true runs both at once (the short one answers first)', async () => {
      expect(await order('copy-c2p', { SLEEPY_PARALLEL: '1' })).toEqual([2n, 1n]);
    });
  });
});
