/**
 * Image uploads: JPEG, PNG or WebP bytes -> a UINT8 [N, H, W, 3] RGB tensor
 * for a model's image input. Decoding (and resizing) runs in libvips' thread
 * pool through sharp; the event loop only awaits it.
 */
import sharp from 'sharp';
import { BrokerError } from '../../core/errors';
import type { Tensor, TensorSpec } from '../../proto/tensor';
import type { ModelMetadata } from '../../core/types';
import { UnsupportedMediaType } from './media';
import { quote, truncate } from '../shared/truncate';
import { Slots } from '../shared/slots';

const invalid = (msg: string) => new BrokerError('INVALID_ARGUMENT', msg);
const tooLarge = (msg: string) => new BrokerError('PAYLOAD_TOO_LARGE', msg);

/** sharp's names of the formats accepted (whatever the declared type, the bytes decide). */
const FORMATS = new Set(['jpeg', 'png', 'webp']);

export const FITS = ['cover', 'contain', 'fill', 'inside', 'outside'] as const;
export type Fit = (typeof FITS)[number];

export interface ImageOptions {
  /** Name of the model input the images go to (`?input=`). */
  input?: string;
  /** Resize target (`?width=`, `?height=`); one alone keeps the aspect ratio. */
  width?: number;
  height?: number;
  /** How to fit into width x height (`?fit=`, default cover). */
  fit: Fit;
}

export interface DecodedImage {
  label: string;
  width: number;
  height: number;
  /** RGB, 8 bits per channel, row-major: height * width * 3 bytes. */
  data: Buffer;
}

/** The largest side accepted for a resize target. */
const MAX_SIDE = 65535;

function dimension(query: Record<string, unknown>, key: string): number | undefined {
  const v = query[key];
  if (v === undefined || v === '') return undefined;
  const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : NaN;
  if (!Number.isInteger(n) || n < 1 || n > MAX_SIDE) throw invalid(`query '${key}' must be an integer from 1 to ${MAX_SIDE} (got ${quote(v)})`);
  return n;
}

/** Reads ?input=, ?width=, ?height= and ?fit= (400 on bad values). */
export function imageOptions(query: Record<string, unknown>): ImageOptions {
  const fit = query.fit === undefined || query.fit === '' ? 'cover' : query.fit;
  if (typeof fit !== 'string' || !(FITS as readonly string[]).includes(fit)) {
    throw invalid(`query 'fit' must be one of ${FITS.join(', ')} (got ${quote(fit)})`);
  }
  const input = query.input;
  if (input !== undefined && (typeof input !== 'string' || input === '')) throw invalid("query 'input' must be an input name");
  return { input: input as string | undefined, width: dimension(query, 'width'), height: dimension(query, 'height'), fit: fit as Fit };
}

/**
 * The input an image goes to: the one named by ?input=, else the model's only
 * input. It must take UINT8 with shape [batch, H, W, 3] (H, W may be -1).
 */
export function imageInput(meta: ModelMetadata, name: string | undefined): TensorSpec {
  let spec: TensorSpec | undefined;
  if (name !== undefined) {
    spec = meta.inputs.find((t) => t.name === name);
    if (!spec) throw invalid(`model '${meta.name}' has no input named '${truncate(name)}' (inputs: ${meta.inputs.map((t) => t.name).join(', ')})`);
  } else if (meta.inputs.length === 1) {
    spec = meta.inputs[0];
  } else {
    throw invalid(`model '${meta.name}' has ${meta.inputs.length} inputs (${meta.inputs.map((t) => t.name).join(', ')}): name the image input with ?input=NAME`);
  }
  const { shape } = spec;
  if (spec.datatype !== 'UINT8' || shape.length !== 4 || (shape[3] !== -1 && shape[3] !== 3)) {
    throw invalid(`input '${spec.name}' of model '${meta.name}' is ${spec.datatype} ${JSON.stringify(shape)}: ` +
      'an uploaded image becomes UINT8 [N, H, W, 3]; send a JSON or binary body for this input');
  }
  return spec;
}

