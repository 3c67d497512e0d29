/**
 * TaskManager end to end: ProcessRuntime + real zeromq link + a model process
 * (the real examples/models/simple when built, else the fake model fixture).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { EventEmitter } from 'node:events';
import pino from 'pino';
import * as zmq from 'zeromq';
import { create } from '@bufbuild/protobuf';
import { BrokerError } from '../../core/errors';
import type { BatchRequest } from '../../core/model-copies';
import type { Tensor } from '../../proto/tensor';
import { SPEC_DEFAULTS, type ModelSpec } from '../../core/model-spec';
import { HeartbeatSchema, decodeFrames, encodeFrames } from '../../proto/link';
import { LinkServer } from '../../task-manager/link-server';
import { ProcessRuntime } from '../../task-manager/process-runtime';
import { TaskManager } from '../../task-manager/task-manager';
import { waitEvent as waitEventWithin } from '../helpers/events';
import { FAKE_MODEL_ENV, fakeModelCommand } from './fixtures/build-fake-model';

const logger = pino({ level: process.env.TB_TEST_LOG ?? 'silent' });

/** Events here come from local processes: a shorter wait than the shared default. */
const waitEvent = <T extends unknown[]>(em: EventEmitter, event: string, filter?: (...args: T) => boolean) => waitEventWithin<T>(em, event, filter, 15_000);

