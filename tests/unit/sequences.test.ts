/** SequenceScheduler against fake copies of its model: slots, order, backlog, ends (end, cancelled, idle), lost copies. */
import { EventEmitter } from 'node:events';
import pino from 'pino';
import { BrokerError } from '../../core/errors';
import type { BatchRequest, BatchResponse, ModelCopies, ModelCopiesEvents, ModelCopy, SequenceEndReason } from '../../core/model-copies';
import { SequenceScheduler, type SequenceConfig } from '../../core/sequence-scheduler';
import type { Tensor } from '../../proto/tensor';
import type { InferRequest, InferResult, ModelMetadata, ModelReadiness } from '../../core/types';

const META: ModelMetadata = {
  name: 'seq',
  version: '1',
  maxBatch: 8,
  inputs: [{ name: 'X', datatype: 'INT32', shape: [-1, 1] }],
  outputs: [{ name: 'Y', datatype: 'INT32', shape: [-1, 1] }],
};

interface Row { copy: string; slot: number; seq: string; value: number; start: boolean; end: boolean; batch: number }

class FakeCopy implements ModelCopy {
  readonly model = 'seq';
  readonly metadata = META;
  inFlight: { b: BatchRequest; resolve: (r: BatchResponse) => void; reject: (e: BrokerError) => void }[] = [];
  ends: { id: string; slot: number; reason: SequenceEndReason }[] = [];
  /** Answer batches by itself (on a later tick), or wait for complete(). */
  auto = true;
  alive = true;
  constructor(readonly id: string, private readonly pool: FakePool, readonly maxSequences = 2, public credits = 1) {}
  busy(): boolean {
    return this.inFlight.length > 0;
  }
  hasCapacity(): boolean {
    return this.alive && this.inFlight.length < this.credits;
  }
  execute(b: BatchRequest): Promise<BatchResponse> {
    let n = 0;
    for (const it of b.items) {
      const x = new Int32Array(b.tensors[0].data.buffer, b.tensors[0].data.byteOffset, b.tensors[0].shape[0]);
      this.pool.rows.push({ copy: this.id, slot: it.sequence!.slot, seq: it.sequence!.id, value: x[n], start: it.sequence!.start, end: it.sequence!.end, batch: Number(b.batchId) });
      n += it.rows;
    }
    this.pool.batches.push(b);
    return new Promise((resolve, reject) => {
      this.inFlight.push({ b, resolve, reject });
      if (this.auto) setImmediate(() => this.complete());
    });
  }
  /** Answers every batch in flight: Y = X. */
  complete(): void {
    for (const f of this.inFlight.splice(0)) {
      f.resolve({ itemErrors: f.b.items.map(() => undefined), tensors: [{ ...f.b.tensors[0], name: 'Y' }], computeNs: 1000 });
    }
    queueMicrotask(() => this.pool.emit('capacity'));
  }
  endSequence(id: string, slot: number, reason: SequenceEndReason): void {
    this.ends.push({ id, slot, reason });
    this.pool.endBus.emit('end', { copy: this.id, id, slot, reason });
  }
  die(reason: string): void {
    this.alive = false;
    this.pool.copies = this.pool.copies.filter((c) => c !== this);
    for (const f of this.inFlight.splice(0)) f.reject(new BrokerError('UNAVAILABLE', `model copy ${this.id} of seq exited (code 3)`, { kind: 'copy-lost' }));
    this.pool.emit('copy-gone', this.id, reason);
  }
}

