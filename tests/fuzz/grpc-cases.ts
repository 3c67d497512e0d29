/**
 * gRPC fuzzing with fast-check: generated ModelInferRequest messages (valid
 * and invalid names, datatypes, shapes, contents, parameters), byte-mutated
 * encodings of valid requests, on unary ModelInfer, ModelStreamInfer and the
 * describe rpcs. Properties: every call ends with a status (a deadline on the
 * client side catches a hang), never INTERNAL or UNKNOWN, RSS bounded, and the
 * broker still serves a correct answer afterwards.
 *
 * runGrpcFuzz(n) starts its own broker (after `npm run build`) and returns
 * counts by outcome: `npm run fuzz` can call it with 100,000.
 */
import * as grpc from '@grpc/grpc-js';
import fc from 'fast-check';
import { INFERENCE_SERVICE } from '../../bridges/grpc/service-definition';
import type { TestBroker } from '../helpers/broker';
import { int32Values, simpleRaw } from '../helpers/grpc-client';
import { count, mutate, startFuzzBroker, type FuzzReport } from './fuzz-broker';

const DATATYPES = ['BOOL', 'UINT8', 'UINT16', 'UINT32', 'UINT64', 'INT8', 'INT16', 'INT32', 'INT64', 'FP16', 'FP32', 'FP64', 'BF16', 'BYTES'];
const CALL_DEADLINE_MS = 15_000;
const BAD = new Set([grpc.status.INTERNAL, grpc.status.UNKNOWN]);

const name = fc.oneof(fc.constantFrom('simple', 'identity', 'INPUT0', 'INPUT1', 'IN_INT32', 'IN_BYTES', ''), fc.string({ maxLength: 40 }));
const dim = fc.oneof(fc.bigInt({ min: 0n, max: 8n }), fc.bigInt({ min: -3n, max: 2n ** 63n - 1n }));
const param = fc.oneof(
  fc.record({ case: fc.constant('boolParam' as const), value: fc.boolean() }),
  fc.record({ case: fc.constant('int64Param' as const), value: fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }) }),
  fc.record({ case: fc.constant('stringParam' as const), value: fc.string({ maxLength: 30 }) }),
  fc.record({ case: fc.constant('doubleParam' as const), value: fc.double() }),
  fc.record({ case: fc.constant('uint64Param' as const), value: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }) }),
);
const paramName = fc.constantFrom('timeout', 'priority', 'sequence_id', 'sequence_start', 'sequence_end', 'binary_data_output', 'x');
const contents = fc.record({
  intContents: fc.array(fc.integer(), { maxLength: 40 }),
  fp32Contents: fc.array(fc.float(), { maxLength: 40 }),
  boolContents: fc.array(fc.boolean(), { maxLength: 8 }),
  bytesContents: fc.array(fc.uint8Array({ maxLength: 16 }), { maxLength: 4 }),
  int64Contents: fc.array(fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }), { maxLength: 8 }),
}, { requiredKeys: [] });

/** A generated ModelInferRequest (init shape). */
const inferRequest = fc.record({
  modelName: fc.oneof(fc.constantFrom('simple', 'identity'), name),
  modelVersion: fc.constantFrom('', '', '1', '2', 'x'),
  id: fc.string({ maxLength: 20 }),
  inputs: fc.array(fc.record({
    name,
    datatype: fc.oneof(fc.constantFrom(...DATATYPES), fc.string({ maxLength: 6 })),
    shape: fc.array(dim, { maxLength: 4 }),
    contents: fc.option(contents, { nil: undefined }),
  }), { maxLength: 4 }),
  outputs: fc.array(fc.record({ name }), { maxLength: 3 }),
  rawInputContents: fc.array(fc.uint8Array({ maxLength: 256 }), { maxLength: 4 }),
  parameters: fc.dictionary(paramName, param.map((p) => ({ parameterChoice: p })), { maxKeys: 3 }),
});

