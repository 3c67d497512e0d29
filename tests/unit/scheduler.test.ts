/** ModelScheduler against fake copies of its model: batching by rows, shapes, bounds, deadlines, exactly-once answers. */
import { EventEmitter } from 'node:events';
import pino from 'pino';
import { BrokerError } from '../../core/errors';
import type { BatchRequest, BatchResponse, ModelCopies, ModelCopiesEvents, ModelCopy } from '../../core/model-copies';
import { ModelScheduler, type SchedulerConfig } from '../../core/model-scheduler';
import type { Tensor } from '../../proto/tensor';
import type { InferRequest, InferResult, ModelMetadata, ModelReadiness } from '../../core/types';

const META: ModelMetadata = {
  name: 'echo',
  version: '1',
  maxBatch: 8,
  inputs: [{ name: 'X', datatype: 'INT32', shape: [-1, -1] }],
  outputs: [{ name: 'Y', datatype: 'INT32', shape: [-1, -1] }],
};

type Handler = (b: BatchRequest) => Promise<BatchResponse>;

/** Echo: Y = X. */
const echo: Handler = async (b) => ({
  itemErrors: b.items.map(() => undefined),
  tensors: [{ ...b.tensors[0], name: 'Y' }],
  computeNs: 1000,
});

class FakeCopy implements ModelCopy {
  readonly model = 'echo';
  inFlight = 0;
  batches: BatchRequest[] = [];
  readonly maxSequences = 4;
  endSequence(): void {}
  constructor(readonly id: string, readonly metadata: ModelMetadata, private readonly pool: FakePool, public handler: Handler = echo, public credits = 1) {}
  busy(): boolean {
    return this.inFlight > 0;
  }
  hasCapacity(): boolean {
    return this.inFlight < this.credits;
  }
  execute(b: BatchRequest): Promise<BatchResponse> {
    this.inFlight++;
    this.batches.push(b);
    return this.handler(b).finally(() => {
      this.inFlight--;
      queueMicrotask(() => this.pool.emit('capacity'));
    });
  }
}

