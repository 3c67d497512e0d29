/**
 * One behaviour across bridges: one table of cases (every datatype, every
 * bad-input class, queue full, deadline, model error) sent over each
 * transport; every transport must give the same answer.
 */
import { ErrorCode } from '../../core/errors';
import { tensorFromJson, tensorToJson } from '../../bridges/rest/json-tensors';
import type { DataType, Tensor } from '../../proto/tensor';
import { modelMain, startTestBroker, waitReady, type TestBroker } from '../helpers/broker';
import { TRANSPORTS, type Outcome, type Transport } from '../helpers/transports';

const models = {
  identity: { command: ['node', modelMain('identity')], batch_size: 16 },
  failing: { command: ['node', modelMain('identity')], batch_size: 16, env: { IDENTITY_FAIL: '1' } },
  slow: { command: ['node', modelMain('sleepy')], batch_size: 1, queue_capacity: 1, env: { SLEEPY_A_MS: '300', SLEEPY_B_MS: '0' } },
};

const SAMPLES: Record<DataType, unknown[]> = {
  BOOL: [true, false, true, true, false, false],
  UINT8: [0, 1, 2, 127, 128, 255],
  INT8: [-128, -1, 0, 1, 2, 127],
  UINT16: [0, 1, 256, 1000, 32768, 65535],
  INT16: [-32768, -1, 0, 1, 300, 32767],
  UINT32: [0, 1, 65536, 2 ** 31, 2 ** 32 - 2, 2 ** 32 - 1],
  INT32: [-(2 ** 31), -1, 0, 1, 2 ** 20, 2 ** 31 - 1],
  // The extremes, and values beyond 2^53 that a double would round (exact in REST JSON too).
  UINT64: [0, 1, 2 ** 53 - 1, 4611686018427387907n, 2n ** 63n, 2n ** 64n - 1n],
  INT64: [-(2n ** 63n), -1, 0, 4611686018427387907n, 2 ** 53 - 1, 2n ** 63n - 1n],
  FP16: [0, 0.5, -2, 1024, 65504, -0.125],
  BF16: [0, 1.5, -3, 256, -0.25, 2 ** 100],
  FP32: [0, 1.5, -2.25, 3.0e38, -1e-3, 1 / 3],
  FP64: [0, 1.5, -2.25, 1e300, -1e-300, 1 / 3],
  BYTES: ['a', 'héllo', '', 'with space', '{"json":1}', 'x'.repeat(300)],
};

const tensor = (name: string, datatype: DataType, shape: number[], values: unknown[]): Tensor =>
  tensorFromJson(name, datatype, shape, values);

interface Case {
  name: string;
  model: string;
  inputs: Tensor[];
  outputs?: string[];
  version?: string;
  timeoutUs?: number;
  /** Requests sent together (queue-full case). */
  concurrent?: number;
  expect: { outputs: Record<string, { datatype: DataType; shape: number[]; values: unknown[] }> } | { error: ErrorCode } | { someError: ErrorCode };
}