/** Near-valid: `simple` with 1..3 rows of 16 INT32, random values and parameters; mostly answered OK. */
const simpleRequest = fc.record({
  rows: fc.integer({ min: 1, max: 3 }),
  values: fc.array(fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }), { minLength: 96, maxLength: 96 }),
  parameters: fc.dictionary(paramName, param.map((p) => ({ parameterChoice: p })), { maxKeys: 2 }),
  id: fc.string({ maxLength: 10 }),
}).map(({ rows, values, parameters, id }) => {
  const a = Array.from({ length: rows }, (_, r) => values.slice(r * 16, r * 16 + 16));
  const b = Array.from({ length: rows }, (_, r) => values.slice(48 + r * 16, 48 + r * 16 + 16));
  return { ...simpleRaw(a, b, { id }), parameters };
});

const mutation = fc.array(fc.record({ kind: fc.nat(), at: fc.nat(), value: fc.nat() }), { minLength: 1, maxLength: 6 });

type Case =
  | { kind: 'unary'; req: unknown }
  | { kind: 'mutated'; rpc: 'ModelInfer' | 'ModelMetadata' | 'ModelConfig' | 'RepositoryIndex'; bytes: Buffer }
  | { kind: 'stream'; reqs: unknown[]; garbage: Buffer[] }
  | { kind: 'describe'; rpc: 'ModelMetadata' | 'ModelConfig' | 'ModelReady' | 'ModelStatistics'; name: string; version: string };

const validBytes = Buffer.from(INFERENCE_SERVICE.ModelInfer.requestSerialize(simpleRaw([[...Array(16).keys()]], [[...Array(16).keys()]], { id: 'v' })));

const caseArb: fc.Arbitrary<Case> = fc.oneof(
  { weight: 3, arbitrary: inferRequest.map((req) => ({ kind: 'unary' as const, req })) },
  { weight: 2, arbitrary: simpleRequest.map((req) => ({ kind: 'unary' as const, req })) },
  { weight: 3, arbitrary: fc.tuple(fc.constantFrom('ModelInfer', 'ModelMetadata', 'ModelConfig', 'RepositoryIndex') as fc.Arbitrary<'ModelInfer'>, mutation).map(([rpc, m]) => ({ kind: 'mutated' as const, rpc, bytes: mutate(validBytes, m) })) },
  { weight: 1, arbitrary: fc.tuple(fc.array(fc.oneof(inferRequest, simpleRequest), { maxLength: 4 }), fc.array(mutation.map((m) => mutate(validBytes, m)), { maxLength: 2 })).map(([reqs, garbage]) => ({ kind: 'stream' as const, reqs, garbage })) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('describe' as const), rpc: fc.constantFrom('ModelMetadata', 'ModelConfig', 'ModelReady', 'ModelStatistics') as fc.Arbitrary<'ModelMetadata'>, name, version: fc.constantFrom('', '1', 'zz') }) },
);

/** Encodes on the test side, so an unencodable generated value is never mistaken for a server error. */
function encode(rpc: string, req: unknown): Buffer | undefined {
  try {
    return Buffer.from(INFERENCE_SERVICE[rpc].requestSerialize(req));
  } catch {
    return undefined;
  }
}

function unary(client: grpc.Client, rpc: string, bytes: Buffer): Promise<{ code: grpc.status; details: string }> {
  const def = INFERENCE_SERVICE[rpc];
  return new Promise((resolve) => {
    client.makeUnaryRequest(def.path, (x: Buffer) => x, (b: Buffer) => b, bytes, new grpc.Metadata(), { deadline: Date.now() + CALL_DEADLINE_MS },
      (err) => resolve(err ? { code: err.code, details: err.details } : { code: grpc.status.OK, details: '' }));
  });
}