class FakePool extends EventEmitter<ModelCopiesEvents> implements ModelCopies {
  readonly model = 'echo';
  copies: FakeCopy[] = [];
  /** Demand reports, newest last. */
  demands: { queued: number; running: number }[] = [];
  available(): ModelCopy | undefined {
    return this.copies.find((c) => c.hasCapacity());
  }
  get metadata(): ModelMetadata | undefined {
    return this.copies[0]?.metadata;
  }
  ready(): ModelCopy[] {
    return this.copies;
  }
  requestCopy(): boolean {
    return false;
  }
  readiness(): ModelReadiness {
    return this.copies.length > 0 ? { ready: true, phase: 'ready' } : { ready: false, phase: 'at-zero' };
  }
  demand(queued: number, running: number): void {
    this.demands.push({ queued, running });
  }
  load(): Promise<void> {
    return Promise.resolve();
  }
  unload(): Promise<void> {
    return Promise.resolve();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
  add(copy: FakeCopy): FakeCopy {
    this.copies.push(copy);
    this.emit('capacity');
    return copy;
  }
}

const config = (over: Partial<SchedulerConfig> = {}): SchedulerConfig => ({
  version: '1', batchSize: 8, maxWaitMs: 0, queueCapacity: 100, timeoutMs: 10_000, ...over,
});

function int32(name: string, rows: number[][]): Tensor {
  const flat = rows.flat();
  return { name, datatype: 'INT32', shape: [rows.length, rows[0].length], data: Buffer.from(new Int32Array(flat).buffer) };
}

let n = 0;
const req = (rows: number[][], extra: Partial<InferRequest> = {}): InferRequest => ({ id: `r${n++}`, model: 'echo', inputs: [int32('X', rows)], ...extra });
const values = (t: Tensor) => Array.from(new Int32Array(new Uint8Array(t.data).buffer));

function setup(over: Partial<SchedulerConfig> = {}) {
  const pool = new FakePool();
  const s = new ModelScheduler('echo', config(over), pool, pino({ level: 'silent' }));
  return { pool, s };
}

describe('ModelScheduler', () => {
  test('cuts batches by rows, not requests, when a copy frees up', async () => {
    const { pool, s } = setup({ batchSize: 4 });
    const answers = [req([[1]]), req([[2], [3]]), req([[4]]), req([[5], [6]]), req([[7]])].map((r) => s.submit(r));
    const copy = pool.add(new FakeCopy('c1', META, pool));
    const results = await Promise.all(answers);
    expect(results.map((r) => values(r.outputs[0]))).toEqual([[1], [2, 3], [4], [5, 6], [7]]);
    expect(copy.batches.map((b) => b.items.map((i) => i.rows))).toEqual([[1, 2, 1], [2, 1]]);
    expect(copy.batches[0].tensors[0].shape).toEqual([4, 1]);
  });

  test('requests whose non-batch shapes differ never share a batch', async () => {
    const { pool, s } = setup();
    const answers = [req([[1, 1]]), req([[2]]), req([[3, 3]]), req([[4]])].map((r) => s.submit(r));
    const copy = pool.add(new FakeCopy('c1', META, pool));
    await Promise.all(answers);
    expect(copy.batches.map((b) => b.tensors[0].shape)).toEqual([[2, 2], [2, 1]]);
  });

  test('a full queue rejects at once with RESOURCE_EXHAUSTED and a retry hint', async () => {
    const { s } = setup({ queueCapacity: 2 });
    const a = s.submit(req([[1]]));
    const b = s.submit(req([[2]]));
    await expect(s.submit(req([[3]]))).rejects.toMatchObject({ code: 'RESOURCE_EXHAUSTED', retryAfterMs: expect.any(Number) });
    s.close(new BrokerError('UNAVAILABLE', 'bye'));
    await expect(a).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    await expect(b).rejects.toMatchObject({ code: 'UNAVAILABLE' });
  });

  test('a deadline fires from a timer while queued, and the request leaves the queue', async () => {
    const { s } = setup();
    await expect(s.submit(req([[1]], { timeoutMs: 30 }))).rejects.toMatchObject({ code: 'DEADLINE_EXCEEDED' });
    expect(s.depth).toBe(0);
  });

  test('a deadline fires while the model runs; the late answer is dropped', async () => {
    const { pool, s } = setup();
    let finish!: () => void;
    pool.add(new FakeCopy('c1', META, pool, (b) => new Promise((r) => (finish = () => r({ itemErrors: [undefined], tensors: [{ ...b.tensors[0], name: 'Y' }], computeNs: 1 })))));
    await expect(s.submit(req([[1]], { timeoutMs: 30 }))).rejects.toMatchObject({ code: 'DEADLINE_EXCEEDED', message: expect.stringContaining('running') });
    finish();
    await s.idle();
  });

  test('a cancelled request leaves the queue with CANCELLED', async () => {
    const { s } = setup();
    const ac = new AbortController();
    const p = s.submit(req([[1]], { signal: ac.signal }));
    expect(s.depth).toBe(1);
    ac.abort();
    await expect(p).rejects.toMatchObject({ code: 'CANCELLED' });
    expect(s.depth).toBe(0);
  });

  test('a failed batch fails every member; an item error fails only its request', async () => {
    const { pool, s } = setup();
    const copy = pool.add(new FakeCopy('c1', META, pool, async () => { throw new BrokerError('INTERNAL', 'model error: boom'); }));
    copy.credits = 0;
    const batch = [s.submit(req([[1]])), s.submit(req([[2]]))];
    copy.credits = 1;
    pool.emit('capacity');
    for (const p of batch) await expect(p).rejects.toMatchObject({ code: 'INTERNAL', message: 'model error: boom' });

    copy.handler = async (b) => ({ itemErrors: b.items.map((_, i) => (i === 1 ? 'bad row' : undefined)), tensors: [{ ...b.tensors[0], name: 'Y' }], computeNs: 1 });
    copy.credits = 0;
    const mixed = [s.submit(req([[1]])), s.submit(req([[2]])), s.submit(req([[3]]))];
    copy.credits = 1;
    pool.emit('capacity');
    const settled = await Promise.allSettled(mixed);
    expect(settled.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect((settled[1] as PromiseRejectedResult).reason.message).toBe('model error: bad row');
  });

  test('validation against the model metadata gives INVALID_ARGUMENT', async () => {
    const { pool, s } = setup();
    pool.add(new FakeCopy('c1', META, pool));
    await expect(s.submit({ id: 'x', model: 'echo', inputs: [int32('Z', [[1]])] })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringContaining("no input named 'Z'") });
    await expect(s.submit({ id: 'x', model: 'echo', inputs: [{ ...int32('X', [[1]]), datatype: 'INT16', data: Buffer.alloc(2) }] })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringContaining('expects datatype INT32') });
    await expect(s.submit(req(Array.from({ length: 9 }, () => [1])))).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringContaining('at most 8 rows') });
    await expect(s.submit(req([[1]], { outputs: ['NOPE'] }))).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });

  test('max_wait_ms holds a lone request for company, then sends it', async () => {
    const { pool, s } = setup({ maxWaitMs: 40 });
    const copy = pool.add(new FakeCopy('c1', META, pool));
    const first = s.submit(req([[1]]));
    const second = s.submit(req([[2]]));
    await Promise.all([first, second]);
    expect(copy.batches.map((b) => b.items.length)).toEqual([2]);
  });

  test('any arrival pattern: every request is answered exactly once with its own rows', async () => {
    let seed = 42;
    const rand = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
    const { pool, s } = setup({ batchSize: 8, maxWaitMs: 1, queueCapacity: 10_000 });
    const slow: Handler = async (b) => {
      await new Promise((r) => setImmediate(r));
      return echo(b);
    };
    pool.add(new FakeCopy('c1', META, pool, slow, 2));
    pool.add(new FakeCopy('c2', { ...META, maxBatch: 5 }, pool, slow));
    const expected: number[][] = [];
    let totalRows = 0;
    const answers: Promise<number[]>[] = [];
    for (let i = 0; i < 300; i++) {
      const rows = 1 + Math.floor(rand() * 4);
      const width = rand() < 0.5 ? 1 : 2;
      const data = Array.from({ length: rows }, (_, r) => Array.from({ length: width }, () => i * 10 + r));
      expected.push(data.flat());
      totalRows += rows;
      answers.push(s.submit(req(data)).then((res) => values(res.outputs[0])));
      if (rand() < 0.3) await new Promise((r) => setImmediate(r));
    }
    expect(await Promise.all(answers)).toEqual(expected);
    const stats = s.stats.snapshot('echo', '1');
    expect(stats.inference_count).toBe(totalRows);
    expect(stats.execution_count).toBeLessThan(300);
    expect(s.depth).toBe(0);
    expect(s.inFlight).toBe(0);
  });
  test('a deadline beyond 2^31-1 ms does not fire at once (the timer is chained), and the request is served', async () => {
    const { pool, s } = setup();
    const warned: string[] = [];
    const onWarning = (w: Error) => warned.push(w.name);
    process.on('warning', onWarning);
    const p = s.submit(req([[7]], { timeoutMs: 2 ** 31 + 10_000 }));
    await new Promise((r) => setImmediate(r));
    expect(s.depth).toBe(1); // still queued: not expired by an overflowed timer
    pool.add(new FakeCopy('c1', META, pool));
    expect(values((await p).outputs[0])).toEqual([7]);
    process.off('warning', onWarning);
    expect(warned).not.toContain('TimeoutOverflowWarning');
  });

  test('queue depth is reported to the copies as demand (the cold start reads it)', async () => {
    const { pool, s } = setup();
    const p = s.submit(req([[1]]));
    expect(pool.demands.at(-1)).toEqual({ queued: 1, running: 0 });
    pool.add(new FakeCopy('c1', META, pool));
    await p;
    expect(pool.demands.at(-1)).toEqual({ queued: 0, running: 0 });
  });

  test('a batch lost with its copy goes back in the queue once when the error is retryable, by its flag', async () => {
    const { pool, s } = setup();
    let calls = 0;
    pool.add(new FakeCopy('c1', META, pool, async (b) => {
      if (calls++ === 0) throw new BrokerError('UNAVAILABLE', 'copy crashed', { retryable: true, kind: 'copy-lost' });
      return echo(b);
    }));
    expect(values((await s.submit(req([[3]]))).outputs[0])).toEqual([3]);
    expect(calls).toBe(2);
    pool.copies[0].handler = async () => { throw new BrokerError('UNAVAILABLE', 'copy crashed', { kind: 'copy-lost' }); };
    await expect(s.submit(req([[4]]))).rejects.toMatchObject({ code: 'UNAVAILABLE', retryable: false });
  });
});

