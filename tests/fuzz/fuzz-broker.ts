/**
 * The broker the gRPC and ZeroMQ fuzzers run against: real redis, real model
 * processes (`simple`, `identity`), every bridge on OS-chosen ports. Needs
 * `npm run build` (the example models run from dist/).
 */
import { simpleModel, modelMain, startTestBroker, waitReady, type TestBroker } from '../helpers/broker';

export async function startFuzzBroker(): Promise<TestBroker> {
  const b = await startTestBroker({
    models: {
      simple: simpleModel(),
      identity: { command: ['node', modelMain('identity')], batch_size: 8 },
    },
    config: { maxElements: 1 << 20, bodyLimit: 8 << 20, grpcMaxMessageBytes: 8 << 20 },
  });
  await waitReady(b, 'simple');
  await waitReady(b, 'identity');
  return b;
}

/** Outcome counts of a fuzz run, by status code name; `violations` lists what broke a property. */
export interface FuzzReport {
  cases: number;
  outcomes: Record<string, number>;
  violations: string[];
  rssGrowthMb: number;
}

export const count = (r: FuzzReport, outcome: string) => (r.outcomes[outcome] = (r.outcomes[outcome] ?? 0) + 1);

/** Mutates bytes the way a fuzzer does: flip, set, insert, delete, truncate, duplicate a slice. */
export function mutate(buf: Buffer, ops: { kind: number; at: number; value: number }[]): Buffer {
  let b = Buffer.from(buf);
  for (const op of ops) {
    const at = b.length === 0 ? 0 : op.at % b.length;
    switch (op.kind % 6) {
      case 0: if (b.length) b[at] ^= 1 << (op.value % 8); break;
      case 1: if (b.length) b[at] = op.value & 0xff; break;
      case 2: b = Buffer.concat([b.subarray(0, at), Buffer.from([op.value & 0xff]), b.subarray(at)]); break;
      case 3: b = Buffer.concat([b.subarray(0, at), b.subarray(at + 1)]); break;
      case 4: b = b.subarray(0, at); break;
      default: b = Buffer.concat([b.subarray(0, at), b.subarray(at, at + 1 + (op.value % 16)), b.subarray(at)]);
    }
  }
  return b;
}