class FakePool extends EventEmitter<ModelCopiesEvents> implements ModelCopies {
  readonly model = 'seq';
  copies: FakeCopy[] = [];
  rows: Row[] = [];
  batches: BatchRequest[] = [];
  scaleUps = 0;
  /** endSequence calls, for the tests to wait on. */
  readonly endBus = new EventEmitter();
  readonly metadata = META;
  available(): ModelCopy | undefined {
    return this.copies.find((c) => c.hasCapacity());
  }
  ready(): ModelCopy[] {
    return this.copies;
  }
  requestCopy(): boolean {
    this.scaleUps++;
    return false;
  }
  readiness(): ModelReadiness {
    return this.copies.length > 0 ? { ready: true, phase: 'ready' } : { ready: false, phase: 'starting' };
  }
  demand(): void {}
  load(): Promise<void> {
    return Promise.resolve();
  }
  unload(): Promise<void> {
    return Promise.resolve();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
  /** Resolves at the next endSequence matching `pred`. */
  nextEnd(pred: (e: { id: string; reason: SequenceEndReason }) => boolean): Promise<{ copy: string; id: string; slot: number; reason: SequenceEndReason }> {
    return new Promise((resolve) => {
      const on = (e: { copy: string; id: string; slot: number; reason: SequenceEndReason }) => {
        if (!pred(e)) return;
        this.endBus.off('end', on);
        resolve(e);
      };
      this.endBus.on('end', on);
    });
  }
}

const config = (over: Partial<SequenceConfig> = {}): SequenceConfig => ({
  version: '1', batchSize: 8, maxWaitMs: 0, queueCapacity: 1000, timeoutMs: 10_000, idleMs: 10_000, backlog: 64, scaleUp: false, ...over,
});

const frame = (v: number): Tensor => ({ name: 'X', datatype: 'INT32', shape: [1, 1], data: Buffer.from(new Int32Array([v]).buffer) });
const value = (r: InferResult) => r.outputs[0].data.readInt32LE(0);

function setup(copies = 2, slots = 2, over: Partial<SequenceConfig> = {}) {
  const pool = new FakePool();
  const s = new SequenceScheduler('seq', config(over), pool, pino({ level: 'silent' }));
  for (let i = 0; i < copies; i++) pool.copies.push(new FakeCopy(`c${i}`, pool, slots));
  let n = 0;
  const send = (id: string, v: number, flags: { start?: boolean; end?: boolean; owner?: AbortSignal; signal?: AbortSignal; timeoutMs?: number } = {}) => {
    const req: InferRequest = {
      id: `r${++n}`, model: 'seq', inputs: [frame(v)], signal: flags.signal, timeoutMs: flags.timeoutMs,
      sequence: { id, start: flags.start ?? false, end: flags.end ?? false, owner: flags.owner },
    };
    return s.submit(req);
  };
  return { pool, s, send };
}

const code = (p: Promise<unknown>) => p.then(() => 'OK', (e: BrokerError) => e.code);

test('more sequences than slots, interleaved: each keeps its copy and slot, in order; batches mix sequences; the backlog drains as sequences end', async () => {
  const { pool, s, send } = setup(2, 2);
  const S = 9;
  const FRAMES = 6;
  const results: Promise<InferResult>[] = [];
  // Interleave: frame f of every sequence, then frame f+1 ... (values encode sequence and frame).
  for (let f = 0; f < FRAMES; f++) {
    for (let q = 0; q < S; q++) results.push(send(`s${q}`, q * 100 + f, { start: f === 0, end: f === FRAMES - 1 }));
  }
  expect(s.status().backlog).toBe(S - 4);
  const out = await Promise.all(results);
  // Every answer is its own row.
  out.forEach((r, i) => expect(value(r)).toBe(Math.floor(i % S) * 100 + Math.floor(i / S)));
  // Each sequence: one copy and slot, frames in order, start only on the first, end only on the last.
  for (let q = 0; q < S; q++) {
    const rows = pool.rows.filter((r) => r.seq === `s${q}`);
    expect(rows.map((r) => r.value)).toEqual(Array.from({ length: FRAMES }, (_, f) => q * 100 + f));
    expect(new Set(rows.map((r) => `${r.copy}/${r.slot}`)).size).toBe(1);
    expect(rows.map((r) => r.start)).toEqual(Array.from({ length: FRAMES }, (_, f) => f === 0));
    expect(rows.map((r) => r.end)).toEqual(Array.from({ length: FRAMES }, (_, f) => f === FRAMES - 1));
  }
  // At most one request per sequence in a batch; some batches hold several sequences.
  for (const b of pool.batches) expect(new Set(b.items.map((it) => it.sequence!.id)).size).toBe(b.items.length);
  // Two copies with two slots each: once the backlog drains, every batch carries both slots.
  expect(pool.batches.filter((b) => b.items.length === 2).length).toBeGreaterThanOrEqual(pool.batches.length - 8);
  // Every sequence ended with reason end on its own copy and slot; the backlog drained.
  const ends = pool.copies.flatMap((c) => c.ends.map((e) => ({ ...e, copy: c.id })));
  expect(ends.filter((e) => e.reason === 'end').map((e) => e.id).sort()).toEqual(Array.from({ length: S }, (_, q) => `s${q}`).sort());
  for (const e of ends) expect(pool.rows.find((r) => r.seq === e.id)).toMatchObject({ copy: e.copy, slot: e.slot });
  const st = s.status();
  expect(st).toMatchObject({ active: 0, backlog: 0, slots: 4, backlogged: S - 4 });
  expect(st.ended.end).toBe(S);
});

test("a sequence's next request waits until its previous one is answered", async () => {
  const { pool, send } = setup(1, 2);
  pool.copies[0].auto = false;
  pool.copies[0].credits = 2;
  const a = send('a', 1, { start: true });
  const b = send('a', 2);
  const c = send('c', 3, { start: true });
  // a, then c on the second credit; b waits although the copy could take it.
  expect(pool.batches.map((x) => x.items.map((it) => it.sequence!.id))).toEqual([['a'], ['c']]);
  pool.copies[0].auto = true;
  pool.copies[0].complete();
  expect(value(await a)).toBe(1);
  expect(value(await c)).toBe(3);
  expect(value(await b)).toBe(2);
});

test('refusals: no sequence id, unknown sequence, backlog full; RESOURCE_EXHAUSTED only for new sequences', async () => {
  const { pool, s, send } = setup(1, 1, { backlog: 1 });
  pool.copies[0].auto = false;
  const noId = s.submit({ id: 'x', model: 'seq', inputs: [frame(1)] });
  await expect(noId).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringContaining('sequence id') });
  await expect(send('ghost', 1)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringContaining("sequence 'ghost'") });
  const a = send('a', 1, { start: true });
  const b = send('b', 1, { start: true }); // backlog (1)
  await expect(send('c', 1, { start: true })).rejects.toMatchObject({ code: 'RESOURCE_EXHAUSTED' });
  const a2 = send('a', 2, { end: true }); // an active sequence is never refused for lack of slots
  expect(s.status()).toMatchObject({ active: 1, backlog: 1 });
  pool.copies[0].auto = true;
  pool.copies[0].complete();
  expect(await Promise.all([code(a), code(a2), code(b)])).toEqual(['OK', 'OK', 'OK']);
  // 'a' ended: a later request without start gets the distinct error, naming why.
  await expect(send('a', 3)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringContaining('it ended') });
});

