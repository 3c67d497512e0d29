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
  /**
   * Decoupled models, keyed by the response's index within its request ("0", "1", ...):
   * compute_infer = time since the request started or its previous response;
   * empty_response = final markers without outputs.
   */
  response_stats: Record<string, ResponseStats>;
}

export interface ResponseStats {
  compute_infer: Duration;
  compute_output: Duration;
  success: Duration;
  fail: Duration;
  empty_response: Duration;
  cancel: Duration;
}

/** What a copy measured for one batch (link RESULT). */
export interface BatchTiming {
  /** Decoding the inputs into tensors (0 = not reported: a version 1 copy). */
  inputNs: number;
  /** predictBatch. */
  computeNs: number;
  /** Checking and encoding the outputs. */
  outputNs: number;
}

const zero = (): Duration => ({ count: 0, ns: 0 });

export class ModelStats {
  private lastInference = 0;
  private inferenceCount = 0;
  private executionCount = 0;
  private readonly successD = zero();
  private readonly failD = zero();
  private readonly queueD = zero();
  private readonly inputD = zero();
  private readonly computeD = zero();
  private readonly outputD = zero();
  private readonly byBatch = new Map<number, { input: Duration; infer: Duration; output: Duration }>();
  private readonly byResponse = new Map<number, ResponseStats>();
  private recentBatchMs = 0;

  /** A request answered: its batch's timing counts once per request, as Triton counts it. */
  success(rows: number, totalNs: number, queueNs: number, timing: BatchTiming): void {
    this.lastInference = Date.now();
    this.inferenceCount += rows;
    add(this.successD, totalNs);
    add(this.queueD, queueNs);
    add(this.inputD, timing.inputNs);
    add(this.computeD, timing.computeNs);
    add(this.outputD, timing.outputNs);
  }

  /** A decoupled model's response number `index` of a request; `empty` for the final marker. */
  response(index: number, ns: number, empty: boolean): void {
    let r = this.byResponse.get(index);
    if (!r) this.byResponse.set(index, (r = { compute_infer: zero(), compute_output: zero(), success: zero(), fail: zero(), empty_response: zero(), cancel: zero() }));
    if (empty) add(r.empty_response, ns);
    else {
      add(r.compute_infer, ns);
      add(r.success, ns);
    }
  }

  fail(totalNs: number): void {
    add(this.failD, totalNs);
  }

  execution(rows: number, timing: BatchTiming): void {
    this.executionCount++;
    let d = this.byBatch.get(rows);
    if (!d) this.byBatch.set(rows, (d = { input: zero(), infer: zero(), output: zero() }));
    add(d.input, timing.inputNs);
    add(d.infer, timing.computeNs);
    add(d.output, timing.outputNs);
    const batchNs = timing.inputNs + timing.computeNs + timing.outputNs;
    this.recentBatchMs = this.recentBatchMs * 0.9 + (batchNs / 1e6) * 0.1;
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
        compute_input: { ...this.inputD },
        compute_infer: { ...this.computeD },
        compute_output: { ...this.outputD },
      },
      batch_stats: [...this.byBatch.entries()]
        .sort((a, b) => a[0] - b[0])
        .map(([batch_size, d]) => ({ batch_size, compute_input: { ...d.input }, compute_infer: { ...d.infer }, compute_output: { ...d.output } })),
      response_stats: Object.fromEntries([...this.byResponse.entries()].sort((a, b) => a[0] - b[0]).map(([i, r]) => [String(i), structuredClone(r)])),
    };
  }
}

function add(d: Duration, ns: number): void {
  d.count++;
  d.ns += Math.round(ns);
}
