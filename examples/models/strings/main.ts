/**
 * A BYTES model, for testing strings end to end: TEXT BYTES [-1, 1] ->
 * UPPER BYTES [-1, 1] (ASCII letters upper-cased byte by byte, other bytes
 * unchanged, so any binary content survives) and LENGTH INT32 [-1, 1] (bytes).
 */
import { bytesElements, bytesTensor, serve, tensorFrom, type BatchContext, type Model, type Tensor } from '../../../sdk/node';

export const strings: Model = {
  metadata: {
    name: 'strings',
    version: '1',
    maxBatch: 8,
    inputs: [{ name: 'TEXT', datatype: 'BYTES', shape: [-1, 1] }],
    outputs: [
      { name: 'UPPER', datatype: 'BYTES', shape: [-1, 1] },
      { name: 'LENGTH', datatype: 'INT32', shape: [-1, 1] },
    ],
  },
  predictBatch(inputs: Record<string, Tensor>, ctx: BatchContext) {
    const text = inputs.TEXT;
    if (!text) throw new Error('TEXT is required');
    const items = bytesElements(text);
    const upper = items.map((b) => {
      const out = Buffer.from(b);
      for (let i = 0; i < out.length; i++) if (out[i] >= 0x61 && out[i] <= 0x7a) out[i] -= 0x20;
      return out;
    });
    const lengths = Int32Array.from(items, (b) => b.length);
    return [bytesTensor('UPPER', upper, [ctx.totalRows, 1]), tensorFrom('LENGTH', 'INT32', [ctx.totalRows, 1], lengths)];
  },
};

if (require.main === module) void serve(strings);
