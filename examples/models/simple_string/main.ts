/**
 * Triton's `simple_string`: INPUT0 and INPUT1 are BYTES [-1, 16] whose
 * elements are integers written as strings ("3", "-12"); OUTPUT0 is their sum
 * and OUTPUT1 their difference (INPUT0 - INPUT1), written as strings again.
 * Max batch 8, as in Triton's config.pbtxt. An element that is not an integer
 * fails its own request, not the batch.
 */
import { bytesElements, bytesTensor, serve, type BatchContext, type Model, type Tensor } from '../../../sdk/node';

const WIDTH = 16;
const spec = (name: string) => ({ name, datatype: 'BYTES' as const, shape: [-1, WIDTH] });
const INTEGER = /^\s*[+-]?\d+\s*$/;

export const simpleString: Model = {
  metadata: {
    name: 'simple_string',
    version: '1',
    maxBatch: 8,
    inputs: [spec('INPUT0'), spec('INPUT1')],
    outputs: [spec('OUTPUT0'), spec('OUTPUT1')],
  },
  predictBatch(inputs: Record<string, Tensor>, ctx: BatchContext) {
    const in0 = inputs.INPUT0;
    const in1 = inputs.INPUT1;
    if (!in0 || !in1) throw new Error('INPUT0 and INPUT1 are required');
    const a = bytesElements(in0).map((b) => b.toString('utf8'));
    const b = bytesElements(in1).map((x) => x.toString('utf8'));
    const sum = new Array<string>(a.length).fill('');
    const diff = new Array<string>(a.length).fill('');
    ctx.items.forEach((item, i) => {
      for (let k = item.offset * WIDTH; k < (item.offset + item.rows) * WIDTH; k++) {
        if (!INTEGER.test(a[k]) || !INTEGER.test(b[k])) {
          ctx.failItem(i, `element ${k - item.offset * WIDTH} is not an integer string: ${JSON.stringify(INTEGER.test(a[k]) ? b[k] : a[k])}`);
          return;
        }
        // BigInt: any length of digits sums exactly, as a string model should.
        const x = BigInt(a[k].trim());
        const y = BigInt(b[k].trim());
        sum[k] = String(x + y);
        diff[k] = String(x - y);
      }
    });
    const shape = [ctx.totalRows, WIDTH];
    return [bytesTensor('OUTPUT0', sum, shape), bytesTensor('OUTPUT1', diff, shape)];
  },
};

if (require.main === module) void serve(simpleString);
