/**
 * DB (Differentiable Binarization) post-processing of a text-probability map into
 * boxes: threshold, connected components (8-neighbourhood, union-find), a score per
 * component (its mean probability), unclip (grow the shrunk text kernel back by
 * area × ratio / perimeter) and mapping back to the original picture's pixels.
 *
 * The network predicts a *shrunk* text region (DB trains on polygons shrunk by
 * D = A·(1 − r²)/L); the unclip step undoes it with the same offset rule. Boxes are
 * axis-aligned: [x1, y1, x2, y2], x2/y2 exclusive, in original pixel coordinates.
 */

export interface DbOptions {
  /** Pixels with probability above this are text (PaddleOCR det_db_thresh: 0.3). */
  threshold: number;
  /** Components with a mean probability below this are dropped (det_db_box_thresh: 0.6). */
  boxThreshold: number;
  /** How far the kernel is grown back: offset = area × ratio / perimeter (det_db_unclip_ratio: 1.5). */
  unclipRatio: number;
  /** Components whose shorter side (map pixels) is below this are noise (PaddleOCR: 3). */
  minSize: number;
  /** Boxes kept per picture, best scores first (then sorted in reading order). */
  maxBoxes: number;
}

export const DEFAULT_DB: DbOptions = { threshold: 0.3, boxThreshold: 0.6, unclipRatio: 1.5, minSize: 3, maxBoxes: 100 };

export interface Box {
  x1: number;
  y1: number;
  x2: number;
  y2: number;
  score: number;
}

/** Where one picture sits in the probability map: its top-left `width` × `height` map pixels, `scale` map pixels per original pixel. */
export interface MapRegion {
  width: number;
  height: number;
  scale: number;
  /** Original picture size (boxes are clipped to it). */
  origWidth: number;
  origHeight: number;
}

function find(parent: Int32Array, i: number): number {
  let r = i;
  while (parent[r] !== r) r = parent[r];
  while (parent[i] !== r) {
    const next = parent[i];
    parent[i] = r;
    i = next;
  }
  return r;
}

function union(parent: Int32Array, a: number, b: number): number {
  const ra = find(parent, a);
  const rb = find(parent, b);
  if (ra === rb) return ra;
  if (ra < rb) {
    parent[rb] = ra;
    return ra;
  }
  parent[ra] = rb;
  return rb;
}

interface Component {
  minX: number;
  minY: number;
  maxX: number;
  maxY: number;
  sum: number;
  count: number;
}

/**
 * Boxes of one picture from its probability map.
 * @param prob   the map, row-major, `stride` values per row (the model's input width)
 * @param offset index of the picture's first value in `prob`
 */
export function dbBoxes(prob: Float32Array, offset: number, stride: number, region: MapRegion, opts: DbOptions = DEFAULT_DB): Box[] {
  const { width: w, height: h } = region;
  // Pass 1: label text pixels; a pixel joins its left, up-left, up and up-right text neighbours.
  const labels = new Int32Array(w * h).fill(-1);
  const parent = new Int32Array(w * h);
  let next = 0;
  for (let y = 0; y < h; y++) {
    const row = offset + y * stride;
    for (let x = 0; x < w; x++) {
      if (!(prob[row + x] > opts.threshold)) continue;
      const i = y * w + x;
      let label = -1;
      const join = (j: number) => {
        const l = labels[j];
        if (l < 0) return;
        label = label < 0 ? find(parent, l) : union(parent, label, l);
      };
      if (x > 0) join(i - 1);
      if (y > 0) {
        if (x > 0) join(i - w - 1);
        join(i - w);
        if (x + 1 < w) join(i - w + 1);
      }
      if (label < 0) {
        label = next++;
        parent[label] = label;
      }
      labels[i] = label;
    }
  }
  // Pass 2: per root, the bounding box and the probability sum.
  const comps = new Map<number, Component>();
  for (let y = 0; y < h; y++) {
    const row = offset + y * stride;
    for (let x = 0; x < w; x++) {
      const l = labels[y * w + x];
      if (l < 0) continue;
      const r = find(parent, l);
      const p = prob[row + x];
      const c = comps.get(r);
      if (!c) comps.set(r, { minX: x, minY: y, maxX: x, maxY: y, sum: p, count: 1 });
      else {
        if (x < c.minX) c.minX = x;
        if (x > c.maxX) c.maxX = x;
        if (y < c.minY) c.minY = y;
        if (y > c.maxY) c.maxY = y;
        c.sum += p;
        c.count++;
      }
    }
  }
  const boxes: Box[] = [];
  for (const c of comps.values()) {
    const bw = c.maxX - c.minX + 1;
    const bh = c.maxY - c.minY + 1;
    if (Math.min(bw, bh) < opts.minSize) continue;
    const score = c.sum / c.count;
    if (score < opts.boxThreshold) continue;
    // Unclip: grow every side by area × ratio / perimeter (of the kernel's box).
    const d = (bw * bh * opts.unclipRatio) / (2 * (bw + bh));
    const x1 = c.minX - d;
    const y1 = c.minY - d;
    const x2 = c.maxX + 1 + d;
    const y2 = c.maxY + 1 + d;
    if (Math.min(x2 - x1, y2 - y1) < opts.minSize + 2) continue;
    // Back to original pixels, clipped to the picture.
    const s = region.scale;
    const clip = (v: number, max: number) => Math.min(max, Math.max(0, v));
    boxes.push({
      x1: clip(Math.round(x1 / s), region.origWidth),
      y1: clip(Math.round(y1 / s), region.origHeight),
      x2: clip(Math.round(x2 / s), region.origWidth),
      y2: clip(Math.round(y2 / s), region.origHeight),
      score,
    });
  }
  const kept = boxes.length > opts.maxBoxes ? boxes.sort((a, b) => b.score - a.score).slice(0, opts.maxBoxes) : boxes;
  return kept.sort(readingOrder);
}

/** Top to bottom; boxes whose vertical centres are within half a line are one line, left to right. */
export function readingOrder(a: Box, b: Box): number {
  const ca = (a.y1 + a.y2) / 2;
  const cb = (b.y1 + b.y2) / 2;
  const line = Math.min(a.y2 - a.y1, b.y2 - b.y1) / 2;
  if (Math.abs(ca - cb) > line) return ca - cb;
  return a.x1 - b.x1 || ca - cb;
}
