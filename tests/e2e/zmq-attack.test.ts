/**
 * The whole-message bound of the ZeroMQ bridge (issue 11): three real libzmq
 * DEALERs each send one message of 20 frames x 8 MiB (160 MiB) against a
 * 10 MiB maxMessageBytes. Every frame is under the limit, so libzmq's
 * ZMQ_MAXMSGSIZE (per frame) let all of it in, and libzmq's ROUTER assembled
 * each message whole (480 MiB) before the bridge could refuse it. The bridge's
 * own ROUTER skips a message as soon as its running total passes the limit:
 * each client gets INVALID_ARGUMENT with its id, the process grows by far less
 * than the attack's size, and the bridge serves normally afterwards.
 *
 * The broker and the bridge run in this process (the clients' libzmq sends
 * the same 8 MiB buffer 20 times without copying it), so the growth of this
 * process's RSS is the broker's.
 */
import { create, toBinary } from '@bufbuild/protobuf';
import pino from 'pino';
import { Dealer } from 'zeromq';
import { startZmqBridge, type ZmqBridge } from '../../bridges/zmq/server';
import { InferReplySchema, InferRequestSchema, decodeHeader, toMeta } from '../../proto/client';
import { modelMain, startTestBroker, waitReady, type TestBroker } from '../helpers/broker';

const MiB = 1 << 20;
const LIMIT = 10 * MiB;
const FRAMES = 20;
const FRAME = 8 * MiB;
const CLIENTS = 3;

const header = (id: string, n: number) =>
  Buffer.from(toBinary(InferRequestSchema, create(InferRequestSchema, {
    id, model: 'identity', outputs: ['OUT_UINT8'],
    inputs: [toMeta({ name: 'IN_UINT8', datatype: 'UINT8', shape: [1, n], data: Buffer.alloc(0) })],
  })));

describe('ZeroMQ bridge: a multi-frame message over maxMessageBytes is refused before it is received whole', () => {
  let b: TestBroker;
  let bridge: ZmqBridge;

  beforeAll(async () => {
    b = await startTestBroker({ models: { identity: { command: ['node', modelMain('identity')], batch_size: 4 } } });
    bridge = await startZmqBridge({ broker: b.running.broker, host: '127.0.0.1', port: 0, maxMessageBytes: LIMIT, logger: pino({ level: 'silent' }) });
    await waitReady(b, 'identity');
  });
  afterAll(async () => {
    await bridge?.close();
    await b?.stop();
  });

  async function normalRequest(d: Dealer, id: string): Promise<void> {
    const x = Buffer.alloc(MiB, 7);
    await d.send([header(id, x.length), x]);
    const [head, out] = await d.receive();
    expect(decodeHeader(InferReplySchema, head)).toMatchObject({ id, status: { code: 'OK' } });
    expect(out.equals(x)).toBe(true);
  }

  test(`${CLIENTS} clients x ${FRAMES} frames x 8 MiB under a 10 MiB limit: INVALID_ARGUMENT each, RSS grows < 100 MiB, served after`, async () => {
    const dealers = Array.from({ length: CLIENTS }, () => {
      const d = new Dealer({ linger: 0, receiveTimeout: 60_000 });
      d.connect(bridge.endpoint);
      return d;
    });
    try {
      // Warm up (connections, code paths, a 1 MiB request) before the baseline.
      await Promise.all(dealers.map((d, i) => normalRequest(d, `warm-${i}`)));
      const frame = Buffer.alloc(FRAME, 1);
      const base = process.memoryUsage();
      let peakRss = 0;
      let peakArrayBuffers = 0;
      const sample = () => {
        const m = process.memoryUsage();
        peakRss = Math.max(peakRss, m.rss - base.rss);
        peakArrayBuffers = Math.max(peakArrayBuffers, m.arrayBuffers - base.arrayBuffers);
      };
      const sampler = setInterval(sample, 5);
      let replies;
      try {
        replies = await Promise.all(dealers.map(async (d, i) => {
          await d.send([header(`attack-${i}`, FRAMES * FRAME), ...Array.from({ length: FRAMES }, () => frame)]);
          const got = await d.receive();
          sample();
          return decodeHeader(InferReplySchema, got[0]);
        }));
      } finally {
        clearInterval(sampler);
      }
      replies.forEach((r, i) => {
        expect(r).toMatchObject({ id: `attack-${i}`, status: { code: 'INVALID_ARGUMENT' } });
        expect(r.status!.message).toContain(`the limit is ${LIMIT}`);
      });
      if (process.env.TB_ATTACK_VERBOSE) console.log({ peakRssMiB: peakRss / MiB, peakArrayBuffersMiB: peakArrayBuffers / MiB });
      // The attack is 480 MiB; libzmq's ROUTER held all of it. What the bridge keeps is a few socket reads.
      expect(peakRss).toBeLessThan(100 * MiB);
      expect(peakArrayBuffers).toBeLessThan(100 * MiB);
      // The same connections are served afterwards.
      await Promise.all(dealers.map((d, i) => normalRequest(d, `after-${i}`)));
    } finally {
      for (const d of dealers) d.close();
    }
  }, 120_000);
});
