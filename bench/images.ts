/**
 * The test picture of the image benchmark, generated once: a 640×480 RGB
 * gradient with deterministic noise (so the JPEG is not trivially small), and
 * the three REST bodies that carry it to `image-info`.
 */
import sharp from 'sharp';
import { binaryBody } from './clients';

export interface ImageBodies {
  width: number;
  height: number;
  /** RGB bytes, row-major, height·width·3. */
  rgb: Buffer;
  /** KServe v2 JSON: IMAGE UINT8 [1,H,W,3] with a flat `data` array of numbers. */
  json: string;
  /** Binary extension: the JSON header, then the raw RGB bytes. */
  binary: Buffer;
  binaryHeaderLength: number;
  /** The same picture as a JPEG (quality 90), for Content-Type image/jpeg. */
  jpeg: Buffer;
  jpegQuality: number;
}

/** Mulberry32: a small deterministic PRNG, so every run sends the same picture. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export async function makeImageBodies(width = 640, height = 480, quality = 90): Promise<ImageBodies> {
  const rgb = Buffer.alloc(width * height * 3);
  const rand = prng(42);
  const clamp = (v: number) => (v < 0 ? 0 : v > 255 ? 255 : Math.round(v));
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * 3;
      const n = (rand() - 0.5) * 24; // ±12 of grain on top of smooth gradients
      rgb[i] = clamp((x / (width - 1)) * 255 + n);
      rgb[i + 1] = clamp((y / (height - 1)) * 255 + n);
      rgb[i + 2] = clamp(128 + 100 * Math.sin((x + y) / 60) + n);
    }
  }
  const jpeg = await sharp(rgb, { raw: { width, height, channels: 3 } }).jpeg({ quality }).toBuffer();
  const shape = [1, height, width, 3];
  const json = `{"inputs":[{"name":"IMAGE","datatype":"UINT8","shape":${JSON.stringify(shape)},"data":[${rgb.join(',')}]}]}`;
  const { body, headerLength } = binaryBody([{ name: 'IMAGE', datatype: 'UINT8', shape, data: rgb }], false);
  return { width, height, rgb, json, binary: body, binaryHeaderLength: headerLength, jpeg, jpegQuality: quality };
}

/** The per-channel means image-info should answer for `rgb`. */
export function meanRgb(rgb: Buffer): [number, number, number] {
  const sums = [0, 0, 0];
  for (let i = 0; i < rgb.length; i += 3) {
    sums[0] += rgb[i];
    sums[1] += rgb[i + 1];
    sums[2] += rgb[i + 2];
  }
  const n = rgb.length / 3;
  return [sums[0] / n, sums[1] / n, sums[2] / n];
}