/**
 * Resize target for an input: the query's, else the input's fixed H and W
 * when it declares them (so a photo fits a [-1, 224, 224, 3] input as is).
 */
export function resizeTarget(spec: TensorSpec, opts: ImageOptions): ImageOptions {
  if (opts.width !== undefined || opts.height !== undefined) return opts;
  const [, h, w] = spec.shape;
  return h > 0 && w > 0 ? { ...opts, width: w, height: h } : opts;
}

/** The picture an upload will become, read from its header alone. */
export interface ImageProbe {
  label: string;
  bytes: Buffer;
  /** Size of the decoded (and resized) picture, worked out before decoding. */
  width: number;
  height: number;
}

/**
 * Size of the picture sharp makes from an iw x ih input (after EXIF rotation)
 * for a resize target, for every mode: one side (the other follows the aspect
 * ratio), both sides with each fit. Rounded up, so it never underestimates.
 */
export function resizedSize(iw: number, ih: number, opts: Pick<ImageOptions, 'width' | 'height' | 'fit'>): { width: number; height: number } {
  const { width: w, height: h } = opts;
  if (w === undefined && h === undefined) return { width: iw, height: ih };
  // fill with one side stretches that side only; the other keeps the input's.
  if (opts.fit === 'fill' && (w === undefined || h === undefined)) return { width: w ?? iw, height: h ?? ih };
  if (w !== undefined && h === undefined) return { width: w, height: Math.max(1, Math.ceil((ih * w) / iw)) };
  if (w === undefined && h !== undefined) return { width: Math.max(1, Math.ceil((iw * h) / ih)), height: h };
  const tw = w as number;
  const th = h as number;
  if (opts.fit === 'inside' || opts.fit === 'outside') {
    const scale = opts.fit === 'inside' ? Math.min(tw / iw, th / ih) : Math.max(tw / iw, th / ih);
    return { width: Math.max(1, Math.ceil(iw * scale)), height: Math.max(1, Math.ceil(ih * scale)) };
  }
  return { width: tw, height: th }; // cover crops, contain pads, fill stretches: exactly the target
}

/**
 * Reads one image's header (cheap: nothing is decoded) and works out the size
 * it will decode to. An unsupported format is a 415; a picture whose input or
 * output would exceed `maxElements` a 413, before a byte is allocated for it;
 * unreadable bytes a 400.
 */
export async function probeImage(bytes: Buffer, label: string, opts: ImageOptions, maxElements: number): Promise<ImageProbe> {
  const maxPixels = Math.max(1, Math.floor(maxElements / 3));
  let meta: sharp.Metadata;
  try {
    meta = await sharp(bytes, { limitInputPixels: false }).metadata();
  } catch (e) {
    throw invalid(`${label}: not a readable image (${truncate((e as Error).message)})`);
  }
  if (!meta.format || !FORMATS.has(meta.format)) {
    throw new UnsupportedMediaType(`${label} is ${meta.format ? `a ${truncate(meta.format, 20)} image` : 'of an unknown format'}: uploads take JPEG, PNG or WebP`);
  }
  const rotated = (meta.orientation ?? 1) >= 5; // autoOrient swaps the sides of EXIF orientations 5 to 8
  const iw = (rotated ? meta.height : meta.width) ?? 0;
  const ih = (rotated ? meta.width : meta.height) ?? 0;
  if (iw < 1 || ih < 1) throw invalid(`${label}: the image header gives no size`);
  if (iw * ih > maxPixels) {
    throw tooLarge(`${label} is ${iw}x${ih}: decoded it has ${iw * ih * 3} elements, over the limit of ${maxElements}`);
  }
  const out = resizedSize(iw, ih, opts);
  if (out.width * out.height > maxPixels) {
    const how = opts.width !== undefined && opts.height !== undefined ? `${opts.width}x${opts.height} (fit ${opts.fit})` : `to ${opts.width !== undefined ? `width ${opts.width}` : `height ${opts.height}`}`;
    throw tooLarge(`${label} (${iw}x${ih}) resized ${how} would be ${out.width}x${out.height}: ` +
      `${out.width * out.height * 3} elements, over the limit of ${maxElements}`);
  }
  return { label, bytes, width: out.width, height: out.height };
}

