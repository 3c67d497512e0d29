/**
 * Triton's `simple_sequence`, as its example clients check it
 * (simple_grpc_sequence_stream_infer_client.py and the sync ones): a
 * stateful model (registry `stateless: false`), INPUT INT32 [-1, 1] ->
 * OUTPUT INT32 [-1, 1] where OUTPUT = INPUT + START, START being 1 on the
 * first request of the sequence (`sequence_start`) and 0 after it. So the
 * sequence [0, 11, 7] answers [1, 11, 7], and [100, -11] answers [101, -11].
 * Triton drives START and READY as control tensors; here they come from the
 * broker's per-row sequence control. A request outside a sequence fails, as on
 * Triton, which needs a correlation id for a sequence model.
 */
import { serve, tensorFrom, typedArray, type BatchContext, type Model, type Tensor } from '../../../sdk/node';

export const simpleSequence: Model = {
  metadata: {
    name: 'simple_sequence',
    version: '1',
    maxBatch: 8,
    inputs: [{ name: 'INPUT', datatype: 'INT32', shape: [-1, 1] }],
    outputs: [{ name: 'OUTPUT', datatype: 'INT32', shape: [-1, 1] }],
  },

  predictBatch(inputs: Record<string, Tensor>, ctx: BatchContext) {
    const input = inputs.INPUT;
    if (!input) throw new Error('INPUT is required');
    const values = typedArray(input) as Int32Array;
    const out = new Int32Array(ctx.totalRows);
    ctx.items.forEach((item, i) => {
      if (!item.sequence) {
        ctx.failItem(i, "inference request to model 'simple_sequence' must specify a non-zero or non-empty correlation ID");
        return;
      }
      const start = item.sequence.start ? 1 : 0;
      for (let r = item.offset; r < item.offset + item.rows; r++) out[r] = values[r] + start;
    });
    return [tensorFrom('OUTPUT', 'INT32', [ctx.totalRows, 1], out)];
  },
};

if (require.main === module) void serve(simpleSequence);
