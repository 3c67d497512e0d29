/**
 * Triton's `simple_identity`: INPUT0 BYTES [-1, -1] comes back unchanged as
 * OUTPUT0 (any bytes, embedded NULs included). Max batch 8.
 */
import { serve, type Model, type Tensor } from '../../../sdk/node';

export const simpleIdentity: Model = {
  metadata: {
    name: 'simple_identity',
    version: '1',
    maxBatch: 8,
    inputs: [{ name: 'INPUT0', datatype: 'BYTES', shape: [-1, -1] }],
    outputs: [{ name: 'OUTPUT0', datatype: 'BYTES', shape: [-1, -1] }],
  },
  predictBatch(inputs: Record<string, Tensor>) {
    const in0 = inputs.INPUT0;
    if (!in0) throw new Error('INPUT0 is required');
    return [{ ...in0, name: 'OUTPUT0' }];
  },
};

if (require.main === module) void serve(simpleIdentity);
