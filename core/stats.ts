/** Per-model counters in the shape of Triton's statistics extension. */
export interface Duration {
  count: number;
  ns: number;
}

export interface ModelStatistics {
  name: string;
  version: string;
  last_inference: number;
  inference_count: number;
  execution_count: number;
  inference_stats: {
    success: Duration;
    fail: Duration;
    queue: Duration;
    compute_input: Duration;
    compute_infer: Duration;
    compute_output: Duration;
  };
  batch_stats: { batch_size: number; compute_input: Duration; compute_infer: Duration; compute_output: Duration }[];
}

const zero = (): Duration => ({ count: 0, ns: 0 });

export class ModelStats {
  private lastInference = 0;
  private inferenceCount = 0;
  private executionCount = 0;
  private readonly successD = zero();
  private readonly failD = zero();
  private readonly queueD = zero();
  private readonly computeD = zero();
  private readonly byBatch = new Map<number, Duration>();
  private recentBatchMs = 0;

  success(rows: number, totalNs: number, queueNs: number, computeNs: number): void {
    this.lastInference = Date.now();
    this.inferenceCount += rows;
    add(this.successD, totalNs);
    add(this.queueD, queueNs);
    add(this.computeD, computeNs);
  }

  fail(totalNs: number): void {
    add(this.failD, totalNs);
  }

  execution(rows: number, computeNs: number): void {
    this.executionCount++;
    let d = this.byBatch.get(rows);
    if (!d) this.byBatch.set(rows, (d = zero()));
    add(d, computeNs);
    this.recentBatchMs = this.recentBatchMs * 0.9 + (computeNs / 1e6) * 0.1;
  }

  meanBatchMs(): number {
    return this.recentBatchMs;
  }

  snapshot(name: string, version: string): ModelStatistics {
    return {
      name,
      version,
      last_inference: this.lastInference,
      inference_count: this.inferenceCount,
      execution_count: this.executionCount,
      inference_stats: {
        success: { ...this.successD },
        fail: { ...this.failD },
        queue: { ...this.queueD },
        compute_input: zero(),
        compute_infer: { ...this.computeD },
        compute_output: zero(),
      },
      batch_stats: [...this.byBatch.entries()]
        .sort((a, b) => a[0] - b[0])
        .map(([batch_size, d]) => ({ batch_size, compute_input: zero(), compute_infer: { ...d }, compute_output: zero() })),
    };
  }
}

function add(d: Duration, ns: number): void {
  d.count++;
  d.ns += Math.round(ns);
}
