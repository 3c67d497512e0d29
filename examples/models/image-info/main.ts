/**
 * Image statistics, for the REST bridge's image uploads: IMAGE UINT8
 * [-1, -1, -1, 3] (N RGB pictures of one size) -> HEIGHT and WIDTH INT32
 * [-1, 1] and MEAN_RGB FP32 [-1, 3], the mean of each channel per picture.
 */
import { serve, tensorFrom, type BatchContext, type Model, type Tensor } from '../../../sdk/node';

export const imageInfo: Model = {
  metadata: {
    name: 'image-info',
    version: '1',
    maxBatch: 8,
    inputs: [{ name: 'IMAGE', datatype: 'UINT8', shape: [-1, -1, -1, 3] }],
    outputs: [
      { name: 'HEIGHT', datatype: 'INT32', shape: [-1, 1] },
      { name: 'WIDTH', datatype: 'INT32', shape: [-1, 1] },
      { name: 'MEAN_RGB', datatype: 'FP32', shape: [-1, 3] },
    ],
  },
  predictBatch(inputs: Record<string, Tensor>, ctx: BatchContext) {
    const image = inputs.IMAGE;
    if (!image) throw new Error('IMAGE is required');
    const [rows, height, width, channels] = image.shape;
    if (channels !== 3) throw new Error(`IMAGE must have 3 channels, got ${channels}`);
    const pixels = height * width;
    const data = image.data;
    const heights = new Int32Array(rows).fill(height);
    const widths = new Int32Array(rows).fill(width);
    const means = new Float32Array(rows * 3);
    for (let r = 0; r < rows; r++) {
      let red = 0;
      let green = 0;
      let blue = 0;
      for (let p = r * pixels * 3, end = p + pixels * 3; p < end; p += 3) {
        red += data[p];
        green += data[p + 1];
        blue += data[p + 2];
      }
      if (pixels > 0) {
        means[r * 3] = red / pixels;
        means[r * 3 + 1] = green / pixels;
        means[r * 3 + 2] = blue / pixels;
      }
    }
    return [
      tensorFrom('HEIGHT', 'INT32', [ctx.totalRows, 1], heights),
      tensorFrom('WIDTH', 'INT32', [ctx.totalRows, 1], widths),
      tensorFrom('MEAN_RGB', 'FP32', [ctx.totalRows, 3], means),
    ];
  },
};

if (require.main === module) void serve(imageInfo);
