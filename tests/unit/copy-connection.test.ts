import { create } from '@bufbuild/protobuf';
import { BrokerError } from '../../core/errors';
import type { BatchRequest } from '../../core/model-copies';
import type { Tensor } from '../../proto/tensor';
import {
  BatchSchema,
  HeartbeatSchema,
  ItemStatusSchema,
  ReadySchema,
  ResponseSchema,
  ResultSchema,
  TensorSpecSchema,
  decodeFrames,
  encodeFrames,
  toMeta,
  type Batch,
} from '../../proto/link';
import { CopyConnection } from '../../task-manager/copy-connection';

class FakeLink {
  sent: { copyId: string; frames: Buffer[] }[] = [];
  send(copyId: string, frames: Buffer[]): void {
    this.sent.push({ copyId, frames });
  }
  lastBatch(): Batch {
    const k = decodeFrames(this.sent[this.sent.length - 1].frames).envelope.kind;
    if (k.case !== 'batch') throw new Error(`last message is ${k.case}`);
    return k.value;
  }
}

const t = (name: string, rows: number): Tensor => ({ name, datatype: 'FP32', shape: [rows, 2], data: Buffer.alloc(rows * 8) });

function batch(id: bigint, deadlineMs = 5000): BatchRequest {
  return {
    batchId: id,
    model: 'm',
    items: [{ requestId: 'a', rows: 1 }, { requestId: 'b', rows: 2 }],
    tensors: [t('X', 3)],
    outputs: ['Y'],
    deadline: Date.now() + deadlineMs,
  };
}

function ready(conn: CopyConnection, maxBatch = 8, credits = 0): void {
  const spec = create(TensorSpecSchema, { name: 'X', datatype: 'FP32', shape: [-1n, 2n] });
  conn.handle(decodeFrames(encodeFrames({ case: 'ready', value: create(ReadySchema, { model: 'm', version: '3', maxBatch, credits, inputs: [spec], outputs: [spec] }) })));
}

function result(conn: CopyConnection, id: bigint, opts: { error?: string; items?: string[]; tensors?: Tensor[] } = {}): void {
  const tensors = opts.tensors ?? [t('Y', 3)];
  conn.handle(
    decodeFrames(
      encodeFrames(
        {
          case: 'result',
          value: create(ResultSchema, {
            batchId: id,
            error: opts.error ?? '',
            items: (opts.items ?? ['', '']).map((e) => create(ItemStatusSchema, { error: e })),
            tensors: opts.error ? [] : tensors.map(toMeta),
            computeNs: 5n,
          }),
        },
        opts.error ? [] : tensors,
      ),
    ),
  );
}

