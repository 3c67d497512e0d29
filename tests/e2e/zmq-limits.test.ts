/**
 * ZeroMQ bridge limits (issue 11): a request with too many frames is refused
 * before anything is decoded, and a client that never reads its replies costs
 * the broker a bounded number of bytes (the bridge holds replies for it up to
 * clientQueueBytes, then refuses its new requests and drops what does not fit,
 * logged); once it reads again it is served as before.
 */
import { create, toBinary } from '@bufbuild/protobuf';
import pino from 'pino';
import { Dealer } from 'zeromq';
import { startZmqBridge, type ZmqBridge } from '../../bridges/zmq/server';
import { InferReplySchema, InferRequestSchema, decodeHeader, toMeta, type InferReply } from '../../proto/client';
import { modelMain, row, simpleModel, startTestBroker, waitFor, waitReady, type TestBroker } from '../helpers/broker';

const MiB = 1 << 20;
const BUDGET = 8 * MiB;

const identityHeader = (id: string, n: number) =>
  Buffer.from(toBinary(InferRequestSchema, create(InferRequestSchema, {
    id, model: 'identity', outputs: ['OUT_UINT8'],
    inputs: [toMeta({ name: 'IN_UINT8', datatype: 'UINT8', shape: [1, n], data: Buffer.alloc(0) })],
  })));

describe('ZeroMQ bridge limits', () => {
  let b: TestBroker;
  let bridge: ZmqBridge;
  const logLines: string[] = [];
  const inferCount = () => b.running.broker.stats('identity')[0]?.inference_count ?? 0;

  beforeAll(async () => {
    b = await startTestBroker({ models: { simple: simpleModel(), identity: { command: ['node', modelMain('identity')], batch_size: 4 } } });
    const logger = pino({ level: 'info' }, { write: (line: string) => void logLines.push(line) });
    bridge = await startZmqBridge({
      broker: b.running.broker, host: '127.0.0.1', port: 0, maxMessageBytes: 4 * MiB, maxFrames: 8,
      clientQueueBytes: BUDGET, sendHighWaterMark: 2, logger,
    });
    await waitReady(b, 'identity');
    await waitReady(b, 'simple');
  });
  afterAll(async () => {
    await bridge?.close();
    await b?.stop();
  });

  async function exchange(frames: Buffer[]): Promise<InferReply> {
    const d = new Dealer({ linger: 0, receiveTimeout: 10_000 });
    d.connect(bridge.endpoint);
    try {
      await d.send(frames);
      const [head] = await d.receive();
      return decodeHeader(InferReplySchema, head);
    } finally {
      d.close();
    }
  }

  test('more frames than maxFrames: INVALID_ARGUMENT naming the limit, with the id', async () => {
    const frames = [identityHeader('many', 1), ...Array.from({ length: 20 }, () => Buffer.alloc(1))];
    const r = await exchange(frames);
    expect(r).toMatchObject({ id: 'many', status: { code: 'INVALID_ARGUMENT' } });
    expect(r.status!.message).toContain('20 + 1 frames'.replace('20 + 1', '21'));
    expect(r.status!.message).toContain('limit is 8');
  });

  test('a client that never reads: the replies held for it stay within the byte budget; it is served again once it reads', async () => {
    const N = 120;
    const SIZE = MiB;
    const lazy = new Dealer({ linger: 0, receiveHighWaterMark: 1, receiveTimeout: 20_000 });
    lazy.connect(bridge.endpoint);
    const input = Buffer.alloc(SIZE, 3);
    const before = inferCount();
    let most = 0;
    // Paced by the broker (8 in flight): requests do not pile up in memory, replies do.
    for (let i = 0; i < N; i++) {
      await waitFor(() => inferCount() - before >= i - 8, 30_000, 'room in the window');
      await lazy.send([identityHeader(`lazy-${i}`, SIZE), input]);
      most = Math.max(most, bridge.backlogBytes());
    }
    await waitFor(() => {
      most = Math.max(most, bridge.backlogBytes());
      return inferCount() - before >= N - 9;
    }, 60_000, 'the requests processed');
    // Held in the bridge: within the budget (libzmq holds sendHighWaterMark = 2 more, the kernel its socket buffers).
    expect(most).toBeLessThanOrEqual(BUDGET + 2 * SIZE);
    expect(logLines.some((l) => l.includes('over its byte budget'))).toBe(true);
    // Reading again: what it gets is either a full answer or a clear RESOURCE_EXHAUSTED.
    const codes = new Map<string, number>();
    for (;;) {
      let frames: Buffer[];
      try {
        frames = await new Promise<Buffer[]>((resolve, reject) => {
          lazy.receive().then(resolve, reject);
        });
      } catch {
        break; // receiveTimeout: nothing more to read
      }
      const head = decodeHeader(InferReplySchema, frames[0]);
      codes.set(head.status!.code, (codes.get(head.status!.code) ?? 0) + 1);
      if (head.status!.code === 'OK') expect(frames[1].length).toBe(SIZE);
      if (bridge.backlogBytes() === 0 && (codes.get('OK') ?? 0) > 0) {
        lazy.receiveTimeout = 1000;
      }
    }
    expect(codes.get('OK') ?? 0).toBeGreaterThan(0);
    // Without the bound every one of the N MiB-sized replies would have waited in memory for it.
    expect(codes.get('OK') ?? 0).toBeLessThan(N - 20);
    expect([...codes.keys()].every((c) => c === 'OK' || c === 'RESOURCE_EXHAUSTED')).toBe(true);
    // Served as before.
    const x = Buffer.from(new Int32Array(row(16)).buffer);
    const meta = toMeta({ name: 'INPUT0', datatype: 'INT32', shape: [1, 16], data: x });
    const h = Buffer.from(toBinary(InferRequestSchema, create(InferRequestSchema, { id: 'again', model: 'simple', inputs: [meta, { ...meta, name: 'INPUT1' }] })));
    await lazy.send([h, x, x]);
    lazy.receiveTimeout = 10_000;
    let r: InferReply;
    do r = decodeHeader(InferReplySchema, (await lazy.receive())[0]); while (r.id !== 'again');
    expect(r.status!.code).toBe('OK');
    lazy.close();
  });
});