describe('ModelScheduler: a copy with two credits (two batches in flight)', () => {
  /** A handler whose batches wait until the test answers them, in any order. */
  function gated() {
    const waiting: { b: BatchRequest; answer: (fail?: BrokerError) => void }[] = [];
    const handler: Handler = (b) => new Promise((resolve, reject) => {
      waiting.push({ b, answer: (fail) => (fail ? reject(fail) : resolve(echo(b))) });
    });
    return { waiting, handler };
  }
  const rowsOf = (b: BatchRequest) => b.items.map((it) => it.rows);
  const tick = () => new Promise((r) => setImmediate(r));

  test('the second batch goes to a running copy only when it is full; a partial one waits for the copy to finish', async () => {
    const { pool, s } = setup({ batchSize: 4 });
    const g = gated();
    const answers = [1, 2, 3, 4, 5, 6].map((v) => s.submit(req([[v]])));
    const copy = pool.add(new FakeCopy('c1', META, pool, g.handler, 2));
    await tick();
    // Idle copy: the first 4 rows at once. Running copy: 2 rows are not a full batch.
    expect(copy.batches.map(rowsOf)).toEqual([[1, 1, 1, 1]]);
    answers.push(s.submit(req([[7]])), s.submit(req([[8]])));
    await tick();
    // Now 4 rows wait: a full batch goes to the second credit while the first runs.
    expect(copy.batches.map(rowsOf)).toEqual([[1, 1, 1, 1], [1, 1, 1, 1]]);
    expect(copy.inFlight).toBe(2);
    answers.push(s.submit(req([[9]])));
    g.waiting[0].answer();
    await tick();
    // The copy still runs batch 2: the lone row waits rather than go as a batch of 1 behind it.
    expect(copy.batches).toHaveLength(2);
    g.waiting[1].answer();
    await tick();
    expect(copy.batches.map(rowsOf)).toEqual([[1, 1, 1, 1], [1, 1, 1, 1], [1]]);
    g.waiting[2].answer();
    const results = await Promise.all(answers);
    expect(results.map((r) => values(r.outputs[0]))).toEqual([[1], [2], [3], [4], [5], [6], [7], [8], [9]]);
    // Requests went out in arrival order, batch by batch.
    expect(copy.batches.flatMap((b) => values(b.tensors[0]))).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);
  });

  test('a copy lost with two batches in flight: every request is answered exactly once, each put back once when retryable', async () => {
    const finished: string[] = [];
    const observer = { queueDepth() {}, batch() {}, finished: (_m: string, outcome: string) => void finished.push(outcome) };
    const pool = new FakePool();
    const s = new ModelScheduler('echo', config({ batchSize: 4 }), pool, pino({ level: 'silent' }), observer);
    const g = gated();
    const lost = () => new BrokerError('UNAVAILABLE', 'model copy c1 of echo exited (code 3)', { retryable: true, kind: 'copy-lost' });
    const answers = [1, 2, 3, 4, 5, 6, 7, 8].map((v) => s.submit(req([[v]])));
    const copy = pool.add(new FakeCopy('c1', META, pool, g.handler, 2));
    await tick();
    expect(copy.batches.map((b) => values(b.tensors[0]))).toEqual([[1, 2, 3, 4], [5, 6, 7, 8]]);
    expect(copy.inFlight).toBe(2);
    // The copy dies with both: both batches go back in the queue and run again.
    g.waiting[0].answer(lost());
    g.waiting[1].answer(lost());
    await tick();
    expect(copy.batches).toHaveLength(4);
    // Dies again with the retried rows: no second retry, each request fails once.
    const dead = values(g.waiting[2].b.tensors[0]);
    expect(dead).toHaveLength(4);
    g.waiting[2].answer(lost());
    g.waiting[3].answer();
    const settled = await Promise.allSettled(answers);
    settled.forEach((r, i) => {
      if (dead.includes(i + 1)) expect((r as PromiseRejectedResult).reason).toMatchObject({ code: 'UNAVAILABLE' });
      else expect(values((r as PromiseFulfilledResult<InferResult>).value.outputs[0])).toEqual([i + 1]);
    });
    // Exactly one end per request, and nothing left behind.
    expect(finished.sort()).toEqual([...Array(4).fill('error'), ...Array(4).fill('success')]);
    expect(s.inFlight).toBe(0);
    expect(s.depth).toBe(0);
  });
});

