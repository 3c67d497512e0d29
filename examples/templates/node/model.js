// @ts-check
/**
 * __NAME__: a Tensor Broker model. The broker starts this file as a model copy
 * (models.yaml: `command` for local processes, `image` for Docker) and sends it
 * batches of requests. Replace `load` and `predictBatch` with your model.
 */
const { serve, tensorFrom, typedArray } = require('@tensorbroker/sdk');

/** @type {import('@tensorbroker/sdk').Model} */
const model = {
  metadata: {
    name: '__NAME__',
    version: '1',
    maxBatch: 8, // rows per batch
    // -1 = any size; the first dimension is the batch (rows).
    inputs: [{ name: 'INPUT', datatype: 'FP32', shape: [-1, 4] }],
    outputs: [{ name: 'OUTPUT', datatype: 'FP32', shape: [-1, 4] }],
  },

  async load() {
    // Read weights here: runs once, before the broker sends any request.
  },

  predictBatch(inputs, ctx) {
    // Every request of the batch, stacked: ctx.totalRows rows.
    const x = /** @type {Float32Array} */ (typedArray(inputs.INPUT));
    const y = x.map((v) => v * 2);
    return [tensorFrom('OUTPUT', 'FP32', [ctx.totalRows, 4], y)];
  },
};

if (require.main === module) void serve(model);
module.exports = { model };
