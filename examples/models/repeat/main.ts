/**
 * Like Triton's decoupled `repeat_int32` example (models.yaml `batch_size: 0`,
 * no batch dimension): for a request with IN INT32 [n], DELAY UINT32 [n] and
 * WAIT UINT32 [1], it sends n responses, the i-th DELAY[i] ms after the
 * previous one, with OUT INT32 [1] = IN[i] and IDX UINT32 [1] = i; then it
 * waits WAIT ms and ends the request (the final marker). n = 0 sends none.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { serve, tensorFrom, typedArray, type Model, type StreamContext, type Tensor } from '../../../sdk/node';

export const repeat: Model = {
  metadata: {
    name: 'repeat_int32',
    version: '1',
    maxBatch: 0,
    decoupled: true,
    inputs: [
      { name: 'IN', datatype: 'INT32', shape: [-1] },
      { name: 'DELAY', datatype: 'UINT32', shape: [-1] },
      { name: 'WAIT', datatype: 'UINT32', shape: [1] },
    ],
    outputs: [
      { name: 'OUT', datatype: 'INT32', shape: [1] },
      { name: 'IDX', datatype: 'UINT32', shape: [1] },
    ],
  },
  async *predictStream(inputs: Record<string, Tensor>, ctx: StreamContext) {
    if (!ctx.whole) throw new Error('repeat_int32 is a non-batching model: set batch_size: 0 in models.yaml');
    const values = typedArray(inputs.IN) as Int32Array;
    const delays = typedArray(inputs.DELAY) as Uint32Array;
    const wait = (typedArray(inputs.WAIT) as Uint32Array)[0];
    if (delays.length !== values.length) throw new Error(`DELAY has ${delays.length} values for ${values.length} in IN: give one delay per value`);
    for (let i = 0; i < values.length; i++) {
      if (delays[i] > 0) await sleep(delays[i]);
      yield [tensorFrom('OUT', 'INT32', [1], Int32Array.of(values[i])), tensorFrom('IDX', 'UINT32', [1], Uint32Array.of(i))];
    }
    if (wait > 0) await sleep(wait);
  },
};

if (require.main === module) void serve(repeat);