/** A stream: every message written gets one answer (or a stream-level status); returns the codes seen. */
function stream(client: grpc.Client, reqs: Buffer[], garbage: Buffer[]): Promise<{ code: grpc.status; answers: number; errorCodes: string[] }> {
  const def = INFERENCE_SERVICE.ModelStreamInfer;
  return new Promise((resolve) => {
    const call = client.makeBidiStreamRequest(def.path, (x: Buffer) => x, def.responseDeserialize, new grpc.Metadata(), { deadline: Date.now() + CALL_DEADLINE_MS });
    let answers = 0;
    const errorCodes: string[] = [];
    call.on('data', (m: { errorMessage: string; inferResponse?: { parameters: Record<string, { parameterChoice: { value: unknown } }> } }) => {
      answers++;
      if (m.errorMessage) errorCodes.push(String(m.inferResponse?.parameters.error_code?.parameterChoice.value ?? 'none'));
    });
    call.on('error', (e: grpc.ServiceError) => resolve({ code: e.code, answers, errorCodes }));
    call.on('status', (s: grpc.StatusObject) => s.code === grpc.status.OK && resolve({ code: s.code, answers, errorCodes }));
    for (const r of reqs) call.write(r);
    for (const g of garbage) call.write(g);
    call.end();
  });
}

/** Runs `n` cases against a broker's gRPC port; starts and stops its own broker unless one is given. */
export async function runGrpcFuzz(n: number, given?: TestBroker, seed?: number): Promise<FuzzReport> {
  const b = given ?? (await startFuzzBroker());
  const client = new grpc.Client(`127.0.0.1:${b.running.ports.grpc}`, grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': 16 << 20 });
  const report: FuzzReport = { cases: 0, outcomes: {}, violations: [], rssGrowthMb: 0 };
  const rss0 = process.memoryUsage().rss;
  try {
    await fc.assert(
      fc.asyncProperty(caseArb, async (c) => {
        report.cases++;
        if (c.kind === 'stream') {
          const reqs = c.reqs.map((r) => encode('ModelInfer', r)).filter((x): x is Buffer => x !== undefined);
          const r = await stream(client, reqs, c.garbage);
          count(report, `stream:${grpc.status[r.code]}`);
          for (const e of r.errorCodes) count(report, `stream-answer:${e}`);
          if (r.code === grpc.status.DEADLINE_EXCEEDED) throw new Error('a stream hung');
          if (r.code !== grpc.status.OK) throw new Error(`the stream ended ${grpc.status[r.code]}`);
          if (r.answers !== reqs.length + c.garbage.length) throw new Error(`${reqs.length + c.garbage.length} requests, ${r.answers} answers`);
          if (r.errorCodes.some((e) => e === 'INTERNAL' || e === 'none')) throw new Error(`a stream answer with code ${r.errorCodes.join(',')}`);
          return;
        }
        const bytes = c.kind === 'unary' ? encode('ModelInfer', c.req) : c.kind === 'mutated' ? c.bytes : encode(c.rpc, { name: c.name, version: c.version });
        if (!bytes) return void count(report, `${c.kind}:unencodable`);
        const { code, details } = await unary(client, c.kind === 'unary' ? 'ModelInfer' : c.rpc, bytes);
        count(report, `${c.kind}:${grpc.status[code]}`);
        if (BAD.has(code)) throw new Error(`${c.kind} answered ${grpc.status[code]}: ${details.slice(0, 300)}`);
        if (code === grpc.status.DEADLINE_EXCEEDED && c.kind !== 'unary') throw new Error(`${c.kind} hung`);
      }),
      { numRuns: n, seed, endOnFailure: true },
    ).catch((e: Error) => report.violations.push(e.message.slice(0, 2000)));
    report.rssGrowthMb = Math.round((process.memoryUsage().rss - rss0) / (1 << 20));
    // Still serving: a correct answer.
    const def = INFERENCE_SERVICE.ModelInfer;
    const sums = await new Promise<number[]>((resolve, reject) => {
      client.makeUnaryRequest(def.path, def.requestSerialize, def.responseDeserialize as (b: Buffer) => { rawOutputContents: Uint8Array[] },
        simpleRaw([[...Array(16).fill(1)]], [[...Array(16).fill(2)]]), (e, r) => (e ? reject(e) : resolve(int32Values(r!.rawOutputContents[0]))));
    });
    if (sums.some((v) => v !== 3)) report.violations.push(`after fuzzing, simple answered ${sums.join(',')}`);
  } finally {
    client.close();
    if (!given) await b.stop();
  }
  return report;
}
