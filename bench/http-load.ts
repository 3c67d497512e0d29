/**
 * Closed-loop HTTP load with autocannon: `connections` clients, each with one
 * request outstanding, for a fixed time. autocannon's own latency histogram
 * rounds to whole milliseconds, so every 2xx response time (fractional ms,
 * measured by autocannon from send to last byte) is also kept here for exact
 * sub-millisecond percentiles.
 */
import autocannon from 'autocannon';
import { Samples, type LatencySummary } from './samples';

export interface HttpPointOptions {
  url: string;
  body: string | Buffer;
  connections: number;
  seconds: number;
  /** A fixed number of requests instead of `seconds` (smoke runs). */
  amount?: number;
  /** Request headers; default `content-type: application/json`. */
  headers?: Record<string, string>;
}

export interface HttpPoint {
  connections: number;
  seconds: number;
  ok: number;
  non2xx: number;
  errors: number;
  timeouts: number;
  throughput: number;
  latency: LatencySummary;
}

export function runHttpPoint(opts: HttpPointOptions): Promise<HttpPoint> {
  const samples = new Samples();
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const inst = autocannon(
      {
        url: opts.url,
        method: 'POST',
        headers: opts.headers ?? { 'content-type': 'application/json' },
        body: opts.body,
        connections: opts.connections,
        pipelining: 1,
        ...(opts.amount ? { amount: opts.amount } : { duration: opts.seconds }),
        timeout: 30,
      },
      (err, res) => {
        if (err) return reject(err);
        const wall = Number(process.hrtime.bigint() - started) / 1e9;
        resolve({
          connections: opts.connections,
          seconds: wall,
          ok: samples.count,
          non2xx: res.non2xx,
          errors: res.errors,
          timeouts: res.timeouts,
          throughput: samples.count / wall,
          latency: samples.summary(),
        });
      },
    );
    inst.on('response', (_client: unknown, status: number, _bytes: number, ms: number) => {
      if (status >= 200 && status < 300) samples.add(ms);
    });
  });
}