test('an idle sequence is reaped, the copy is told (reason idle), and its slot goes to the backlog', async () => {
  const { pool, s, send } = setup(1, 1, { idleMs: 40 });
  const told = pool.nextEnd((e) => e.id === 'a');
  await send('a', 1, { start: true });
  const waiting = send('b', 7, { start: true }); // backlogged behind the idle 'a'
  expect(s.status().backlog).toBe(1);
  expect(await told).toMatchObject({ id: 'a', slot: 0, reason: 'idle' });
  expect(value(await waiting)).toBe(7);
  await expect(send('a', 2)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringContaining('expired after 40 ms') });
  expect(s.status().ended.idle).toBe(1);
});

test('the client going away cancels the sequence: queued requests fail, the copy is told after its running batch, the slot is freed', async () => {
  const { pool, s, send } = setup(1, 1);
  pool.copies[0].auto = false;
  const owner = new AbortController();
  const running = send('v', 1, { start: true, owner: owner.signal });
  const queued = send('v', 2, { owner: owner.signal });
  const next = send('w', 3, { start: true }); // backlogged
  const told = pool.nextEnd((e) => e.id === 'v');
  owner.abort();
  expect(await code(queued)).toBe('CANCELLED');
  expect(await code(running)).toBe('CANCELLED');
  expect(pool.copies[0].ends).toHaveLength(0); // not before its batch is over
  pool.copies[0].auto = true;
  pool.copies[0].complete();
  expect(await told).toMatchObject({ reason: 'cancelled', slot: 0 });
  expect(value(await next)).toBe(3);
  expect(s.status().ended.cancelled).toBe(1);
});

