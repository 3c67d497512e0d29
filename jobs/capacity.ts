/**
 * How many more jobs a worker may start on its model now: jobs share the
 * copies with live traffic, and live traffic comes first. A model's capacity
 * is its ready copies times its batch size (rows of one batch each); jobs and
 * live requests together stay within it (jobs use idle capacity), and jobs
 * alone stay within (1 - liveReserve) of it, so a live burst finds that share
 * free at once instead of waiting behind job batches. While live traffic is
 * active (a live request seen in the model within liveIdleMs), jobs start only
 * alongside live requests that wait, so they ride in the same batches; a
 * job-only batch is sent only after live traffic paused: a live request then
 * never waits behind a batch of jobs it could not join. Pure, for unit tests.
 */

/** The live share a model keeps for itself: one default and per-model overrides. */
export interface LiveReserve {
  /** Share of capacity jobs never take, in [0, 1). 0 = jobs may take whatever live traffic leaves idle. */
  default: number;
  models: Record<string, number>;
}

export const NO_RESERVE: LiveReserve = { default: 0, models: {} };

export function reserveFor(r: LiveReserve, model: string): number {
  return r.models[model] ?? r.default;
}

export interface ShareInput {
  /** Ready copies of the model (0: at zero or starting). */
  copies: number;
  /** Rows per batch (the model's batch_size). */
  batchSize: number;
  /** Requests in the model's scheduler (queued + running), this worker's jobs included. */
  inScheduler: number;
  /** This worker's jobs started and not finished. */
  jobsInFlight: number;
  liveReserve: number;
  /** A hard cap on jobs in flight (0 = none). */
  maxInFlight: number;
  /** A live request was in the model within the last liveIdleMs. */
  liveRecently?: boolean;
}

export function jobSlots(i: ShareInput): number {
  const cap = i.maxInFlight > 0 ? i.maxInFlight : Infinity;
  // No ready copy: one job at a time waits for the copy its backlog asked for (or wakes the model, like a live request).
  if (i.copies === 0) return Math.max(0, Math.min(cap, 1) - i.jobsInFlight);
  const capacity = i.copies * Math.max(1, i.batchSize);
  const live = Math.max(0, i.inScheduler - i.jobsInFlight);
  // Live traffic active but none waiting now (a gap between its requests): a job now would make a batch of its own.
  if (live === 0 && i.liveRecently) return 0;
  const jobsMax = Math.floor((1 - i.liveReserve) * capacity);
  // A reserve that leaves jobs less than one row: one job at a time, only while no live request is in the model.
  if (jobsMax === 0) return live === 0 && i.jobsInFlight === 0 ? Math.min(cap, 1) : 0;
  return Math.max(0, Math.min(cap, jobsMax, capacity - live) - i.jobsInFlight);
}

/** Parses "0.25" or "0.25,ocr=0.5,detector=0" (a default, then per-model shares). */
export function parseLiveReserve(v: string): LiveReserve {
  const out: LiveReserve = { default: 0, models: {} };
  const share = (s: string, what: string) => {
    const n = Number(s);
    if (s.trim() === '' || !Number.isFinite(n) || n < 0 || n >= 1) throw new Error(`${what}: '${s}' is not a share in [0, 1)`);
    return n;
  };
  for (const part of v.split(',').map((s) => s.trim()).filter(Boolean)) {
    const eq = part.indexOf('=');
    if (eq < 0) out.default = share(part, 'the default live reserve');
    else {
      const model = part.slice(0, eq).trim();
      if (!model) throw new Error(`'${part}' names no model (model=share)`);
      out.models[model] = share(part.slice(eq + 1), `the live reserve of '${model}'`);
    }
  }
  return out;
}
