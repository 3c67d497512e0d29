/**
 * Cost-model model for batching tests and benchmarks: a batch of n rows takes
 * SLEEPY_A_MS + SLEEPY_B_MS * n ms (timer, not busy-wait) and echoes INPUT0.
 * SLEEPY_CREDITS (1 or 2, default 1) batches in flight, run one after the other
 * (SLEEPY_PARALLEL=1: at once). SLEEPY_EXACT=1 ends each batch at its exact time:
 * a timer to 1 ms before, then event-loop turns (setImmediate) until it is due,
 * so the cost model holds without the timer's own slack (≈ 1 ms per setTimeout).
 */
import { setImmediate as turn, setTimeout as sleep } from 'node:timers/promises';
import { serve, type BatchContext, type Model, type Tensor } from '../../../sdk/node';

const num = (name: string, dflt: number): number => {
  const v = Number(process.env[name]);
  return process.env[name] !== undefined && process.env[name] !== '' && Number.isFinite(v) ? v : dflt;
};
const A_MS = num('SLEEPY_A_MS', 5);
const B_MS = num('SLEEPY_B_MS', 0.5);
const MAX_BATCH = num('SLEEPY_MAX_BATCH', 32);
const EXACT = process.env.SLEEPY_EXACT === '1';

async function wait(ms: number): Promise<void> {
  if (!EXACT) return void (await sleep(ms));
  const due = process.hrtime.bigint() + BigInt(Math.round(ms * 1e6));
  if (ms > 1) await sleep(ms - 1);
  while (process.hrtime.bigint() < due) await turn();
}

export const sleepy: Model = {
  metadata: {
    name: 'sleepy',
    version: '1',
    maxBatch: MAX_BATCH,
    credits: num('SLEEPY_CREDITS', 1),
    parallel: process.env.SLEEPY_PARALLEL === '1',
    inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [-1, -1] }],
    outputs: [{ name: 'OUTPUT0', datatype: 'FP32', shape: [-1, -1] }],
  },
  async predictBatch(inputs: Record<string, Tensor>, ctx: BatchContext) {
    const x = inputs.INPUT0;
    if (!x) throw new Error('INPUT0 is required');
    await wait(A_MS + B_MS * ctx.totalRows);
    return { OUTPUT0: { ...x, name: 'OUTPUT0' } };
  },
};

if (require.main === module) void serve(sleepy);
