/**
 * Stateful models end to end, with the motion example model as real processes:
 * more sequences than slots, interleaved, over every bridge (each sequence keeps
 * its copy and slot, frames in order with the right indices, batches mix
 * sequences, the backlog drains); the same refusals everywhere; idle sequences
 * reaped and the model told; a cancelled gRPC stream frees its slot; a killed
 * copy fails its sequences cleanly.
 */
import type { SequenceStatus } from '../../core/sequence-scheduler';
import type { Tensor } from '../../proto/tensor';
import { ZmqClient, ZmqClientError } from '../../sdk/node';
import { getJson, modelMain, startTestBroker, waitFor, waitReady, type TestBroker } from '../helpers/broker';
import { GrpcTestClient } from '../helpers/grpc-client';
import { TRANSPORTS, grpcStream, zmqTransport, type InferOptions, type Outcome, type Transport } from '../helpers/transports';

const H = 6;
const W = 8;
const STEP = 3;

const motion = (env: Record<string, string>, over: Record<string, unknown>) => ({
  command: ['node', modelMain('motion')],
  stateless: false,
  batch_size: 4,
  min_replicas: 1,
  max_replicas: 1,
  sequence_idle_ms: 60_000,
  env,
  ...over,
});

const models = {
  // 2 copies × 2 slots; a batch costs 15 ms so frames of other sequences gather meanwhile.
  motion: motion({ MOTION_A_MS: '15' }, { max_sequences: 2, min_replicas: 2, max_replicas: 2 }),
  'motion-idle': motion({}, { max_sequences: 1, sequence_idle_ms: 300 }),
  'motion-one': motion({}, { max_sequences: 1 }),
  'motion-crash': motion({ MOTION_A_MS: '300' }, { max_sequences: 2 }),
  // One copy taking two batches in flight (credits 2): the second waits at the copy.
  'motion-c2': motion({ MOTION_A_MS: '60', MOTION_CREDITS: '2' }, { max_sequences: 4 }),
  identity: { command: ['node', modelMain('identity')], batch_size: 4 },
};

/** Frame `f` of sequence `q`: every byte q·7 + f·STEP, so MOTION is STEP after the first frame. */
function frame(q: number, f: number): Tensor {
  return { name: 'FRAME', datatype: 'UINT8', shape: [1, H, W, 3], data: Buffer.alloc(H * W * 3, (q * 7 + f * STEP) & 255) };
}

interface FrameResult { index: number; motion: number; slot: number; rows: number; ends: number[]; copy: string }

function result(o: Outcome): FrameResult {
  if (!o.ok) throw new Error(`${o.code}: ${o.message}`);
  const v = (name: string) => (o.outputs[name].values as unknown[]).flat(3) as (number | string)[];
  return {
    index: v('FRAME_INDEX')[0] as number,
    motion: v('MOTION')[0] as number,
    slot: v('SLOT')[0] as number,
    rows: v('BATCH_ROWS')[0] as number,
    ends: v('ENDS') as number[],
    copy: String(v('COPY')[0]),
  };
}

const status = (b: TestBroker, model: string): Promise<SequenceStatus> => getJson(`${b.url}/v2/models/${model}/sequences`);

