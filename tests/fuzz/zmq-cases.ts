/**
 * ZeroMQ fuzzing with fast-check: generated request headers (valid and invalid
 * models, tensors, shapes, sequence fields, parameters) with generated tensor
 * frames, byte-mutated headers of valid requests, extra / missing / empty
 * frames, key frames and REQ-style delimiters. Properties: every message gets
 * exactly one reply (a receive timeout catches a hang), never INTERNAL or an
 * unknown code, RSS bounded, and a correct answer afterwards.
 *
 * runZmqFuzz(n) starts its own broker (after `npm run build`) and returns
 * counts by outcome: `npm run fuzz` can call it with 100,000.
 */
import { create, toBinary } from '@bufbuild/protobuf';
import fc from 'fast-check';
import { Dealer } from 'zeromq';
import { KEY_FRAME_PREFIX } from '../../bridges/zmq/server';
import { InferReplySchema, InferRequestSchema, decodeHeader, parametersToProto, toMeta } from '../../proto/client';
import type { TestBroker } from '../helpers/broker';
import { count, mutate, startFuzzBroker, type FuzzReport } from './fuzz-broker';

const CLIENT_CODES = new Set(['OK', 'INVALID_ARGUMENT', 'NOT_FOUND', 'RESOURCE_EXHAUSTED', 'DEADLINE_EXCEEDED', 'UNAUTHENTICATED', 'PERMISSION_DENIED']);
const REPLY_TIMEOUT_MS = 15_000;
const DATATYPES = ['BOOL', 'UINT8', 'INT32', 'INT64', 'FP16', 'FP32', 'BYTES'];

const name = fc.oneof(fc.constantFrom('simple', 'identity', 'INPUT0', 'INPUT1', 'IN_UINT8', 'IN_INT32', ''), fc.string({ maxLength: 30 }));
const meta = fc.record({
  name,
  datatype: fc.oneof(fc.constantFrom(...DATATYPES), fc.string({ maxLength: 5 })),
  shape: fc.array(fc.oneof(fc.bigInt({ min: 0n, max: 20n }), fc.bigInt({ min: -2n, max: 2n ** 63n - 1n })), { maxLength: 3 }),
});
const paramValue = fc.oneof(fc.boolean(), fc.integer(), fc.string({ maxLength: 10 }), fc.double({ noNaN: true }), fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }));
const header = fc.record({
  id: fc.string({ maxLength: 20 }),
  model: fc.oneof(fc.constantFrom('simple', 'identity'), name),
  version: fc.constantFrom('', '', '1', '9'),
  inputs: fc.array(meta, { maxLength: 4 }),
  outputs: fc.array(name, { maxLength: 2 }),
  sourceId: fc.oneof(fc.constant(''), fc.string({ maxLength: 8 })),
  start: fc.boolean(),
  end: fc.boolean(),
  parameters: fc.dictionary(fc.constantFrom('timeout', 'priority', 'sequence_id', 'x'), paramValue, { maxKeys: 2 }),
});

/** Near-valid: `simple` with 1..2 rows of 16 INT32. */
const simple = fc.record({ rows: fc.integer({ min: 1, max: 2 }), fill: fc.integer(), id: fc.string({ maxLength: 10 }) }).map(({ rows, fill, id }) => {
  const x = Buffer.from(Int32Array.from({ length: rows * 16 }, () => fill | 0).buffer);
  const m = toMeta({ name: 'INPUT0', datatype: 'INT32', shape: [rows, 16], data: x });
  return [Buffer.from(toBinary(InferRequestSchema, create(InferRequestSchema, { id, model: 'simple', inputs: [m, { ...m, name: 'INPUT1' }] }))), x, x];
});

const frame = fc.oneof(fc.uint8Array({ maxLength: 128 }), fc.integer({ min: 0, max: 4096 }).map((n) => new Uint8Array(n)));
const mutation = fc.array(fc.record({ kind: fc.nat(), at: fc.nat(), value: fc.nat() }), { minLength: 1, maxLength: 6 });