test('a dying copy fails its sequences (running and queued) with UNAVAILABLE; nothing moves to the other copy', async () => {
  const { pool, s, send } = setup(2, 1);
  for (const c of pool.copies) c.auto = false;
  const a1 = send('a', 1, { start: true });
  const b1 = send('b', 2, { start: true });
  const a2 = send('a', 3);
  const onC0 = pool.rows.find((r) => r.seq === 'a')!.copy === 'c0' ? 'a' : 'b';
  const other = onC0 === 'a' ? 'b' : 'a';
  pool.copies[0].die('model copy c0 of seq exited (code 3)');
  const errs = await Promise.all((onC0 === 'a' ? [a1, a2] : [b1]).map((p) => p.catch((e: BrokerError) => e)));
  for (const e of errs) {
    expect(e).toBeInstanceOf(BrokerError);
    expect((e as BrokerError).code).toBe('UNAVAILABLE');
    expect((e as BrokerError).message).toMatch(/exited \(code 3\).*(lost)/);
  }
  await expect(send(onC0, 9)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringContaining('lost') });
  pool.copies[0].complete();
  await (other === 'a' ? a1 : b1);
  expect(pool.rows.filter((r) => r.seq === onC0).every((r) => r.copy === 'c0')).toBe(true);
  expect(s.status().ended.lost).toBe(1);
});

test('a start on an ended-but-unanswered sequence restarts it in place, after the end reached the copy', async () => {
  const { pool, send } = setup(1, 1);
  pool.copies[0].auto = false;
  const last = send('a', 1, { start: true, end: true });
  const again = send('a', 2, { start: true });
  const order: string[] = [];
  pool.endBus.on('end', (e: { reason: string }) => order.push(`end:${e.reason}`));
  pool.copies[0].auto = true;
  pool.copies[0].complete();
  await last;
  await again;
  const rows = pool.rows.filter((r) => r.seq === 'a');
  expect(rows.map((r) => [r.slot, r.start])).toEqual([[0, true], [0, true]]);
  expect(order).toEqual(['end:end']);
  expect(pool.batches).toHaveLength(2);
});

test('deadlines still apply to requests of a sequence; the sequence goes on', async () => {
  const { pool, send } = setup(1, 1);
  pool.copies[0].auto = false;
  const first = send('a', 1, { start: true });
  const expires = send('a', 2, { timeoutMs: 20 });
  expect(await code(expires)).toBe('DEADLINE_EXCEEDED');
  const third = send('a', 3);
  pool.copies[0].auto = true;
  pool.copies[0].complete();
  expect(value(await first)).toBe(1);
  expect(value(await third)).toBe(3);
  expect(pool.rows.map((r) => r.value)).toEqual([1, 3]);
});

test("a request's own AbortSignal (a REST client gone) cancels its sequence too", async () => {
  const { pool, s, send } = setup(1, 1);
  const told = pool.nextEnd((e) => e.id === 'r');
  await send('r', 1, { start: true });
  const ac = new AbortController();
  const pending = send('r', 2, { signal: ac.signal });
  pool.copies[0].auto = false;
  ac.abort();
  expect(await code(pending)).toBe('CANCELLED');
  pool.copies[0].auto = true;
  pool.copies[0].complete();
  expect(await told).toMatchObject({ reason: 'cancelled' });
  await expect(send('r', 3)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringContaining('cancelled') });
  expect(s.status().active).toBe(0);
});

test('close() fails what is queued and forgets every sequence', async () => {
  const { pool, s, send } = setup(1, 1);
  pool.copies[0].auto = false;
  const a = send('a', 1, { start: true });
  const b = send('b', 1, { start: true });
  s.close(new BrokerError('UNAVAILABLE', 'shutting down'));
  expect(await code(b)).toBe('UNAVAILABLE');
  pool.copies[0].complete();
  expect(await code(a)).toBe('OK'); // running batches finish on their own
  expect(s.status()).toMatchObject({ active: 0, backlog: 0 });
});

test('a start request that expires while its sequence waits for a slot hands the start flag to the next request', async () => {
  const { pool, send } = setup(1, 1);
  pool.copies[0].auto = false;
  const a = send('a', 1, { start: true, end: true });
  const bStart = send('b', 10, { start: true, timeoutMs: 20 }); // backlogged behind 'a'
  const b2 = send('b', 11);
  expect(await code(bStart)).toBe('DEADLINE_EXCEEDED');
  const b3 = send('b', 12, { end: true });
  pool.copies[0].auto = true;
  pool.copies[0].complete();
  await Promise.all([a, b2, b3]);
  expect(pool.rows.filter((r) => r.seq === 'b').map((r) => [r.value, r.start, r.end])).toEqual([[11, true, false], [12, false, true]]);
});
