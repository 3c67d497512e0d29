/** DB post-processing of the text-detector example on hand-made probability maps. */
import { DEFAULT_DB, dbBoxes, readingOrder, type Box } from '../../examples/models/text-detector/db';
import { TextDetector } from '../../examples/models/text-detector/detector';
import { wantGpu } from '../../examples/models/text-detector/main';

/** A stride × rows map with rectangles [x1, y1, x2, y2) set to p. */
function map(stride: number, rows: number, rects: Array<[number, number, number, number, number]>, offset = 0): Float32Array {
  const m = new Float32Array(offset + stride * rows);
  for (const [x1, y1, x2, y2, p] of rects) for (let y = y1; y < y2; y++) for (let x = x1; x < x2; x++) m[offset + y * stride + x] = p;
  return m;
}
const region = (w: number, h: number, scale = 1) => ({ width: w, height: h, scale, origWidth: Math.round(w / scale), origHeight: Math.round(h / scale) });

describe('dbBoxes', () => {
  test('one box per component, grown by area × ratio / perimeter, scored by mean probability', () => {
    const m = map(64, 32, [[10, 10, 30, 14, 0.9]]); // 20 × 4 kernel
    const [b, ...rest] = dbBoxes(m, 0, 64, region(64, 32));
    expect(rest).toEqual([]);
    const d = (20 * 4 * 1.5) / (2 * 24); // 2.5
    expect(b).toEqual({ x1: Math.round(10 - d), y1: Math.round(10 - d), x2: Math.round(30 + d), y2: Math.round(14 + d), score: expect.closeTo(0.9, 5) });
  });

  test('8-connected pixels are one component; separate ones are separate, in reading order', () => {
    const m = map(64, 64, [[5, 5, 15, 10, 0.8], [15, 10, 25, 15, 0.8], [40, 40, 60, 46, 0.95], [5, 40, 25, 46, 0.95]]);
    const boxes = dbBoxes(m, 0, 64, region(64, 64));
    expect(boxes).toHaveLength(3);
    expect(boxes[0].x1).toBeLessThan(5); // the diagonal pair is one box spanning x 5..25
    expect(boxes[0].x2).toBeGreaterThan(25);
    expect(boxes[1].x1).toBeLessThan(boxes[2].x1); // same line: left first
  });

  test('threshold, box threshold and minimum size drop what is not text', () => {
    const m = map(64, 64, [[0, 0, 30, 8, 0.25], [0, 20, 30, 28, 0.5], [0, 40, 30, 42, 0.99], [40, 40, 60, 50, 0.7]]);
    // 0.25 is under the threshold, 0.5 under the box threshold, 2 rows are under minSize 3.
    expect(dbBoxes(m, 0, 64, region(64, 64)).map((b) => b.score)).toEqual([expect.closeTo(0.7, 5)]);
  });

  test('maps back to original pixels and clips to the picture; reads its own region at an offset', () => {
    const stride = 32;
    const m = map(stride, 32, [[0, 4, 16, 12, 0.9]], 5 * stride * 32);
    // The picture filled 16 × 16 map pixels at scale 0.5: it is 32 × 32 originally.
    const [b] = dbBoxes(m, 5 * stride * 32, stride, { width: 16, height: 16, scale: 0.5, origWidth: 32, origHeight: 32 });
    expect(b.x1).toBe(0); // clipped
    expect(b.x2).toBe(32); // clipped to the picture, not the map
    expect(b.y1).toBeGreaterThanOrEqual(0);
    expect(b.y2).toBeGreaterThan(24);
  });

  test('maxBoxes keeps the best scores', () => {
    const m = map(100, 10, [[0, 2, 10, 8, 0.7], [20, 2, 30, 8, 0.9], [40, 2, 50, 8, 0.8], [60, 2, 70, 8, 0.95]]);
    const boxes = dbBoxes(m, 0, 100, region(100, 10), { ...DEFAULT_DB, maxBoxes: 2 });
    expect(boxes.map((b) => Number(b.score.toFixed(2)))).toEqual([0.9, 0.95]);
  });

  test('reading order: lines top to bottom, left to right within a line', () => {
    const box = (x1: number, y1: number): Box => ({ x1, y1, x2: x1 + 10, y2: y1 + 10, score: 1 });
    const sorted = [box(50, 2), box(0, 30), box(10, 0), box(30, 31)].sort(readingOrder);
    expect(sorted.map((b) => [b.x1, b.y1])).toEqual([[10, 0], [50, 2], [0, 30], [30, 31]]);
  });
});

describe('text-detector execution provider', () => {
  test('a GPU is wanted when NVIDIA_VISIBLE_DEVICES names one, unless TD_GPU says otherwise', () => {
    expect(wantGpu({})).toBe(false);
    expect(wantGpu({ NVIDIA_VISIBLE_DEVICES: '0' })).toBe(true);
    expect(wantGpu({ NVIDIA_VISIBLE_DEVICES: 'all' })).toBe(true);
    expect(wantGpu({ NVIDIA_VISIBLE_DEVICES: 'void' })).toBe(false);
    expect(wantGpu({ NVIDIA_VISIBLE_DEVICES: 'none' })).toBe(false);
    expect(wantGpu({ NVIDIA_VISIBLE_DEVICES: '0', TD_GPU: '0' })).toBe(false);
    expect(wantGpu({ TD_GPU: '1' })).toBe(true);
  });

  test('asked for the GPU where CUDA cannot load (this CPU-only package), the session falls back to the CPU and says so', async () => {
    const logs: string[] = [];
    const det = await TextDetector.create({ gpu: true, size: 64, log: (msg) => logs.push(msg) });
    expect(det.provider).toBe(process.env.TB_EXPECT_CUDA === '1' ? 'cuda' : 'cpu');
    if (det.provider === 'cpu') expect(logs).toContain('CUDA execution provider unavailable, using the CPU');
    expect(det.session.inputNames).toEqual(['x']);
    // (Running it here is left to the e2e tests: jest's sandbox gives ORT a foreign Float32Array.)
  });
});
