/**
 * Closed-loop load for clients that are not HTTP (the direct copy, gRPC,
 * ZeroMQ): `connections` callers, each with one call outstanding, sending the
 * next as soon as the previous one settles, for a fixed time. Every successful
 * call's round trip is kept (fractional ms); calls that end after the window
 * are not counted.
 */
import { Samples, type LatencySummary } from './samples';

export interface LoopPoint {
  connections: number;
  seconds: number;
  ok: number;
  errors: number;
  throughput: number;
  latency: LatencySummary;
  /** The first error message seen, if any. */
  firstError?: string;
}

export async function closedLoop(call: () => Promise<unknown>, connections: number, seconds: number): Promise<LoopPoint> {
  const samples = new Samples();
  let errors = 0;
  let firstError: string | undefined;
  const start = process.hrtime.bigint();
  const end = start + BigInt(Math.round(seconds * 1e9));
  const caller = async () => {
    while (process.hrtime.bigint() < end) {
      const t0 = process.hrtime.bigint();
      try {
        await call();
      } catch (e) {
        errors++;
        firstError ??= (e as Error).message;
        continue;
      }
      const t1 = process.hrtime.bigint();
      if (t1 <= end) samples.add(Number(t1 - t0) / 1e6);
    }
  };
  await Promise.all(Array.from({ length: connections }, caller));
  return { connections, seconds, ok: samples.count, errors, throughput: samples.count / seconds, latency: samples.summary(), firstError };
}
