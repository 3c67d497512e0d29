/**
 * The text-detector example (PP-OCRv4 with onnxruntime-node on the CPU) through the
 * whole broker with the process runtime: pictures rendered by sharp from SVG text at
 * known places (their true boxes measured from the ink) and blank pictures, over REST
 * image uploads and the ZeroMQ bridge. Needs `npm run build`.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { ZmqClient, bytesElements, typedArray } from '../../sdk/node';
import type { Tensor } from '../../proto/tensor';
import { blankPicture, demoPicture, overlap, renderTextPicture, type InkBox, type RenderedPicture } from '../../examples/models/text-detector/pictures';
import { getJson, modelMain, startTestBroker, waitReady, type TestBroker } from '../helpers/broker';

jest.setTimeout(120_000);

const MAX_BOXES = 100;

interface Found { x1: number; y1: number; x2: number; y2: number; score: number }

/** Per picture, the valid boxes of BOXES/SCORES/COUNT (flat arrays, N pictures). */
function boxesOf(boxes: ArrayLike<number>, scores: ArrayLike<number>, counts: ArrayLike<number>): Found[][] {
  return Array.from(counts, (count, i) => Array.from({ length: count }, (_, k) => {
    const o = (i * MAX_BOXES + k) * 4;
    return { x1: boxes[o], y1: boxes[o + 1], x2: boxes[o + 2], y2: boxes[o + 3], score: scores[i * MAX_BOXES + k] };
  }));
}

/** Every text is covered by a box (≥ 90 % of its ink box inside one), every box sits on a text (at least half of it over one). */
function expectBoxesOnText(found: Found[], truth: InkBox[]): void {
  for (const t of truth) {
    const best = Math.max(0, ...found.map((f) => overlap(t, f)));
    if (best < 0.9) throw new Error(`text '${t.text}' at ${JSON.stringify(t)} is not covered: best ${best.toFixed(2)} by ${JSON.stringify(found)}`);
  }
  for (const f of found) {
    const best = Math.max(0, ...truth.map((t) => overlap(f, t)));
    if (best < 0.5) throw new Error(`box ${JSON.stringify(f)} is not on any text (best ${best.toFixed(2)})`);
  }
  expect(found.length).toBeGreaterThanOrEqual(truth.length);
}

const rgbTensor = (pics: RenderedPicture[]): Tensor => ({
  name: 'IMAGE', datatype: 'UINT8', shape: [pics.length, pics[0].height, pics[0].width, 3], data: Buffer.concat(pics.map((p) => p.data)),
});