describe('CopyConnection', () => {
  let link: FakeLink;
  let conn: CopyConnection;
  beforeEach(() => {
    link = new FakeLink();
    conn = new CopyConnection({ id: 'c1', model: 'm', link, batchSize: 4, heartbeatMs: 100, missedHeartbeats: 3 });
  });
  afterEach(() => conn.ended('test over'));

  test('READY gives metadata (maxBatch capped by batch_size) and capacity', () => {
    expect(conn.hasCapacity()).toBe(false);
    const onReady = jest.fn();
    conn.on('ready', onReady);
    ready(conn, 8);
    expect(conn.state).toBe('ready');
    expect(conn.metadata).toEqual({
      name: 'm', version: '3', maxBatch: 4,
      inputs: [{ name: 'X', datatype: 'FP32', shape: [-1, 2] }], outputs: [{ name: 'X', datatype: 'FP32', shape: [-1, 2] }],
    });
    expect(onReady).toHaveBeenCalledTimes(1);
    expect(conn.credits).toBe(1);
  });

  test('execute sends a BATCH and resolves on RESULT with item errors', async () => {
    ready(conn);
    const p = conn.execute(batch(7n));
    expect(conn.hasCapacity()).toBe(false);
    const b = link.lastBatch();
    expect(link.sent[0].copyId).toBe('c1');
    expect(b.batchId).toBe(7n);
    expect(b.items.map((i) => [i.requestId, i.rows])).toEqual([['a', 1], ['b', 2]]);
    expect(b.tensors[0].shape).toEqual([3n, 2n]);
    expect(b.outputs).toEqual(['Y']);
    const cap = jest.fn();
    conn.on('capacity', cap);
    result(conn, 7n, { items: ['', 'bad row'] });
    const r = await p;
    expect(r.itemErrors).toEqual([undefined, 'bad row']);
    expect(r.tensors[0].shape).toEqual([3, 2]);
    expect(r.computeNs).toBe(5);
    expect(cap).toHaveBeenCalled();
    expect(conn.hasCapacity()).toBe(true);
  });

  test('a batch error rejects INTERNAL "model error"; a bad result rejects INTERNAL', async () => {
    ready(conn, 0, 2);
    expect(conn.metadata.maxBatch).toBe(4);
    const p1 = conn.execute(batch(1n));
    const p2 = conn.execute(batch(2n));
    expect(conn.hasCapacity()).toBe(false);
    result(conn, 1n, { error: 'boom' });
    await expect(p1).rejects.toMatchObject({ code: 'INTERNAL', message: 'model error: boom' });
    conn.handle(decodeFrames(encodeFrames({ case: 'result', value: create(ResultSchema, { batchId: 2n, items: [], tensors: [toMeta(t('Y', 3))] }) })));
    await expect(p2).rejects.toMatchObject({ code: 'INTERNAL' });
    expect(conn.state).toBe('ready');
  });

  test('a RESULT whose frames do not match their shape is refused (INTERNAL) and the copy keeps serving', async () => {
    ready(conn);
    const short = conn.execute(batch(10n));
    result(conn, 10n, { tensors: [{ ...t('Y', 3), data: Buffer.alloc(20) }] });
    await expect(short).rejects.toMatchObject({ code: 'INTERNAL', message: expect.stringMatching(/sent a bad result: tensor 'Y': shape \[3,2\] of FP32 needs 24 bytes, the frame has 20/) });
    const bytes = conn.execute(batch(11n));
    result(conn, 11n, { tensors: [{ name: 'Y', datatype: 'BYTES', shape: [3], data: Buffer.from([5, 0, 0, 0, 1]) }] });
    await expect(bytes).rejects.toMatchObject({ code: 'INTERNAL', message: expect.stringMatching(/sent a bad result: output 'Y'/) });
    expect(conn.state).toBe('ready');
    const ok = conn.execute(batch(12n));
    result(conn, 12n);
    await expect(ok).resolves.toMatchObject({ itemErrors: [undefined, undefined] });
  });

  test('a missed deadline rejects UNAVAILABLE and fails the copy', async () => {
    ready(conn);
    const failed = new Promise((r) => conn.once('failed', r));
    await expect(conn.execute(batch(3n, 20))).rejects.toMatchObject({ code: 'UNAVAILABLE', message: expect.stringMatching(/hung/) });
    await failed;
    expect(conn.state).toBe('failed');
    await expect(conn.execute(batch(4n))).rejects.toBeInstanceOf(BrokerError);
  });

  test('copy death rejects every batch in flight', async () => {
    ready(conn, 8, 2);
    const ps = [conn.execute(batch(1n)), conn.execute(batch(2n))];
    conn.ended('model copy c1 of m exited (code 3): oops');
    for (const p of ps) await expect(p).rejects.toMatchObject({ code: 'UNAVAILABLE', message: 'model copy c1 of m exited (code 3): oops' });
  });

  test('idle heartbeat silence fails the copy; silence while busy does not', () => {
    ready(conn);
    const now = Date.now();
    const p = conn.execute(batch(9n, 60_000));
    conn.tick(now + 1000);
    expect(conn.state).toBe('ready');
    result(conn, 9n);
    conn.handle(decodeFrames(encodeFrames({ case: 'heartbeat', value: create(HeartbeatSchema, { timeMs: 1n }) })));
    conn.tick(Date.now() + 200);
    expect(conn.state).toBe('ready');
    conn.tick(Date.now() + 1000);
    expect(conn.state).toBe('failed');
    return p;
  });

  test('unknown results and copy-side BATCH messages are ignored', () => {
    ready(conn);
    expect(() => result(conn, 42n)).not.toThrow();
    expect(() => conn.handle(decodeFrames(encodeFrames({ case: 'batch', value: create(BatchSchema, { batchId: 1n }) })))).not.toThrow();
    expect(conn.state).toBe('ready');
  });

  test('version 2: READY decoupled, a whole batch flag on the wire, RESPONSEs to onResponse before the final RESULT', async () => {
    const spec = create(TensorSpecSchema, { name: 'X', datatype: 'FP32', shape: [2n] });
    conn.handle(decodeFrames(encodeFrames({ case: 'ready', value: create(ReadySchema, { protocolVersion: 2, model: 'm', decoupled: true, inputs: [spec], outputs: [spec] }) })));
    expect(conn.metadata.decoupled).toBe(true);
    const seen: [number, number[]][] = [];
    const b: BatchRequest = {
      ...batch(9n), whole: true, items: [{ requestId: 'a', rows: 1 }], tensors: [{ name: 'X', datatype: 'FP32', shape: [2], data: Buffer.alloc(8) }],
      onResponse: (item, tensors) => seen.push([item, tensors[0].shape]),
    };
    const answer = conn.execute(b);
    expect(link.lastBatch().whole).toBe(true);
    const respond = (item: number, batchId = 9n) => conn.handle(decodeFrames(encodeFrames(
      { case: 'response', value: create(ResponseSchema, { batchId, item, tensors: [toMeta(t('Y', 1))] }) }, [t('Y', 1)])));
    respond(0);
    respond(5); // no such item: dropped
    respond(0, 77n); // no such batch: dropped
    respond(0);
    result(conn, 9n, { items: [''], tensors: [] });
    await expect(answer).resolves.toMatchObject({ itemErrors: [undefined], tensors: [] });
    expect(seen).toEqual([[0, [1, 2]], [0, [1, 2]]]);
  });
});
