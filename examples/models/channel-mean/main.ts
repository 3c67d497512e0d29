/**
 * A non-batching model (models.yaml `batch_size: 0`, Triton `max_batch_size: 0`):
 * IMAGE FP32 [3,H,W] (channels first, no batch dimension) -> MEAN FP32 [3], the
 * mean of each channel. Each request reaches the model alone, shapes whole.
 */
import { serve, tensorFrom, typedArray, type BatchContext, type Model, type Tensor } from '../../../sdk/node';

export const channelMean: Model = {
  metadata: {
    name: 'channel-mean',
    version: '1',
    maxBatch: 0,
    inputs: [{ name: 'IMAGE', datatype: 'FP32', shape: [3, -1, -1] }],
    outputs: [{ name: 'MEAN', datatype: 'FP32', shape: [3] }],
  },
  predictBatch(inputs: Record<string, Tensor>, ctx: BatchContext) {
    // A copy started as a batching model would get [N,3,H,W]: say so rather than compute nonsense.
    if (!ctx.whole) throw new Error('channel-mean is a non-batching model: set batch_size: 0 in models.yaml');
    const image = inputs.IMAGE;
    const [channels, h, w] = image.shape;
    const px = typedArray(image) as Float32Array;
    const plane = h * w;
    const mean = new Float32Array(channels);
    for (let c = 0; c < channels; c++) {
      let sum = 0;
      for (let i = 0; i < plane; i++) sum += px[c * plane + i];
      mean[c] = plane > 0 ? sum / plane : 0;
    }
    return [tensorFrom('MEAN', 'FP32', [channels], mean)];
  },
};

if (require.main === module) void serve(channelMean);