describe('text-detector through the broker (process runtime)', () => {
  let b: TestBroker;
  let client: ZmqClient;
  let outDir: string;
  let pictures: RenderedPicture[];
  let blank: RenderedPicture;

  const png = (p: RenderedPicture) => sharp(p.data, { raw: { width: p.width, height: p.height, channels: 3 } }).png().toBuffer();
  const detectZmq = async (pics: RenderedPicture[]) => {
    const r = await client.infer('text-detector', [rgbTensor(pics)], { outputs: ['BOXES', 'SCORES', 'COUNT'] });
    const [boxes, scores, count] = ['BOXES', 'SCORES', 'COUNT'].map((n) => r.outputs.find((t) => t.name === n)!);
    expect(boxes.shape).toEqual([pics.length, MAX_BOXES, 4]);
    return boxesOf(typedArray(boxes) as Float32Array, typedArray(scores) as Float32Array, typedArray(count) as Int32Array);
  };

  beforeAll(async () => {
    outDir = mkdtempSync(path.join(os.tmpdir(), 'tb-text-'));
    b = await startTestBroker({
      models: {
        'text-detector': { command: ['node', modelMain('text-detector')], batch_size: 8, max_wait_ms: 20, timeout_ms: 60_000, startup_timeout_ms: 60_000 },
      },
    });
    client = new ZmqClient(b.zmqEndpoint, { timeoutMs: 60_000 });
    [pictures, blank] = await Promise.all([
      Promise.all([
        demoPicture(640, 480),
        renderTextPicture(640, 480, [
          { text: 'HELLO WORLD', x: 40, y: 80, size: 44, weight: 'bold' },
          { text: 'bottom right corner', x: 330, y: 450, size: 26 },
        ]),
        renderTextPicture(640, 480, [{ text: 'Lorem ipsum dolor sit amet', x: 120, y: 250, size: 30, color: '#303030' }], '#f4efe2'),
      ]),
      blankPicture(640, 480),
    ]);
    await waitReady(b, 'text-detector', 60_000);
  });
  afterAll(async () => {
    await client?.close();
    await b?.stop();
    if (outDir) rmSync(outDir, { recursive: true, force: true });
  });

  test('REST image upload: boxes on every text line, mapped to the picture\'s pixels', async () => {
    const res = await fetch(`${b.url}/v2/models/text-detector/infer`, { method: 'POST', headers: { 'content-type': 'image/png' }, body: await png(pictures[0]) });
    expect(res.status).toBe(200);
    const json = (await res.json()) as { outputs: { name: string; shape: number[]; data: number[] | string[] }[] };
    const out = Object.fromEntries(json.outputs.map((o) => [o.name, o]));
    expect(out.BOXES.shape).toEqual([1, MAX_BOXES, 4]);
    const [found] = boxesOf(out.BOXES.data as number[], out.SCORES.data as number[], out.COUNT.data as number[]);
    expectBoxesOnText(found, pictures[0].truth);
    expect(found.every((f) => f.score > 0.6 && f.score <= 1)).toBe(true);
  });

  test('no boxes on blank pictures (white, grey, black)', async () => {
    const blanks = [blank, await blankPicture(640, 480, '#808080'), await blankPicture(640, 480, '#000000')];
    for (const found of await detectZmq(blanks)) expect(found).toEqual([]);
  });

  test('other sizes and aspect ratios: boxes land on the text in original coordinates', async () => {
    const wide = await renderTextPicture(1280, 360, [{ text: 'a wide banner of text', x: 500, y: 200, size: 48 }]);
    const small = await renderTextPicture(320, 240, [{ text: 'tiny', x: 30, y: 60, size: 28 }, { text: 'picture', x: 150, y: 200, size: 30 }]);
    const tall = await renderTextPicture(400, 900, [{ text: 'top', x: 40, y: 100, size: 40 }, { text: 'bottom line', x: 60, y: 820, size: 40 }]);
    for (const p of [wide, small, tall]) {
      const [found] = await detectZmq([p]);
      expectBoxesOnText(found, p.truth);
    }
  });

  test('the same picture gives the same boxes at batch 1 and inside a batch of 8', async () => {
    const eight = [pictures[0], blank, pictures[1], pictures[2], blank, pictures[0], pictures[2], pictures[1]];
    const before = (await getJson(`${b.url}/v2/models/text-detector/stats`)).model_stats[0];
    const batched = await detectZmq(eight);
    const after = (await getJson(`${b.url}/v2/models/text-detector/stats`)).model_stats[0];
    expect(after.execution_count - before.execution_count).toBe(1); // one batch of 8 rows
    expect(after.inference_count - before.inference_count).toBe(8);
    const singles = await Promise.all([pictures[0], blank, pictures[1], pictures[2]].map(async (p) => (await detectZmq([p]))[0]));
    const single = (p: RenderedPicture) => singles[[pictures[0], blank, pictures[1], pictures[2]].indexOf(p)];
    eight.forEach((p, i) => {
      const one = single(p);
      expect(batched[i].map(({ x1, y1, x2, y2 }) => [x1, y1, x2, y2])).toEqual(one.map(({ x1, y1, x2, y2 }) => [x1, y1, x2, y2]));
      batched[i].forEach((f, k) => expect(f.score).toBeCloseTo(one[k].score, 4));
      if (p !== blank) expectBoxesOnText(batched[i], p.truth);
    });
  });

  test('concurrent single-picture requests are batched by the broker', async () => {
    const before = (await getJson(`${b.url}/v2/models/text-detector/stats`)).model_stats[0];
    const all = await Promise.all(Array.from({ length: 12 }, (_, i) => detectZmq([i % 3 === 2 ? blank : pictures[i % 3]])));
    const after = (await getJson(`${b.url}/v2/models/text-detector/stats`)).model_stats[0];
    expect(after.inference_count - before.inference_count).toBe(12);
    expect(after.execution_count - before.execution_count).toBeLessThan(12);
    all.forEach(([found], i) => (i % 3 === 2 ? expect(found).toEqual([]) : expectBoxesOnText(found, pictures[i % 3].truth)));
  });

  test('ANNOTATED on request: a JPEG of the original size with red boxes around the text', async () => {
    const r = await client.infer('text-detector', [rgbTensor([pictures[0], blank])], { outputs: ['ANNOTATED', 'COUNT'] });
    expect(r.outputs.map((t) => t.name).sort()).toEqual(['ANNOTATED', 'COUNT']);
    const [jpeg, jpegBlank] = bytesElements(r.outputs.find((t) => t.name === 'ANNOTATED')!).map((e) => Buffer.from(e.toString(), 'base64'));
    const file = path.join(outDir, 'annotated.jpg');
    writeFileSync(file, jpeg);
    const meta = await sharp(jpeg).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(['jpeg', 640, 480]);
    const [found] = await detectZmq([pictures[0]]);
    const { data, info } = await sharp(jpeg).raw().toBuffer({ resolveWithObject: true });
    const px = (x: number, y: number) => Array.from(data.subarray((y * info.width + x) * 3, (y * info.width + x) * 3 + 3));
    for (const f of found) {
      const [r0, g0, b0] = px(Math.round((f.x1 + f.x2) / 2), Math.round(f.y1)); // the top edge of the box
      expect(r0).toBeGreaterThan(150);
      expect(Math.max(g0, b0)).toBeLessThan(120);
    }
    // The blank picture comes back unmarked: no red pixel anywhere.
    const blankPixels = (await sharp(jpegBlank).raw().toBuffer());
    let red = 0;
    for (let i = 0; i < blankPixels.length; i += 3) if (blankPixels[i] > 150 && blankPixels[i + 1] < 120) red++;
    expect(red).toBe(0);
  });

  test('ANNOTATED is not made unless asked for', async () => {
    const r = await client.infer('text-detector', [rgbTensor([pictures[1]])], { outputs: ['COUNT'] });
    expect(r.outputs.map((t) => t.name)).toEqual(['COUNT']);
  });
});