async function waitFor(check: () => boolean, ms = 10_000): Promise<void> {
  const until = Date.now() + ms;
  while (!check()) {
    if (Date.now() > until) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
}

function int32Tensor(name: string, rows: number, first: number): Tensor {
  const a = new Int32Array(rows * 16);
  for (let i = 0; i < a.length; i++) a[i] = i;
  for (let r = 0; r < rows; r++) a[r * 16] = first;
  return { name, datatype: 'INT32', shape: [rows, 16], data: Buffer.from(a.buffer) };
}

let nextBatch = 1n;
function batch(model: string, rowsPerItem: number[], first = 5, deadlineMs = 10_000): BatchRequest {
  const rows = rowsPerItem.reduce((a, b) => a + b, 0);
  return {
    batchId: nextBatch++,
    model,
    items: rowsPerItem.map((r, i) => ({ requestId: `r${i}`, rows: r })),
    tensors: [int32Tensor('INPUT0', rows, first), int32Tensor('INPUT1', rows, 2)],
    outputs: [],
    deadline: Date.now() + deadlineMs,
  };
}

function spec(name: string, env: Record<string, string> = {}, over: Partial<ModelSpec> = {}): ModelSpec {
  return {
    ...SPEC_DEFAULTS,
    name,
    batch_size: 4,
    startup_timeout_ms: 10_000,
    command: fakeModelCommand(),
    env: { ...FAKE_MODEL_ENV, ...env },
    source: 'file',
    ...over,
  };
}

describe('TaskManager with the process runtime', () => {
  let dir: string;
  let tm: TaskManager;
  let link: LinkServer;

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-tm-'));
    link = new LinkServer({ socketDir: dir, heartbeatMs: 200, logger });
    tm = new TaskManager({ runtime: new ProcessRuntime({ logger }), link, brokerId: 'test', logger, backoffInitialMs: 50, stopGraceMs: 2000 });
  });

  afterEach(async () => {
    await tm.close(2000);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('a copy starts, becomes ready, and runs a batch', async () => {
    const ready = waitEvent<[string]>(tm, 'metadata', (m) => m === 'simple');
    expect(tm.readiness('simple').ready).toBe(false);
    await tm.reconcile([spec('simple')]);
    await ready;
    expect(tm.readiness('simple')).toEqual({ ready: true, phase: 'ready' });
    const meta = tm.metadata('simple')!;
    expect(meta.maxBatch).toBe(4);
    expect(meta.inputs.map((i) => [i.name, i.datatype, i.shape])).toEqual([
      ['INPUT0', 'INT32', [-1, 16]],
      ['INPUT1', 'INT32', [-1, 16]],
    ]);
    const copy = tm.controller('simple')!.available()!;
    expect(copy).toBeDefined();
    const res = await copy.execute(batch('simple', [1, 2], 5));
    expect(res.itemErrors).toEqual([undefined, undefined]);
    const out = Buffer.from(res.tensors[0].data);
    const sum = new Int32Array(out.buffer, out.byteOffset, out.length / 4);
    expect(res.tensors.map((t) => [t.name, t.shape])).toEqual([
      ['OUTPUT0', [3, 16]],
      ['OUTPUT1', [3, 16]],
    ]);
    expect(sum[0]).toBe(7);
    expect(sum[1]).toBe(1 + 1);
    expect(sum[47]).toBe(47 + 47);
    expect(tm.stats()[0].copies.ready).toBe(1);
  });

  test('model errors reject INTERNAL and item errors come back per item', async () => {
    const ready = waitEvent(tm, 'metadata');
    await tm.reconcile([spec('m')]);
    await ready;
    await expect(tm.controller('m')!.available()!.execute(batch('m', [1], -1))).rejects.toMatchObject({ code: 'INTERNAL', message: expect.stringMatching(/model error: INPUT0 starts with -1/) });
    const b = batch('m', [1, 1]);
    new Int32Array(b.tensors[0].data.buffer, b.tensors[0].data.byteOffset, 32)[16] = -2;
    const res = await tm.controller('m')!.available()!.execute(b);
    expect(res.itemErrors).toEqual([undefined, 'row starts with -2']);
  });

  test('a copy killed mid-batch rejects the batch with UNAVAILABLE and is replaced', async () => {
    let ready = waitEvent(tm, 'metadata');
    await tm.reconcile([spec('slow', { FAKE_DELAY_MS: '20000' })]);
    await ready;
    const [first] = tm.copies();
    const pending = tm.controller('slow')!.available()!.execute(batch('slow', [1], 5, 30_000));
    expect(tm.controller('slow')!.available()).toBeUndefined(); // its one credit is used
    ready = waitEvent(tm, 'metadata');
    process.kill(first.pid!, 'SIGKILL');
    const err = (await pending.catch((e: unknown) => e)) as BrokerError;
    expect(err).toBeInstanceOf(BrokerError);
    expect(err.code).toBe('UNAVAILABLE');
    expect(err.message).toMatch(new RegExp(`model copy ${first.id} of slow .*SIGKILL`));
    await ready;
    const [second] = tm.copies();
    expect(second.id).not.toBe(first.id);
    expect(second.state).toBe('ready');
    expect(tm.readiness('slow').ready).toBe(true);
  });

  test('a crash names the exit code and the last log line', async () => {
    const ready = waitEvent(tm, 'metadata');
    await tm.reconcile([spec('crashy', { FAKE_CRASH_ON: '42' })]);
    await ready;
    const exit = waitEvent<[string, string]>(tm, 'copy-exit');
    const err = (await tm.controller('crashy')!.available()!.execute(batch('crashy', [2], 42)).catch((e: unknown) => e)) as BrokerError;
    expect(err.code).toBe('UNAVAILABLE');
    expect(err.message).toMatch(/exited with code 3: crashing on purpose: INPUT0\[0\] is 42/);
    await exit;
    // One crash: the copy restarts after its backoff; requests queue meanwhile (state starting), the reason is kept.
    expect(tm.readiness('crashy')).toEqual({ ready: false, phase: 'starting', reason: expect.stringMatching(/code 3/) });
    await waitEvent(tm, 'metadata');
    expect(tm.readiness('crashy').ready).toBe(true);
  });

  test('a copy that never sends READY times out with a reason and is retried', async () => {
    const exit = waitEvent<[string, string]>(tm, 'copy-exit');
    await tm.reconcile([spec('mute', { FAKE_MODE: 'never-ready' }, { startup_timeout_ms: 500 })]);
    const [, msg] = await exit;
    expect(msg).toMatch(/did not send READY within 500 ms/);
    const r = tm.readiness('mute');
    expect(r.ready).toBe(false);
    expect(r.reason).toMatch(/did not send READY within 500 ms/);
    await waitEvent(tm, 'copy-exit'); // retried with backoff, times out again
    expect(tm.stats()[0].restarts).toBeGreaterThanOrEqual(1);
  });

  test('a hung copy fails the batch at its deadline and is restarted', async () => {
    let ready = waitEvent(tm, 'metadata');
    await tm.reconcile([spec('hung', { FAKE_DELAY_MS: '60000' })]);
    await ready;
    const [first] = tm.copies();
    ready = waitEvent(tm, 'metadata');
    await expect(tm.controller('hung')!.available()!.execute(batch('hung', [1], 5, 300))).rejects.toMatchObject({ code: 'UNAVAILABLE', message: expect.stringMatching(/hung/) });
    await ready;
    expect(tm.copies()[0].id).not.toBe(first.id);
  });

  test('a silent copy (no heartbeats) is declared dead', async () => {
    const ready = waitEvent(tm, 'metadata');
    await tm.reconcile([spec('quiet', { FAKE_MODE: 'silent' }, { heartbeat_timeout_ms: 1000 })]);
    await ready;
    const [, msg] = await waitEvent<[string, string]>(tm, 'copy-exit');
    expect(msg).toMatch(/sent no heartbeat/);
  });

  test('a changed spec replaces the copies; a removed model stops them', async () => {
    let ready = waitEvent(tm, 'metadata');
    await tm.reconcile([spec('v', {}, { version: '1' })]);
    await ready;
    const [first] = tm.copies();
    ready = waitEvent(tm, 'metadata');
    await tm.applyChange({ type: 'put', name: 'v', spec: spec('v', {}, { version: '2' }) });
    await ready;
    // A roll: the new copy is ready first, then the old one drains and stops.
    expect(tm.metadata('v')!.version).toBe('2');
    await waitFor(() => !tm.copies().some((c) => c.id === first.id), 10_000);
    await tm.reconcile([]);
    expect(tm.copies()).toEqual([]);
    expect(tm.readiness('v').ready).toBe(false);
  });

  test('close() settles the batches in flight and stops every copy', async () => {
    const ready = waitEvent(tm, 'metadata');
    await tm.reconcile([spec('c', { FAKE_DELAY_MS: '20000' }), spec('d')]);
    await ready;
    await waitEvent(tm, 'metadata'); // both ready
    const copy = tm.controller('c')!.available()!;
    const pending = copy.execute(batch('c', [1], 5, 30_000)).catch((e: unknown) => e);
    const pid = tm.copies().find((c) => c.model === 'c')!.pid!;
    await tm.close(300);
    expect(((await pending) as BrokerError).code).toBe('UNAVAILABLE');
    expect(tm.copies()).toEqual([]);
    expect(() => process.kill(pid, 0)).toThrow();
  });
});

describe('LinkServer', () => {
  test('tells unknown copies to shut down and survives malformed messages', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-link-'));
    const link = new LinkServer({ socketDir: dir, heartbeatMs: 100, logger });
    await link.start();
    expect((fs.statSync(path.join(dir, 'link.sock')).mode & 0o777).toString(8)).toBe('666');
    const dealer = new zmq.Dealer({ routingId: 'stranger', linger: 0 });
    dealer.connect(link.endpoint);
    await dealer.send([Buffer.from([0xff, 0xff, 0xff])]);
    await dealer.send(encodeFrames({ case: 'heartbeat', value: create(HeartbeatSchema, { timeMs: 1n }) }));
    const reply = decodeFrames(await dealer.receive());
    expect(reply.envelope.kind.case).toBe('shutdown');
    dealer.close();
    await link.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

const SIMPLE_JS = path.resolve(__dirname, '../../dist/examples/models/simple/main.js');
const describeSimple = fs.existsSync(SIMPLE_JS) ? describe : describe.skip;

describeSimple('TaskManager with the real simple model (dist/, process runtime)', () => {
  let dir: string;
  let tm: TaskManager;

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-simple-'));
    const link = new LinkServer({ socketDir: dir, heartbeatMs: 200, logger });
    tm = new TaskManager({
      runtime: new ProcessRuntime({ logger }),
      link,
      brokerId: 'test',
      logger,
      backoffInitialMs: 50,
      cwd: path.resolve(__dirname, '../..'),
    });
  });

  afterEach(async () => {
    await tm.close(2000);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const simpleSpec = (env: Record<string, string> = {}): ModelSpec => ({
    ...SPEC_DEFAULTS,
    name: 'simple',
    batch_size: 4,
    command: ['node', 'dist/examples/models/simple/main.js'],
    env,
    source: 'file',
  });

  test('ready, a batch, a crash mid-batch rejects UNAVAILABLE, a new copy becomes ready', async () => {
    let ready = waitEvent(tm, 'metadata');
    await tm.reconcile([simpleSpec({ SIMPLE_CRASH_ON: '77', SIMPLE_FAIL_ON: '66' })]);
    await ready;
    expect(tm.metadata('simple')!.maxBatch).toBe(4);
    const res = await tm.controller('simple')!.available()!.execute(batch('simple', [1, 1], 66));
    expect(res.itemErrors).toEqual(['row rejected by model', 'row rejected by model']);
    const [first] = tm.copies();
    ready = waitEvent(tm, 'metadata');
    const err = (await tm.controller('simple')!.available()!.execute(batch('simple', [2], 77)).catch((e: unknown) => e)) as BrokerError;
    expect(err.code).toBe('UNAVAILABLE');
    expect(err.message).toMatch(new RegExp(`model copy ${first.id} of simple .*exited with code 3`));
    await ready;
    expect(tm.copies()[0].id).not.toBe(first.id);
    const ok = await tm.controller('simple')!.available()!.execute(batch('simple', [3], 1));
    expect(ok.tensors[0].shape).toEqual([3, 16]);
  });

  test('SIGKILL while a batch is in flight on a busy copy rejects it, no hang', async () => {
    let ready = waitEvent(tm, 'metadata');
    await tm.reconcile([simpleSpec()]);
    await ready;
    const [first] = tm.copies();
    ready = waitEvent(tm, 'metadata');
    const pending = tm.controller('simple')!.available()!.execute(batch('simple', [1], 5, 30_000)).then(
      () => 'resolved',
      (e: BrokerError) => e.code,
    );
    process.kill(first.pid!, 'SIGKILL');
    // The result may or may not have left the copy before the kill: either way it settles.
    expect(['resolved', 'UNAVAILABLE']).toContain(await pending);
    await ready;
  });
});
