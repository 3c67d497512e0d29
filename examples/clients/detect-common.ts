/**
 * Shared by the text-detector client examples (detect-rest, detect-grpc, detect-zmq):
 * command line, the picture (a file, or the demo picture rendered with sharp), and
 * printing / saving the answer.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import sharp from 'sharp';
import { demoPicture } from '../models/text-detector/pictures';

export interface Args {
  image?: string;
  out: string;
  /** Endpoint: REST base URL, gRPC host:port or ZeroMQ tcp:// address. */
  endpoint: string;
  json: boolean;
}

export function parseArgs(argv: string[], defaultEndpoint: string, usage: string): Args {
  const args: Args = { out: 'annotated.jpg', endpoint: defaultEndpoint, json: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--out' || a === '-o') args.out = argv[++i];
    else if (a === '--endpoint' || a === '--url') args.endpoint = argv[++i];
    else if (a === '--json') args.json = true;
    else if (a === '--help' || a === '-h') {
      process.stdout.write(`${usage}\n`);
      process.exit(0);
    } else if (a.startsWith('-')) throw new Error(`unknown option ${a}\n${usage}`);
    else args.image = a;
  }
  return args;
}

/** The picture's file bytes and content type (the demo picture as PNG when no file is given). */
export async function pictureFile(args: Args): Promise<{ bytes: Buffer; type: string; name: string }> {
  if (!args.image) {
    const p = await demoPicture();
    const bytes = await sharp(p.data, { raw: { width: p.width, height: p.height, channels: 3 } }).png().toBuffer();
    return { bytes, type: 'image/png', name: 'demo picture (800x600, rendered)' };
  }
  const bytes = readFileSync(args.image);
  const format = (await sharp(bytes).metadata()).format;
  const type = format === 'jpeg' ? 'image/jpeg' : format === 'png' ? 'image/png' : format === 'webp' ? 'image/webp' : '';
  if (!type) throw new Error(`${args.image} is ${format ?? 'not an image'}: use JPEG, PNG or WebP`);
  return { bytes, type, name: path.basename(args.image) };
}

/** Decoded to RGB (EXIF orientation applied), for the bridges that take raw tensors. */
export async function pictureRgb(args: Args): Promise<{ data: Buffer; width: number; height: number; name: string }> {
  const f = await pictureFile(args);
  const { data, info } = await sharp(f.bytes).autoOrient().removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
  return { data, width: info.width, height: info.height, name: f.name };
}

export interface Detection { x1: number; y1: number; x2: number; y2: number; score: number }

/** Valid boxes of picture 0 from BOXES [1, MAX, 4], SCORES [1, MAX], COUNT [1, 1]. */
export function detections(boxes: ArrayLike<number>, scores: ArrayLike<number>, count: number): Detection[] {
  return Array.from({ length: count }, (_, k) => ({
    x1: boxes[k * 4], y1: boxes[k * 4 + 1], x2: boxes[k * 4 + 2], y2: boxes[k * 4 + 3], score: Math.round(scores[k] * 1000) / 1000,
  }));
}

/** Saves the annotated JPEG (ANNOTATED is base64 text) and reports. */
export function report(args: Args, bridge: string, name: string, found: Detection[], annotatedB64: string | Buffer): void {
  const jpeg = Buffer.from(annotatedB64.toString(), 'base64');
  writeFileSync(args.out, jpeg);
  if (args.json) {
    process.stdout.write(`${JSON.stringify({ bridge, picture: name, boxes: found, annotated: args.out, annotatedBytes: jpeg.length })}\n`);
    return;
  }
  process.stdout.write(`${bridge}: ${found.length} text box(es) in ${name}\n`);
  for (const b of found) process.stdout.write(`  [${b.x1}, ${b.y1}, ${b.x2}, ${b.y2}]  score ${b.score}\n`);
  process.stdout.write(`annotated picture: ${args.out} (${jpeg.length} bytes)\n`);
}

export function main(run: () => Promise<void>): void {
  run().catch((e: Error) => {
    process.stderr.write(`${e.message}\n`);
    process.exit(1);
  });
}
