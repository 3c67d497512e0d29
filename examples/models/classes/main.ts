/**
 * A toy classifier for the classification extension: INPUT0 FP32 [-1, N]
 * (class scores, N = number of labels) comes back unchanged as OUTPUT0, and
 * OUTPUT0 declares its class labels in READY, so `classification: k` on
 * OUTPUT0 answers "score:index:label". Labels from CLASSES_LABELS
 * (comma-separated; default apple,pickle,banana,cherry). Max batch 8.
 */
import { serve, type Model, type Tensor } from '../../../sdk/node';

const labels = (process.env.CLASSES_LABELS ?? 'apple,pickle,banana,cherry').split(',');

export const classes: Model = {
  metadata: {
    name: 'classes',
    version: '1',
    maxBatch: 8,
    inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [-1, labels.length] }],
    outputs: [{ name: 'OUTPUT0', datatype: 'FP32', shape: [-1, labels.length], labels }],
  },
  predictBatch(inputs: Record<string, Tensor>) {
    const in0 = inputs.INPUT0;
    if (!in0) throw new Error('INPUT0 is required');
    return [{ ...in0, name: 'OUTPUT0' }];
  },
};

if (require.main === module) void serve(classes);
