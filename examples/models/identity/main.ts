/**
 * Identity for every KServe datatype: optional input IN_<DT> [-1,-1] comes back
 * as OUT_<DT>, byte for byte. Used by the bridge conformance tests; ask for the
 * OUT_<DT> outputs of the inputs you send. IDENTITY_FAIL=1 fails every batch
 * ("identity asked to fail"), to check how each bridge reports a model error.
 */
import { DATATYPES, serve, type Model } from '../../../sdk/node';

const fail = process.env.IDENTITY_FAIL === '1';

export const identity: Model = {
  metadata: {
    name: 'identity',
    version: '1',
    maxBatch: 16,
    inputs: DATATYPES.map((dt) => ({ name: `IN_${dt}`, datatype: dt, shape: [-1, -1], optional: true })),
    outputs: DATATYPES.map((dt) => ({ name: `OUT_${dt}`, datatype: dt, shape: [-1, -1] })),
  },
  predictBatch(inputs) {
    if (fail) throw new Error('identity asked to fail');
    return Object.values(inputs).map((t) => ({ ...t, name: t.name.replace(/^IN_/, 'OUT_') }));
  },
};

if (require.main === module) void serve(identity);
