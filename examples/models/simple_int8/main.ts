/**
 * Triton's `simple_int8`: OUTPUT0 = INPUT0 + INPUT1 and OUTPUT1 = INPUT0 -
 * INPUT1, all INT8 [-1, 16], max batch 8. Results wrap around as int8
 * arithmetic does (127 + 1 = -128).
 */
import { serve, tensorFrom, typedArray, type BatchContext, type Model, type Tensor } from '../../../sdk/node';

const WIDTH = 16;
const spec = (name: string) => ({ name, datatype: 'INT8' as const, shape: [-1, WIDTH] });

export const simpleInt8: Model = {
  metadata: {
    name: 'simple_int8',
    version: '1',
    maxBatch: 8,
    inputs: [spec('INPUT0'), spec('INPUT1')],
    outputs: [spec('OUTPUT0'), spec('OUTPUT1')],
  },
  predictBatch(inputs: Record<string, Tensor>, ctx: BatchContext) {
    const in0 = inputs.INPUT0;
    const in1 = inputs.INPUT1;
    if (!in0 || !in1) throw new Error('INPUT0 and INPUT1 are required');
    const a = typedArray(in0) as Int8Array;
    const b = typedArray(in1) as Int8Array;
    // Int8Array stores wrap to the int8 range, like the model's int8 add/sub.
    const sum = new Int8Array(a.length);
    const diff = new Int8Array(a.length);
    for (let i = 0; i < a.length; i++) {
      sum[i] = a[i] + b[i];
      diff[i] = a[i] - b[i];
    }
    const shape = [ctx.totalRows, WIDTH];
    return [tensorFrom('OUTPUT0', 'INT8', shape, sum), tensorFrom('OUTPUT1', 'INT8', shape, diff)];
  },
};

if (require.main === module) void serve(simpleInt8);