describe('ModelScheduler: non-batching and decoupled models', () => {
  const WHOLE: ModelMetadata = { ...META, maxBatch: 0, inputs: [{ name: 'X', datatype: 'INT32', shape: [2, -1] }], outputs: [{ name: 'Y', datatype: 'INT32', shape: [2, -1] }] };

  test('batch_size 0: each request runs alone with whole shapes; a batch dimension in front is a shape error', async () => {
    const { pool, s } = setup({ batchSize: 0, maxWaitMs: 50 });
    const answers = [req([[1, 2], [3, 4]]), req([[5, 6], [7, 8]]), req([[9], [10]])].map((r) => s.submit(r));
    const copy = pool.add(new FakeCopy('c1', WHOLE, pool));
    const results = await Promise.all(answers);
    expect(results.map((r) => values(r.outputs[0]))).toEqual([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]);
    expect(copy.batches.map((b) => [b.whole, b.items.length, b.tensors[0].shape])).toEqual([[true, 1, [2, 2]], [true, 1, [2, 2]], [true, 1, [2, 1]]]);
    await expect(s.submit({ id: 'x', model: 'echo', inputs: [{ ...int32('X', [[1, 2]]), shape: [1, 2, 1] }] })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });

  const DECOUPLED: ModelMetadata = { ...META, decoupled: true };
  /** Sends one response per row of each item (Y = that row), then the final RESULT. */
  const streaming: Handler = async (b) => {
    for (const [i, it] of b.items.entries()) {
      for (let r = 0; r < it.rows; r++) b.onResponse!(i, [{ ...int32('Y', [[r]]) }]);
    }
    return { itemErrors: b.items.map(() => undefined), tensors: [], computeNs: 10 };
  };

  test('decoupled: responses reach onResponse while the request runs; the final result has no outputs and the count', async () => {
    const { pool, s } = setup();
    pool.add(new FakeCopy('c1', DECOUPLED, pool, streaming));
    const seen: number[][] = [];
    const done = await s.submit(req([[7], [8], [9]], { onResponse: (r) => seen.push(values(r.outputs[0])) }));
    expect(seen).toEqual([[0], [1], [2]]);
    expect(done).toMatchObject({ outputs: [], responses: 3 });
    const stats = s.stats.snapshot('echo', '1').response_stats;
    expect(Object.keys(stats)).toEqual(['0', '1', '2', '3']);
    expect(stats['3'].empty_response.count).toBe(1);
    expect(stats['0'].success.count).toBe(1);
  });

  test('decoupled: a call without onResponse is refused (UNIMPLEMENTED), at admission or, if admitted before READY, at the final marker', async () => {
    const { pool, s } = setup();
    const early = s.submit(req([[1]]));
    pool.add(new FakeCopy('c1', DECOUPLED, pool, streaming));
    await expect(early).rejects.toMatchObject({ code: 'UNIMPLEMENTED' });
    await expect(s.submit(req([[1]]))).rejects.toMatchObject({ code: 'UNIMPLEMENTED', message: expect.stringContaining('decoupled transaction policy') });
  });

  test('decoupled: responses after the deadline settled the request are dropped', async () => {
    const { pool, s } = setup();
    let later!: () => void;
    const slow: Handler = (b) => new Promise((resolve) => {
      b.onResponse!(0, [int32('Y', [[1]])]);
      later = () => {
        b.onResponse!(0, [int32('Y', [[2]])]);
        resolve({ itemErrors: [undefined], tensors: [], computeNs: 1 });
      };
    });
    const copy = pool.add(new FakeCopy('c1', DECOUPLED, pool, slow));
    const seen: number[][] = [];
    await expect(s.submit(req([[1]], { timeoutMs: 30, onResponse: (r) => seen.push(values(r.outputs[0])) }))).rejects.toMatchObject({ code: 'DEADLINE_EXCEEDED' });
    later();
    await new Promise((r) => setImmediate(r));
    expect(seen).toEqual([[1]]);
    expect(copy.inFlight).toBe(0);
  });
});

describe('ModelScheduler: background requests (jobs) behind live traffic', () => {
  function gated() {
    const waiting: { b: BatchRequest; answer: () => void }[] = [];
    const handler: Handler = (b) => new Promise((resolve) => {
      waiting.push({ b, answer: () => resolve(echo(b)) });
    });
    return { waiting, handler };
  }
  const tick = () => new Promise((r) => setImmediate(r));
  const bg = (v: number, extra: Partial<InferRequest> = {}) => req([[v]], { background: true, priority: 1_000_000, ...extra });

  test('live requests go first and background ones fill the free rows, whatever the live priority number', async () => {
    const { pool, s } = setup({ batchSize: 8, backgroundIdleMs: 50 });
    const answers = [bg(1), bg(2), bg(3), bg(4, { priority: 1 }), bg(5), bg(6), bg(7)].map((r) => s.submit(r));
    answers.push(s.submit(req([[100]], { priority: 5_000_000 })), s.submit(req([[101]])));
    const copy = pool.add(new FakeCopy('c1', META, pool));
    await Promise.all(answers);
    // Live first (by their priority: 5,000,000 ranks above the default 0), then background by its own priority, then arrival.
    expect(values(copy.batches[0].tensors[0])).toEqual([100, 101, 4, 1, 2, 3, 5, 6]);
    expect(copy.batches.map((b) => b.items.length)).toEqual([8, 1]);
  });

  test('background work alone waits until no live request arrived for backgroundIdleMs', async () => {
    const idleMs = 60;
    const { pool, s } = setup({ batchSize: 8, backgroundIdleMs: idleMs });
    const g = gated();
    const copy = pool.add(new FakeCopy('c1', META, pool, g.handler));
    const live = s.submit(req([[1]]));
    const liveAt = process.hrtime.bigint();
    await tick();
    g.waiting[0].answer();
    await live;
    const job = s.submit(bg(2));
    await tick();
    expect(copy.batches).toHaveLength(1); // the copy is idle, but live traffic was just here
    // Waits for the dispatch itself (an event), then checks when it happened.
    while (g.waiting.length < 2) await new Promise((r) => setTimeout(r, 5));
    expect(Number(process.hrtime.bigint() - liveAt) / 1e6).toBeGreaterThanOrEqual(idleMs);
    g.waiting[1].answer();
    expect(values((await job).outputs[0])).toEqual([2]);
  });

  test('a live arrival while background work waits takes it along in its batch at once', async () => {
    const { pool, s } = setup({ batchSize: 8, backgroundIdleMs: 10_000 });
    const copy = pool.add(new FakeCopy('c1', META, pool));
    await s.submit(req([[1]]));
    const jobs = [bg(2), bg(3), bg(4)].map((r) => s.submit(r));
    await tick();
    expect(copy.batches).toHaveLength(1);
    const live = s.submit(req([[5]]));
    await Promise.all([live, ...jobs]);
    expect(values(copy.batches[1].tensors[0])).toEqual([5, 2, 3, 4]);
  });

  test('a live request waits max_wait_ms for live peers even when queued background rows could fill its batch', async () => {
    const { pool, s } = setup({ batchSize: 4, maxWaitMs: 10_000, backgroundIdleMs: 50 });
    const g = gated();
    const copy = pool.add(new FakeCopy('c1', META, pool, g.handler));
    const first = [1, 2, 3, 4].map((v) => s.submit(req([[v]])));
    await tick();
    const jobs = [10, 11, 12, 13].map((v) => s.submit(bg(v)));
    g.waiting[0].answer();
    await Promise.all(first);
    const live = [s.submit(req([[5]]))];
    await tick();
    expect(copy.batches).toHaveLength(1); // not [5, 10, 11, 12]: live peers may still come
    live.push(...[6, 7, 8].map((v) => s.submit(req([[v]]))));
    await tick();
    expect(values(copy.batches[1].tensors[0])).toEqual([5, 6, 7, 8]);
    g.waiting[1].answer();
    await Promise.all(live);
    while (g.waiting.length < 3) await new Promise((r) => setTimeout(r, 5)); // the jobs, once live traffic paused
    expect(values(copy.batches[2].tensors[0])).toEqual([10, 11, 12, 13]);
    g.waiting[2].answer();
    await Promise.all(jobs);
  });

  test('background work never takes a running copy\'s second credit, even as a full batch', async () => {
    const { pool, s } = setup({ batchSize: 4, backgroundIdleMs: 0 });
    const g = gated();
    const copy = pool.add(new FakeCopy('c1', META, pool, g.handler, 2));
    const live = s.submit(req([[1]]));
    await tick();
    expect(copy.batches).toHaveLength(1);
    const jobs = [2, 3, 4, 5].map((v) => s.submit(bg(v)));
    await tick();
    expect(copy.batches).toHaveLength(1); // four rows are a full batch, but the copy is busy
    // A full live batch does take the second credit (and nothing of the background rides along: it is full).
    const lives = [6, 7, 8, 9].map((v) => s.submit(req([[v]])));
    await tick();
    expect(copy.batches.map((b) => values(b.tensors[0]))).toEqual([[1], [6, 7, 8, 9]]);
    g.waiting[0].answer();
    await tick();
    expect(copy.batches).toHaveLength(2); // one batch still runs: the copy is busy
    g.waiting[1].answer();
    await tick();
    expect(copy.batches.map((b) => values(b.tensors[0]))).toEqual([[1], [6, 7, 8, 9], [2, 3, 4, 5]]);
    g.waiting[2].answer();
    await Promise.all([live, ...jobs, ...lives]);
  });
});