describe('sequences (stateful models)', () => {
  let b: TestBroker;
  beforeAll(async () => {
    b = await startTestBroker({ models });
    await Promise.all(Object.keys(models).map((m) => waitReady(b, m)));
    await waitFor(async () => (await status(b, 'motion')).slots === 4, 20_000, 'both motion copies ready');
  });
  afterAll(async () => {
    await b?.stop();
  });

  describe.each(TRANSPORTS.map((t) => [t.name, t] as const))('%s', (name, factory) => {
    let t: Transport;
    beforeAll(async () => {
      t = await factory.open(b);
    });
    afterAll(async () => {
      await t?.close();
    });

    // Streams carry frames in order on one connection: all frames go out at once.
    // Unary calls race each other, so a client sends a sequence's next frame after its answer.
    const pipelined = factory === grpcStream || factory === zmqTransport;
    // Numeric ids on two bridges exercise uint64 sequence_id; strings elsewhere.
    const numeric = name === 'REST JSON' || name === 'gRPC unary';

    test('6 sequences over 4 slots, interleaved: same copy and slot, frames in order, batches mix, backlog drains', async () => {
      const S = 6;
      const F = 5;
      const before = await status(b, 'motion');
      /** One round of S sequences of F frames; ids unique per round. */
      const runRound = async (round: number) => {
        const id = (q: number): string | number => (numeric ? 1000 * (TRANSPORTS.indexOf(factory) + 1) + 10 * round + q : `${name}/r${round}/cam-${q}`);
        const send = (q: number, f: number) => t.infer('motion', [frame(q, f)], { sequence: { id: id(q), start: f === 0, end: f === F - 1 } });
        const got: FrameResult[][] = Array.from({ length: S }, () => []);
        const arrivals: string[] = [];
        if (pipelined) {
          const all: Promise<void>[] = [];
          for (let f = 0; f < F; f++) {
            for (let q = 0; q < S; q++) {
              all.push(send(q, f).then((o) => {
                got[q][f] = result(o);
                arrivals.push(`${q}:${f}`);
              }));
            }
          }
          await Promise.all(all);
        } else {
          await Promise.all(Array.from({ length: S }, async (_, q) => {
            for (let f = 0; f < F; f++) got[q][f] = result(await send(q, f));
          }));
        }
        for (let q = 0; q < S; q++) {
          expect(got[q].map((r) => r.index)).toEqual([0, 1, 2, 3, 4]);
          expect(got[q].map((r) => r.motion)).toEqual([0, STEP, STEP, STEP, STEP]);
          expect(new Set(got[q].map((r) => `${r.copy}/${r.slot}`)).size).toBe(1);
          // Answers of one sequence arrive in order.
          if (pipelined) expect(arrivals.filter((a) => a.startsWith(`${q}:`))).toEqual([0, 1, 2, 3, 4].map((f) => `${q}:${f}`));
        }
        // Two copies, two slots each.
        const places = new Set(got.map((g) => `${g[0].copy}/${g[0].slot}`));
        expect(new Set(got.map((g) => g[0].copy)).size).toBe(2);
        expect(places.size).toBeLessThanOrEqual(4);
        return got.flat().some((r) => r.rows > 1);
      };
      // Batches mix sequences when frames of two sequences wait for the same copy at
      // once. How often that happens depends on the machine's load, so rounds repeat
      // until a mixed batch shows up (a scheduler that never mixes fails at the deadline).
      let rounds = 0;
      let mixed = false;
      const until = Date.now() + 30_000;
      while (!mixed && (rounds === 0 || Date.now() < until)) mixed = await runRound(rounds++);
      expect(mixed).toBe(true);
      const after = await status(b, 'motion');
      expect(after).toMatchObject({ active: 0, backlog: 0, slots: 4 });
      expect(after.backlogged - before.backlogged).toBeGreaterThanOrEqual(2);
      expect(after.ended.end - before.ended.end).toBe(S * rounds);
    });

    test('the same refusals: no sequence id, unknown sequence, sequence on a stateless model', async () => {
      const plain = await t.infer('motion', [frame(0, 0)], {});
      expect(plain).toMatchObject({ ok: false, code: 'INVALID_ARGUMENT' });
      const ghost = await t.infer('motion', [frame(0, 1)], { sequence: { id: `ghost-${name}` } });
      expect(ghost).toMatchObject({ ok: false, code: 'INVALID_ARGUMENT', message: expect.stringMatching(/must specify the START flag on the first request of the sequence.*is not active/) });
      const x: Tensor = { name: 'IN_INT32', datatype: 'INT32', shape: [1, 1], data: Buffer.alloc(4) };
      const stateless = await t.infer('identity', [x], { outputs: ['OUT_INT32'], sequence: { id: 'x', start: true } } as InferOptions);
      expect(stateless).toMatchObject({ ok: false, code: 'INVALID_ARGUMENT', message: expect.stringContaining('stateless') });
    });
  });

  test('credits 2: two batches in flight at one copy, and every sequence still sees its frames in order', async () => {
    const t = await zmqTransport.open(b);
    const S = 4;
    const F = 6;
    let two = false;
    let sending = true;
    try {
      // Watch the copy while frames flow: its second credit must be used at some point.
      const watch = (async () => {
        while (sending && !two) {
          two = b.running.tasks.copies().some((c) => c.model === 'motion-c2' && c.inFlight === 2);
          await new Promise((r) => setTimeout(r, 5));
        }
      })();
      for (let round = 0; round < 10 && !two; round++) {
        const got: FrameResult[][] = Array.from({ length: S }, () => []);
        const arrivals: string[] = [];
        const all: Promise<void>[] = [];
        // All frames at once on one ZeroMQ connection: the broker sees each sequence's frames in order.
        for (let f = 0; f < F; f++) {
          for (let q = 0; q < S; q++) {
            const o = t.infer('motion-c2', [frame(q, f)], { sequence: { id: `c2/r${round}/cam-${q}`, start: f === 0, end: f === F - 1 } });
            all.push(o.then((x) => {
              got[q][f] = result(x);
              arrivals.push(`${q}:${f}`);
            }));
          }
        }
        await Promise.all(all);
        for (let q = 0; q < S; q++) {
          expect(got[q].map((r) => r.index)).toEqual([0, 1, 2, 3, 4, 5]);
          expect(got[q].map((r) => r.motion)).toEqual([0, STEP, STEP, STEP, STEP, STEP]);
          expect(new Set(got[q].map((r) => r.slot)).size).toBe(1);
          expect(arrivals.filter((a) => a.startsWith(`${q}:`))).toEqual([0, 1, 2, 3, 4, 5].map((f) => `${q}:${f}`));
        }
      }
      sending = false;
      await watch;
      expect(b.running.tasks.copies().find((c) => c.model === 'motion-c2')?.credits).toBe(2);
      expect(two).toBe(true);
    } finally {
      sending = false;
      await t.close();
    }
  });

  test('an idle sequence is reaped, the model is told (reason idle), a waiting sequence gets the slot, the late frame a clear error', async () => {
    const t = await TRANSPORTS[0].open(b);
    try {
      const a = result(await t.infer('motion-idle', [frame(1, 0)], { sequence: { id: 'idle-a', start: true } }));
      // The only slot is held by 'idle-a', which sends nothing more: 'idle-b' waits in the backlog until it is reaped.
      const bRes = result(await t.infer('motion-idle', [frame(2, 0)], { sequence: { id: 'idle-b', start: true, end: true } }));
      expect(bRes.slot).toBe(a.slot);
      expect(bRes.ends[2]).toBeGreaterThanOrEqual(1); // the model counted an idle end before this frame
      const late = await t.infer('motion-idle', [frame(1, 1)], { sequence: { id: 'idle-a' } });
      expect(late).toMatchObject({ ok: false, code: 'INVALID_ARGUMENT', message: expect.stringContaining('expired after 300 ms') });
      expect((await status(b, 'motion-idle')).ended.idle).toBeGreaterThanOrEqual(1);
    } finally {
      await t.close();
    }
  });

  test('a gRPC stream cancelled mid-video frees its slot and the model is told (reason cancelled)', async () => {
    const client = new GrpcTestClient(b.running.ports.grpc);
    const stream = client.stream();
    stream.on('error', () => undefined); // the cancel shows as an error on the client side
    const answers: FrameResult[] = [];
    const two = new Promise<void>((resolve) => {
      stream.on('data', (msg) => {
        answers.push(result({
          ok: true,
          outputs: Object.fromEntries(msg.inferResponse!.outputs.map((o: { name: string; datatype: string; shape: bigint[] }, i: number) => {
            const data = Buffer.from(msg.inferResponse!.rawOutputContents[i]);
            const values = o.datatype === 'BYTES' ? [data.subarray(4).toString()] : o.datatype === 'FP32' ? Array.from(new Float32Array(new Uint8Array(data).buffer)) : Array.from(new Int32Array(new Uint8Array(data).buffer));
            return [o.name, { datatype: o.datatype as 'INT32', shape: o.shape.map(Number), values }];
          })),
        }));
        if (answers.length === 2) resolve();
      });
    });
    const req = (f: number) => ({
      modelName: 'motion-one',
      id: `c${f}`,
      inputs: [{ name: 'FRAME', datatype: 'UINT8', shape: [1n, BigInt(H), BigInt(W), 3n] }],
      rawInputContents: [frame(3, f).data],
      parameters: {
        sequence_id: { parameterChoice: { case: 'stringParam' as const, value: 'video-cancel' } },
        sequence_start: { parameterChoice: { case: 'boolParam' as const, value: f === 0 } },
      },
    });
    stream.write(req(0));
    stream.write(req(1));
    await two;
    expect(answers.map((a) => a.index)).toEqual([0, 1]);
    const before = (await status(b, 'motion-one')).ended.cancelled;
    stream.cancel();
    // The slot is free without waiting for the idle timeout (60 s): another sequence gets it.
    const t = await TRANSPORTS[2].open(b);
    try {
      const next = result(await t.infer('motion-one', [frame(4, 0)], { sequence: { id: 'after-cancel', start: true, end: true } }));
      expect(next.slot).toBe(answers[0].slot);
      expect(next.ends[1]).toBeGreaterThanOrEqual(1);
      expect((await status(b, 'motion-one')).ended.cancelled).toBe(before + 1);
      const late = await t.infer('motion-one', [frame(3, 2)], { sequence: { id: 'video-cancel' } });
      expect(late).toMatchObject({ ok: false, code: 'INVALID_ARGUMENT', message: expect.stringContaining('cancelled') });
    } finally {
      await t.close();
      client.close();
    }
  });

  test('a killed copy fails its sequences (running and queued) with UNAVAILABLE; later frames get INVALID_ARGUMENT (START flag needed); a restart starts afresh', async () => {
    const client = new ZmqClient(b.zmqEndpoint);
    const seq = (f: number, start = false) => ({ id: 'doomed', start });
    const fail = (p: Promise<unknown>) => p.then(() => { throw new Error('expected a failure'); }, (e: ZmqClientError) => e);
    try {
      const first = await client.infer('motion-crash', [frame(5, 0)], { sequence: seq(0, true) });
      const copyId = first.outputs.find((o) => o.name === 'COPY')!.data.subarray(4).toString();
      const running = fail(client.infer('motion-crash', [frame(5, 1)], { sequence: seq(1) }));
      const queued = fail(client.infer('motion-crash', [frame(5, 2)], { sequence: seq(2) }));
      // Kill the copy while frame 1 runs (a batch takes 300 ms) and frame 2 waits behind it.
      await waitFor(() => b.running.broker.load().some((l) => l.model === 'motion-crash' && l.running === 1 && l.queued === 1), 5000, 'frame 1 running');
      const pid = b.running.tasks.copies().find((c) => c.id === copyId)!.pid!;
      process.kill(pid, 'SIGKILL');
      for (const e of [await running, await queued]) {
        expect(e.code).toBe('UNAVAILABLE');
        expect(e.message).toMatch(/lost|killed by SIGKILL/);
      }
      const late = await fail(client.infer('motion-crash', [frame(5, 3)], { sequence: seq(3) }));
      expect(late.code).toBe('INVALID_ARGUMENT');
      expect(late.message).toMatch(/lost/);
      // Nothing was moved: once a new copy is up, the sequence starts again from frame 0.
      await waitFor(async () => (await status(b, 'motion-crash')).slots > 0, 20_000, 'a new motion-crash copy');
      const again = await client.infer('motion-crash', [frame(5, 4)], { sequence: { id: 'doomed', start: true, end: true } });
      const idx = again.outputs.find((o) => o.name === 'FRAME_INDEX')!;
      expect(idx.data.readInt32LE(0)).toBe(0);
      expect(again.outputs.find((o) => o.name === 'COPY')!.data.subarray(4).toString()).not.toBe(copyId);
      expect((await status(b, 'motion-crash')).ended.lost).toBe(1);
    } finally {
      await client.close();
    }
  });
});