const cases: Case[] = [
  ...(Object.keys(SAMPLES) as DataType[]).map((dt): Case => ({
    name: `echo ${dt}`,
    model: 'identity',
    inputs: [tensor(`IN_${dt}`, dt, [2, 3], SAMPLES[dt])],
    outputs: [`OUT_${dt}`],
    expect: { outputs: { [`OUT_${dt}`]: { datatype: dt, shape: [2, 3], values: tensorToJson(tensor('x', dt, [2, 3], SAMPLES[dt])) } } },
  })),
  { name: 'unknown model', model: 'nope', inputs: [tensor('IN_INT32', 'INT32', [1, 1], [1])], expect: { error: 'NOT_FOUND' } },
  { name: 'unknown version', model: 'identity', version: '9', inputs: [tensor('IN_INT32', 'INT32', [1, 1], [1])], outputs: ['OUT_INT32'], expect: { error: 'NOT_FOUND' } },
  { name: 'unknown input', model: 'identity', inputs: [tensor('IN_NOPE', 'INT32', [1, 1], [1])], expect: { error: 'INVALID_ARGUMENT' } },
  { name: 'wrong datatype', model: 'identity', inputs: [tensor('IN_INT32', 'INT16', [1, 1], [1])], outputs: ['OUT_INT32'], expect: { error: 'INVALID_ARGUMENT' } },
  {
    name: 'shape and data disagree',
    model: 'identity',
    inputs: [{ ...tensor('IN_INT32', 'INT32', [1, 3], [1, 2, 3]), shape: [1, 4] }],
    outputs: ['OUT_INT32'],
    expect: { error: 'INVALID_ARGUMENT' },
  },
  { name: 'too many rows', model: 'identity', inputs: [tensor('IN_UINT8', 'UINT8', [17, 1], Array(17).fill(1))], outputs: ['OUT_UINT8'], expect: { error: 'INVALID_ARGUMENT' } },
  { name: 'unknown output', model: 'identity', inputs: [tensor('IN_UINT8', 'UINT8', [1, 1], [1])], outputs: ['OUT_NOPE'], expect: { error: 'INVALID_ARGUMENT' } },
  {
    name: 'more input tensors than --max-tensors',
    model: 'identity',
    inputs: (['UINT8', 'INT8', 'UINT16', 'INT16', 'INT32'] as DataType[]).map((dt) => tensor(`IN_${dt}`, dt, [1, 1], [1])),
    outputs: ['OUT_UINT8'],
    expect: { error: 'INVALID_ARGUMENT' },
  },
  { name: 'more elements than --max-elements', model: 'identity', inputs: [tensor('IN_UINT8', 'UINT8', [1, 1001], Array(1001).fill(1))], outputs: ['OUT_UINT8'], expect: { error: 'INVALID_ARGUMENT' } },
  { name: 'a string longer than --max-string-bytes', model: 'identity', inputs: [tensor('IN_BYTES', 'BYTES', [1, 1], ['y'.repeat(401)])], outputs: ['OUT_BYTES'], expect: { error: 'INVALID_ARGUMENT' } },
  { name: 'model error', model: 'failing', inputs: [tensor('IN_UINT8', 'UINT8', [1, 1], [1])], outputs: ['OUT_UINT8'], expect: { error: 'INTERNAL' } },
  { name: 'deadline', model: 'slow', inputs: [tensor('INPUT0', 'FP32', [1, 1], [1])], timeoutUs: 50_000, expect: { error: 'DEADLINE_EXCEEDED' } },
  { name: 'queue full', model: 'slow', inputs: [tensor('INPUT0', 'FP32', [1, 1], [1])], concurrent: 5, expect: { someError: 'RESOURCE_EXHAUSTED' } },
];

function check(c: Case, outcomes: Outcome[]): void {
  if ('someError' in c.expect) {
    const codes = outcomes.filter((o) => !o.ok).map((o) => (o as { code: string }).code);
    expect(codes).toContain(c.expect.someError);
    expect(outcomes.every((o) => o.ok || (o as { code: string }).code === 'RESOURCE_EXHAUSTED')).toBe(true);
    return;
  }
  const [o] = outcomes;
  if ('error' in c.expect) {
    expect(o).toMatchObject({ ok: false, code: c.expect.error });
  } else {
    expect(o).toEqual({ ok: true, outputs: c.expect.outputs });
  }
}

describe('every bridge gives the same answers', () => {
  let b: TestBroker;
  const live: Transport[] = [];

  beforeAll(async () => {
    // Small limits, so each limit is reached by a modest request (the samples stay within them).
    b = await startTestBroker({ models, config: { maxTensors: 4, maxElements: 1000, maxStringBytes: 400 } });
    await Promise.all(Object.keys(models).map((m) => waitReady(b, m)));
    for (const t of TRANSPORTS) live.push(await t.open(b));
  });
  afterAll(async () => {
    for (const t of live) await t.close();
    await b?.stop();
  });

  for (const c of cases) {
    test(c.name, async () => {
      for (const t of live) {
        // Wait until the slow model's earlier work is gone, so each transport sees the same state.
        while (b.running.broker.load().some((l) => l.queued + l.running > 0)) await new Promise((r) => setTimeout(r, 10));
        const n = c.concurrent ?? 1;
        const outcomes = await Promise.all(Array.from({ length: n }, () => t.infer(c.model, c.inputs, { outputs: c.outputs, version: c.version, timeoutUs: c.timeoutUs })));
        try {
          check(c, outcomes);
        } catch (e) {
          (e as Error).message = `[${t.name}] ${(e as Error).message}`;
          throw e;
        }
      }
    });
  }
});
