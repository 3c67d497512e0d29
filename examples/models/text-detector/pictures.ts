/**
 * Synthetic pictures with text at known places, rendered by sharp from SVG: for the
 * tests, the benchmark and the client examples (when no picture is given). Each
 * text's true box is measured from its own rendering (the ink's bounding box), so
 * tests do not depend on font metrics.
 */
import sharp from 'sharp';

export interface TextSpec {
  text: string;
  /** Left end of the baseline and font size, in pixels. */
  x: number;
  y: number;
  size: number;
  /** CSS colour (default near-black). */
  color?: string;
  weight?: 'normal' | 'bold';
}

export interface InkBox {
  text: string;
  x1: number;
  y1: number;
  x2: number;
  y2: number;
}

export interface RenderedPicture {
  /** RGB, row-major. */
  data: Buffer;
  width: number;
  height: number;
  truth: InkBox[];
}

const escapeXml = (s: string) => s.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);

function svgOf(width: number, height: number, background: string, texts: TextSpec[]): string {
  const body = texts.map((t) => `<text x="${t.x}" y="${t.y}" font-family="DejaVu Sans, sans-serif" font-size="${t.size}" ` +
    `font-weight="${t.weight ?? 'normal'}" fill="${t.color ?? '#141414'}">${escapeXml(t.text)}</text>`).join('');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}">` +
    `<rect width="100%" height="100%" fill="${background}"/>${body}</svg>`;
}

async function rgb(svg: string): Promise<{ data: Buffer; width: number; height: number }> {
  const { data, info } = await sharp(Buffer.from(svg)).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return { data, width: info.width, height: info.height };
}

/** Bounding box of the pixels that differ from the background by more than 64 in some channel. */
function inkBox(img: { data: Buffer; width: number; height: number }, bg: [number, number, number]): Omit<InkBox, 'text'> | undefined {
  let x1 = Infinity;
  let y1 = Infinity;
  let x2 = -1;
  let y2 = -1;
  for (let y = 0; y < img.height; y++) {
    for (let x = 0; x < img.width; x++) {
      const i = (y * img.width + x) * 3;
      const d = Math.max(Math.abs(img.data[i] - bg[0]), Math.abs(img.data[i + 1] - bg[1]), Math.abs(img.data[i + 2] - bg[2]));
      if (d <= 64) continue;
      if (x < x1) x1 = x;
      if (x > x2) x2 = x;
      if (y < y1) y1 = y;
      if (y > y2) y2 = y;
    }
  }
  return x2 < 0 ? undefined : { x1, y1, x2: x2 + 1, y2: y2 + 1 };
}

const hex = (c: string): [number, number, number] => {
  const m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(c);
  if (!m) throw new Error(`background must be #rrggbb, got ${c}`);
  return [parseInt(m[1], 16), parseInt(m[2], 16), parseInt(m[3], 16)];
};

/** Renders the texts on a plain background; `truth` holds each text's ink box. */
export async function renderTextPicture(width: number, height: number, texts: TextSpec[], background = '#ffffff'): Promise<RenderedPicture> {
  const bg = hex(background);
  const picture = await rgb(svgOf(width, height, background, texts));
  const truth: InkBox[] = [];
  for (const t of texts) {
    const box = inkBox(await rgb(svgOf(width, height, background, [t])), bg);
    if (box) truth.push({ text: t.text, ...box });
  }
  return { ...picture, truth };
}

/** A picture of one colour, no text. */
export async function blankPicture(width: number, height: number, background = '#ffffff'): Promise<RenderedPicture> {
  return { ...(await rgb(svgOf(width, height, background, []))), truth: [] };
}

/** The demo picture of the examples and the benchmark: a few lines at known places. */
export function demoPicture(width = 800, height = 600): Promise<RenderedPicture> {
  const k = width / 800;
  return renderTextPicture(width, height, [
    { text: 'Tensor Broker', x: 60 * k, y: 110 * k, size: 56 * k, weight: 'bold' },
    { text: 'text detection with PP-OCRv4', x: 60 * k, y: 220 * k, size: 36 * k },
    { text: 'INVOICE 2026-11-23', x: 380 * k, y: 360 * k, size: 30 * k, color: '#1a3c8c' },
    { text: 'total: 1,234.56 EUR', x: 90 * k, y: 500 * k, size: 40 * k },
  ]);
}

/** Fraction of box a's area that lies inside box b. */
export function overlap(a: { x1: number; y1: number; x2: number; y2: number }, b: { x1: number; y1: number; x2: number; y2: number }): number {
  const w = Math.min(a.x2, b.x2) - Math.max(a.x1, b.x1);
  const h = Math.min(a.y2, b.y2) - Math.max(a.y1, b.y1);
  const area = (a.x2 - a.x1) * (a.y2 - a.y1);
  return w > 0 && h > 0 && area > 0 ? (w * h) / area : 0;
}
