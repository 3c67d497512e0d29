/**
 * Per-stage timings of a request, always on: each stage is a histogram with
 * fixed buckets (1 µs … 10 s), fed with performance.now() deltas. Recording is
 * a loop over 18 bucket bounds and three additions, no allocation, so it stays
 * on in production (about 0.1 µs per record on the bench box; see
 * bench/README.md "Stage timings").
 *
 * One process-wide table, so every part records without wiring: the bridges
 * (parse, encode, write), the core (admit, queue, batch), the link (send,
 * receive) and the copies' own compute time. app/metrics.ts appends it to
 * GET /metrics as `tb_stage_seconds{path,stage}`; the bench reads it there.
 */

/** Upper bounds of the buckets, in seconds (plus +Inf). */
export const STAGE_BUCKETS = [
  1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1, 10,
] as const;

/** The stages a request goes through, in order. */
export const STAGES = [
  'parse', // bridge: body (complete) → InferRequest
  'admit', // core: InferRequest → queued (validation, limits, deadline timer)
  'queue', // core: queued → its batch cut
  'batch', // core: cutting the batch (tensors joined) and encoding it for the link
  'link_send', // link: handed to the link → zeromq send resolved
  'compute', // copy: its own time inside the model (reported by the copy)
  'link_receive', // link: send resolved → RESULT decoded, minus compute (both wires, the copy's decode/encode, wake-ups)
  'debatch', // core: RESULT → each request's outputs sliced and settled
  'encode', // bridge: InferResult → reply bytes
  'write', // bridge: reply bytes → handed to the socket (HTTP: until the response finished)
] as const;

export type Stage = (typeof STAGES)[number];

/** One stage of one path: a histogram in seconds. */
export class StageHistogram {
  readonly counts = new Float64Array(STAGE_BUCKETS.length + 1);
  count = 0;
  sum = 0;

  constructor(readonly path: string, readonly stage: Stage) {}

  /** Records a duration in milliseconds (a performance.now() delta). */
  observeMs(ms: number): void {
    const s = ms > 0 ? ms / 1000 : 0;
    let i = 0;
    while (i < STAGE_BUCKETS.length && s > STAGE_BUCKETS[i]) i++;
    this.counts[i]++;
    this.count++;
    this.sum += s;
  }

  /** Records the time since `startMs` (a performance.now() value); returns now, to chain stages. */
  since(startMs: number): number {
    const now = performance.now();
    this.observeMs(now - startMs);
    return now;
  }
}

const table = new Map<string, StageHistogram>();

/**
 * The histogram of `stage` on `path` ('rest', 'grpc', 'zmq' for bridge stages;
 * 'core' and 'link' for the shared ones). Look it up once and keep it: the
 * lookup builds a key string.
 */
export function stageTimer(path: string, stage: Stage): StageHistogram {
  const key = `${path}\0${stage}`;
  let h = table.get(key);
  if (!h) {
    h = new StageHistogram(path, stage);
    table.set(key, h);
  }
  return h;
}

/** Every stage histogram recorded into so far (or looked up), in stage order. */
export function stageHistograms(): StageHistogram[] {
  const order = (h: StageHistogram) => STAGES.indexOf(h.stage);
  return [...table.values()].sort((a, b) => order(a) - order(b) || a.path.localeCompare(b.path));
}

/** The Prometheus text exposition of every stage histogram (`tb_stage_seconds`). */
export function stageMetricsText(): string {
  const lines = [
    '# HELP tb_stage_seconds Time spent in each stage of a request (parse, admit, queue, batch, link_send, compute, link_receive, debatch, encode, write), by path.',
    '# TYPE tb_stage_seconds histogram',
  ];
  for (const h of stageHistograms()) {
    const labels = `path="${h.path}",stage="${h.stage}"`;
    let cumulative = 0;
    for (let i = 0; i < STAGE_BUCKETS.length; i++) {
      cumulative += h.counts[i];
      lines.push(`tb_stage_seconds_bucket{${labels},le="${STAGE_BUCKETS[i]}"} ${cumulative}`);
    }
    lines.push(`tb_stage_seconds_bucket{${labels},le="+Inf"} ${h.count}`);
    lines.push(`tb_stage_seconds_sum{${labels}} ${h.sum}`);
    lines.push(`tb_stage_seconds_count{${labels}} ${h.count}`);
  }
  return lines.join('\n') + '\n';
}
