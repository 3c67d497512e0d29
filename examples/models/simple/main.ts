/**
 * Like Triton's `simple`: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (INT32 [-1,16]).
 * Test hooks: SIMPLE_FAIL_ON=v fails an item whose row starts with v;
 * SIMPLE_CRASH_ON=v exits the process (code 3) mid-batch.
 */
import { serve, tensorFrom, typedArray, type BatchContext, type Model, type Tensor } from '../../../sdk/node';

const envInt = (name: string): number | undefined => {
  const v = process.env[name];
  return v === undefined || v === '' ? undefined : Number(v);
};
const failOn = envInt('SIMPLE_FAIL_ON');
const crashOn = envInt('SIMPLE_CRASH_ON');
const WIDTH = 16;

const spec = (name: string) => ({ name, datatype: 'INT32' as const, shape: [-1, WIDTH] });

export const simple: Model = {
  metadata: {
    name: 'simple',
    version: '1',
    maxBatch: 8,
    inputs: [spec('INPUT0'), spec('INPUT1')],
    outputs: [spec('OUTPUT0'), spec('OUTPUT1')],
  },
  predictBatch(inputs: Record<string, Tensor>, ctx: BatchContext) {
    const in0 = inputs.INPUT0;
    const in1 = inputs.INPUT1;
    if (!in0 || !in1) throw new Error('INPUT0 and INPUT1 are required');
    if (in0.shape[1] !== WIDTH || in1.shape[1] !== WIDTH) throw new Error(`inputs must have ${WIDTH} columns`);
    const a = typedArray(in0) as Int32Array;
    const b = typedArray(in1) as Int32Array;
    const sum = new Int32Array(a.length);
    const diff = new Int32Array(a.length);
    for (let i = 0; i < a.length; i++) {
      sum[i] = a[i] + b[i];
      diff[i] = a[i] - b[i];
    }
    for (let r = 0; r < ctx.totalRows; r++) {
      const first = a[r * WIDTH];
      if (crashOn !== undefined && first === crashOn) process.exit(3);
      if (failOn !== undefined && first === failOn) {
        const item = ctx.items.findIndex((it) => r >= it.offset && r < it.offset + it.rows);
        ctx.failItem(item, 'row rejected by model');
      }
    }
    const shape = [ctx.totalRows, WIDTH];
    return [tensorFrom('OUTPUT0', 'INT32', shape, sum), tensorFrom('OUTPUT1', 'INT32', shape, diff)];
  },
};

if (require.main === module) void serve(simple);
