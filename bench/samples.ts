/** Latency samples in milliseconds (fractional), kept exactly and summarised by nearest-rank percentiles. */
export class Samples {
  private buf = new Float64Array(1 << 16);
  private n = 0;

  add(ms: number): void {
    if (this.n === this.buf.length) {
      const next = new Float64Array(this.buf.length * 2);
      next.set(this.buf);
      this.buf = next;
    }
    this.buf[this.n++] = ms;
  }

  get count(): number {
    return this.n;
  }

  summary(): LatencySummary {
    const s = this.buf.slice(0, this.n).sort();
    const at = (p: number) => (s.length === 0 ? NaN : s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]);
    let sum = 0;
    for (const v of s) sum += v;
    return { count: s.length, mean: s.length ? sum / s.length : NaN, p50: at(50), p90: at(90), p99: at(99), max: s.length ? s[s.length - 1] : NaN };
  }
}

export interface LatencySummary {
  count: number;
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}