/** Pictures up to this many pixels decode in their own lane, so they never wait behind big ones. */
const SMALL_PIXELS = 1024 * 1024;
/**
 * Decodes at once, in two lanes: libuv has 4 threads by default, and two
 * image decodes plus one big one leave a thread for files, zlib and DNS.
 */
const smallLane = new Slots(2);
const bigLane = new Slots(1);

/** Decodes a probed image to RGB bytes (the probe has already bounded its size). */
export async function decodeImage(probe: ImageProbe, opts: ImageOptions, maxElements: number): Promise<DecodedImage> {
  const { bytes, label } = probe;
  const maxPixels = Math.max(1, Math.floor(maxElements / 3));
  // limitInputPixels again: the probe read the header, this guards the decoder itself.
  let pipeline = sharp(bytes, { limitInputPixels: maxPixels, failOn: 'truncated' }).autoOrient();
  if (opts.width !== undefined || opts.height !== undefined) {
    pipeline = pipeline.resize({ width: opts.width, height: opts.height, fit: opts.fit, background: { r: 0, g: 0, b: 0 } });
  }
  const lane = probe.width * probe.height > SMALL_PIXELS ? bigLane : smallLane;
  let out: { data: Buffer; info: sharp.OutputInfo };
  try {
    out = await lane.run(() => pipeline.removeAlpha().toColourspace('srgb').raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true }));
  } catch (e) {
    throw invalid(`${label}: the image could not be decoded (${truncate((e as Error).message)})`);
  }
  const { data, info } = out;
  if (info.channels !== 3 || data.length !== info.width * info.height * 3) {
    throw invalid(`${label} decoded to ${info.channels} channels, not RGB`);
  }
  if (data.length > maxElements) {
    throw tooLarge(`${label} is ${info.width}x${info.height} after resizing: ${data.length} elements, over the limit of ${maxElements}`);
  }
  return { label, width: info.width, height: info.height, data };
}

/** Runs `fn` over `items` with at most `limit` at a time, keeping order. */
async function mapLimited<T, R>(items: T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/**
 * Decodes several images into one [N, H, W, 3] tensor, so they travel (and
 * batch) as one request of N rows. They must end up the same size: give a
 * resize when they are not. Two decodes at a time bound the memory held.
 */
export async function imagesTensor(
  files: { label: string; bytes: Buffer }[],
  spec: TensorSpec,
  opts: ImageOptions,
  maxElements: number,
): Promise<Tensor> {
  if (files.length === 0) throw invalid('the request has no image');
  const target = resizeTarget(spec, opts);
  // Every header first: the whole tensor's size is known (and bounded) before any decode.
  const probes = await mapLimited(files, 4, (f) => probeImage(f.bytes, f.label, target, maxElements));
  const planned = probes.reduce((n, p) => n + p.width * p.height * 3, 0);
  if (planned > maxElements) {
    throw tooLarge(`${probes.length} images (${probes.map((p) => `${p.width}x${p.height}`).join(', ')}) make ${planned} elements, over the limit of ${maxElements}`);
  }
  const images = await mapLimited(probes, 2, (p) => decodeImage(p, target, maxElements));
  const { width, height } = images[0];
  if (images.some((im) => im.width !== width || im.height !== height)) {
    const sizes = images.map((im) => `${im.label} ${im.width}x${im.height}`).join(', ');
    throw invalid(`the images differ in size (${sizes}): give ?width=&height= to resize them to one size`);
  }
  const total = images.length * width * height * 3;
  if (total > maxElements) throw tooLarge(`${images.length} images of ${width}x${height} make ${total} elements, over the limit of ${maxElements}`);
  const data = images.length === 1 ? images[0].data : Buffer.concat(images.map((im) => im.data), total);
  return { name: spec.name, datatype: 'UINT8', shape: [images.length, height, width, 3], data };
}
