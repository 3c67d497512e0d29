/**
 * Cost-model model for batching tests and benchmarks: a batch of n rows takes
 * SLEEPY_A_MS + SLEEPY_B_MS * n ms (timer, not busy-wait) and echoes INPUT0.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { serve, type BatchContext, type Model, type Tensor } from '../../../sdk/node';

const num = (name: string, dflt: number): number => {
  const v = Number(process.env[name]);
  return process.env[name] !== undefined && process.env[name] !== '' && Number.isFinite(v) ? v : dflt;
};
const A_MS = num('SLEEPY_A_MS', 5);
const B_MS = num('SLEEPY_B_MS', 0.5);
const MAX_BATCH = num('SLEEPY_MAX_BATCH', 32);

export const sleepy: Model = {
  metadata: {
    name: 'sleepy',
    version: '1',
    maxBatch: MAX_BATCH,
    inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [-1, -1] }],
    outputs: [{ name: 'OUTPUT0', datatype: 'FP32', shape: [-1, -1] }],
  },
  async predictBatch(inputs: Record<string, Tensor>, ctx: BatchContext) {
    const x = inputs.INPUT0;
    if (!x) throw new Error('INPUT0 is required');
    await sleep(A_MS + B_MS * ctx.totalRows);
    return { OUTPUT0: { ...x, name: 'OUTPUT0' } };
  },
};

if (require.main === module) void serve(sleepy);