/** One message as frames (routing id added by the DEALER). */
const messageArb: fc.Arbitrary<Buffer[]> = fc.oneof(
  { weight: 3, arbitrary: fc.tuple(header, fc.array(frame, { maxLength: 5 })).map(([h, frames]) => {
    let encoded: Buffer;
    try {
      encoded = Buffer.from(toBinary(InferRequestSchema, create(InferRequestSchema, { ...h, parameters: parametersToProto(h.parameters) })));
    } catch {
      encoded = Buffer.from('unencodable');
    }
    return [encoded, ...frames.map((f) => Buffer.from(f))];
  }) },
  { weight: 2, arbitrary: simple },
  { weight: 3, arbitrary: fc.tuple(simple, mutation, fc.nat({ max: 2 })).map(([frames, m, which]) => frames.map((f, i) => (i === which ? mutate(f, m) : f))) },
  { weight: 1, arbitrary: fc.tuple(simple, fc.constantFrom('drop', 'extra', 'empty-first', 'key', 'delimiter')).map(([frames, how]) => {
    switch (how) {
      case 'drop': return frames.slice(0, -1);
      case 'extra': return [...frames, Buffer.alloc(3)];
      case 'empty-first': return [Buffer.alloc(0), ...frames.slice(1)];
      case 'key': return [Buffer.concat([KEY_FRAME_PREFIX, Buffer.from('anything')]), ...frames];
      default: return [Buffer.alloc(0), ...frames]; // a REQ socket's delimiter
    }
  }) },
  { weight: 1, arbitrary: fc.array(frame, { minLength: 1, maxLength: 4 }).map((fs) => fs.map((f) => Buffer.from(f))) },
);

/** Runs `n` messages against a broker's ZeroMQ port; starts and stops its own broker unless one is given. */
export async function runZmqFuzz(n: number, given?: TestBroker, seed?: number): Promise<FuzzReport> {
  const b = given ?? (await startFuzzBroker());
  const dealer = new Dealer({ linger: 0, receiveTimeout: REPLY_TIMEOUT_MS });
  dealer.connect(b.zmqEndpoint);
  const report: FuzzReport = { cases: 0, outcomes: {}, violations: [], rssGrowthMb: 0 };
  const rss0 = process.memoryUsage().rss;
  try {
    await fc.assert(
      fc.asyncProperty(messageArb, async (frames) => {
        report.cases++;
        await dealer.send(frames);
        let reply: Buffer[];
        try {
          reply = await dealer.receive();
        } catch {
          throw new Error(`no reply within ${REPLY_TIMEOUT_MS} ms`);
        }
        const head = reply[0].length === 0 ? reply[1] : reply[0]; // REQ-style delimiter echoed
        const code = decodeHeader(InferReplySchema, head).status?.code ?? 'none';
        count(report, code);
        if (!CLIENT_CODES.has(code)) throw new Error(`reply code ${code}`);
      }),
      { numRuns: n, seed, endOnFailure: true },
    ).catch((e: Error) => report.violations.push(e.message.slice(0, 2000)));
    report.rssGrowthMb = Math.round((process.memoryUsage().rss - rss0) / (1 << 20));
    // Still serving: a correct answer.
    const x = Buffer.from(Int32Array.from({ length: 16 }, () => 2).buffer);
    const m = toMeta({ name: 'INPUT0', datatype: 'INT32', shape: [1, 16], data: x });
    await dealer.send([Buffer.from(toBinary(InferRequestSchema, create(InferRequestSchema, { id: 'after', model: 'simple', inputs: [m, { ...m, name: 'INPUT1' }] }))), x, x]);
    const [head, sum] = await dealer.receive();
    const r = decodeHeader(InferReplySchema, head);
    const values = Array.from(new Int32Array(new Uint8Array(sum ?? Buffer.alloc(0)).buffer));
    if (r.status?.code !== 'OK' || values.some((v) => v !== 4)) report.violations.push(`after fuzzing, simple answered ${r.status?.code} ${values.join(',')}`);
  } finally {
    dealer.close();
    if (!given) await b.stop();
  }
  return report;
}
