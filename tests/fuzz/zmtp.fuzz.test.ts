/**
 * Raw bytes into the bridge's ZMTP ROUTER (fast-check): arbitrary bytes,
 * arbitrary bytes after a valid handshake, raw frames with generated flags and
 * sizes (up to 2^64 - 1 announced), and byte-mutated valid streams, each on
 * its own TCP connection, written in generated pieces, then half-closed.
 * Properties: the server closes every such connection (no hang), never logs
 * an unexpected error, its RSS stays bounded, and it still serves afterwards.
 * TB_FUZZ_CASES cases (default 2000).
 */
import net from 'node:net';
import { create, toBinary } from '@bufbuild/protobuf';
import fc from 'fast-check';
import pino from 'pino';
import { startZmqBridge, type ZmqBridge } from '../../bridges/zmq/server';
import { ZmtpDecoder, encodeMessage, ping, ready } from '../../bridges/zmq/zmtp';
import { InferRequestSchema, toMeta } from '../../proto/client';
import { ZmqClient } from '../../sdk/node';
import type { TestBroker } from '../helpers/broker';
import { mutate, startFuzzBroker } from './fuzz-broker';

const CASES = Number(process.env.TB_FUZZ_CASES ?? 2000);
const CLOSE_TIMEOUT_MS = 5000;

function greeting(minor: number, mechanism: string): Buffer {
  const g = Buffer.alloc(64);
  g[0] = 0xff;
  g[8] = 1;
  g[9] = 0x7f;
  g[10] = 3;
  g[11] = minor;
  g.write(mechanism, 12, 'latin1');
  return g;
}
const handshake = (minor = 1) => Buffer.concat([greeting(minor, 'NULL'), ready({ 'Socket-Type': 'DEALER', Identity: '' })]);

const x = Buffer.from(Int32Array.from({ length: 16 }, (_, i) => i).buffer);
const meta = toMeta({ name: 'INPUT0', datatype: 'INT32', shape: [1, 16], data: x });
const validRequest = Buffer.concat(encodeMessage([
  Buffer.from(toBinary(InferRequestSchema, create(InferRequestSchema, { id: 'f', model: 'simple', inputs: [meta, { ...meta, name: 'INPUT1' }] }))), x, x,
]));

/** A raw frame: any flags, a short or long size (possibly far from its body's length), a body. */
const rawFrame = fc.record({
  flags: fc.nat({ max: 255 }),
  size: fc.oneof(fc.nat({ max: 300 }), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), fc.constantFrom(0n, 255n, 256n, 1n << 20n, 1n << 40n, 2n ** 53n, 2n ** 63n)),
  body: fc.uint8Array({ maxLength: 300 }),
}).map(({ flags, size, body }) => {
  const long = typeof size === 'bigint' || size > 255 || (flags & 2) !== 0;
  const h = Buffer.alloc(long ? 9 : 2);
  h[0] = long ? flags | 2 : flags & ~2;
  if (long) h.writeBigUInt64BE(BigInt(size), 1);
  else h[1] = Number(size);
  return Buffer.concat([h, body]);
});

const stream: fc.Arbitrary<Buffer> = fc.oneof(
  fc.uint8Array({ maxLength: 400 }).map((b) => Buffer.from(b)),
  fc.tuple(fc.nat({ max: 3 }), fc.uint8Array({ maxLength: 400 })).map(([m, b]) => Buffer.concat([handshake(m), b])),
  fc.tuple(fc.constantFrom('NULL', 'CURVE', 'PLAIN', ''), fc.array(rawFrame, { maxLength: 6 })).map(([mech, frames]) =>
    Buffer.concat([greeting(1, mech), ready({ 'Socket-Type': 'DEALER' }), ...frames])),
  fc.array(fc.record({ kind: fc.nat(), at: fc.nat(), value: fc.nat() }), { minLength: 1, maxLength: 6 }).map((m) =>
    mutate(Buffer.concat([handshake(), validRequest, ping(0, Buffer.from('c')), validRequest]), m)),
);

/** Writes `bytes` in pieces cut at `cuts`, half-closes, and resolves with the number of messages (replies) received when the server has closed the connection. */
function throwAt(port: number, bytes: Buffer, cuts: number[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`the server did not close the connection within ${CLOSE_TIMEOUT_MS} ms`));
    }, CLOSE_TIMEOUT_MS);
    s.on('error', () => undefined); // a reset by the server is an answer too
    let received = 0;
    const decoder = new ZmtpDecoder({ maxMessageBytes: 1 << 20, maxFrames: 100 }, {
      greeting: () => undefined, command: () => undefined, oversized: () => undefined, message: () => void received++,
    });
    s.on('data', (d: Buffer) => decoder.feed(d));
    s.on('close', () => {
      clearTimeout(timer);
      resolve(received);
    });
    s.on('connect', () => {
      let prev = 0;
      for (const c of [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b)) {
        s.write(bytes.subarray(prev, c));
        prev = c;
      }
      s.end(bytes.subarray(prev));
    });
  });
}

describe('ZMTP ROUTER fuzzing', () => {
  let b: TestBroker;
  let bridge: ZmqBridge;
  const logLines: string[] = [];

  beforeAll(async () => {
    b = await startFuzzBroker();
    const logger = pino({ level: 'info' }, { write: (line: string) => void logLines.push(line) });
    bridge = await startZmqBridge({ broker: b.running.broker, host: '127.0.0.1', port: 0, maxMessageBytes: 1 << 20, maxFrames: 8, logger });
  }, 60_000);
  afterAll(async () => {
    await bridge?.close();
    await b?.stop();
  });

  test(`${CASES} raw byte streams: each connection closed, no unexpected error, RSS bounded, still serving`, async () => {
    const rss0 = process.memoryUsage().rss;
    let replied = 0;
    await fc.assert(fc.asyncProperty(stream, fc.array(fc.nat(), { maxLength: 5 }), async (bytes, cuts) => {
      // Cases that got a reply went through the handshake into the bridge.
      if ((await throwAt(bridge.port, bytes, cuts)) > 0) replied++;
    }), { numRuns: CASES, endOnFailure: true });
    if (process.env.TB_FUZZ_VERBOSE) console.log({ cases: CASES, replied });
    expect(replied).toBeGreaterThan(0);
    const unexpected = logLines.filter((l) => l.includes('unexpected error'));
    expect(unexpected).toEqual([]);
    expect(process.memoryUsage().rss - rss0).toBeLessThan(300 << 20);
    const client = new ZmqClient(bridge.endpoint, { timeoutMs: 5000 });
    try {
      const r = await client.infer('simple', ['INPUT0', 'INPUT1'].map((name) => ({ name, datatype: 'INT32' as const, shape: [1, 16], data: x })));
      expect(Array.from(new Int32Array(new Uint8Array(r.outputs[0].data).buffer))).toEqual(Array.from({ length: 16 }, (_, i) => 2 * i));
    } finally {
      await client.close();
    }
  }, 300_000);
});
