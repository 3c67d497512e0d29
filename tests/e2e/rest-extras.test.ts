/**
 * REST bridge additions, end to end over real HTTP with real model processes:
 * image uploads (single, multipart, resize, errors), compressed bodies, the
 * model repository extension, the raw-body binary form, BYTES tensors,
 * request priority, and curl as an independent client of the binary extension.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import sharp from 'sharp';
import { getJson, modelMain, postJson, row, simpleBody, startTestBroker, waitFor, waitReady, type TestBroker } from '../helpers/broker';

const BODY_LIMIT = 256 * 1024;

type Rgb = { r: number; g: number; b: number };
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Json = Record<string, any>;

const solid = (width: number, height: number, colour: Rgb, channels: 3 | 4 = 3) =>
  sharp({ create: { width, height, channels, background: channels === 4 ? { ...colour, alpha: 0.5 } : colour } });

/** Outputs of a JSON infer response by name. */
const outputs = (json: Json): Record<string, { datatype: string; shape: number[]; data: number[] | string[] }> =>
  Object.fromEntries((json.outputs as { name: string }[]).map((o) => [o.name, o])) as never;

/** Splits a binary-extension response into its JSON header and each binary output's bytes. */
async function binaryReply(res: Response): Promise<{ head: Json; data: Record<string, Buffer> }> {
  const body = Buffer.from(await res.arrayBuffer());
  const hl = Number(res.headers.get('inference-header-content-length'));
  return splitReply(body, hl);
}

function splitReply(body: Buffer, hl: number): { head: Json; data: Record<string, Buffer> } {
  const head = JSON.parse(body.subarray(0, hl).toString()) as Json;
  const data: Record<string, Buffer> = {};
  let offset = hl;
  for (const o of head.outputs as { name: string; parameters?: { binary_data_size?: number } }[]) {
    const size = o.parameters?.binary_data_size;
    if (size === undefined) continue;
    data[o.name] = body.subarray(offset, offset + size);
    offset += size;
  }
  expect(offset).toBe(body.length);
  return { head, data };
}

/** BYTES elements of a binary tensor (4-byte little-endian length + bytes each). */
function bytesItems(b: Buffer): string[] {
  const out: string[] = [];
  for (let pos = 0; pos < b.length;) {
    const len = b.readUInt32LE(pos);
    out.push(b.toString('utf8', pos + 4, pos + 4 + len));
    pos += 4 + len;
  }
  return out;
}

const lengthPrefixed = (items: string[]) => Buffer.concat(items.flatMap((s) => {
  const b = Buffer.from(s, 'utf8');
  const len = Buffer.alloc(4);
  len.writeUInt32LE(b.length);
  return [len, b];
}));

/** CRC-32 (PNG chunks). */
function crc32(buf: Buffer): number {
  let c = ~0;
  for (const byte of buf) {
    c ^= byte;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
  }
  return ~c >>> 0;
}

/** A valid small PNG whose header claims width x height (the pixels are never reached). */
async function pngClaiming(width: number, height: number): Promise<Buffer> {
  const png = Buffer.from(await solid(4, 4, { r: 1, g: 2, b: 3 }).png().toBuffer());
  expect(png.toString('latin1', 12, 16)).toBe('IHDR');
  png.writeUInt32BE(width, 16);
  png.writeUInt32BE(height, 20);
  png.writeUInt32BE(crc32(png.subarray(12, 29)), 29);
  return png;
}

describe('REST bridge extras, process runtime', () => {
  let b: TestBroker;
  const url = (model: string, query = '') => `${b.url}/v2/models/${model}/infer${query}`;
  const post = (model: string, body: Buffer | string | FormData, headers: Record<string, string> = {}, query = '') =>
    fetch(url(model, query), { method: 'POST', headers, body });
  const postImage = async (model: string, image: Buffer, type: string, query = '') => {
    const res = await post(model, image, { 'content-type': type }, query);
    return { status: res.status, json: (await res.json()) as Json };
  };

  beforeAll(async () => {
    b = await startTestBroker({
      config: { bodyLimit: BODY_LIMIT },
      models: {
        'image-info': { command: ['node', modelMain('image-info')], batch_size: 8 },
        strings: { command: ['node', modelMain('strings')], batch_size: 8 },
        simple: { command: ['node', modelMain('simple')], batch_size: 8 },
        echo: { command: ['node', modelMain('sleepy')], batch_size: 8, env: { SLEEPY_A_MS: '0', SLEEPY_B_MS: '0' } },
        prio: { command: ['node', modelMain('sleepy')], batch_size: 1, env: { SLEEPY_A_MS: '200', SLEEPY_B_MS: '0' } },
        broken: { command: ['node', '-e', 'console.error("cannot load weights"); process.exit(7)'], min_replicas: 0, startup_timeout_ms: 5000 },
      },
    });
    await Promise.all(['image-info', 'strings', 'simple', 'echo', 'prio'].map((m) => waitReady(b, m)));
  });
  afterAll(() => b?.stop());

  describe('image uploads', () => {
    test('PNG: exact height, width and mean RGB; the alpha channel is dropped', async () => {
      const colour = { r: 200, g: 100, b: 50 };
      const png = await solid(40, 30, colour).png().toBuffer();
      const res = await postImage('image-info', png, 'image/png');
      expect(res.status).toBe(200);
      expect(res.json.model_name).toBe('image-info');
      const out = outputs(res.json);
      expect(out.HEIGHT).toMatchObject({ datatype: 'INT32', shape: [1, 1], data: [30] });
      expect(out.WIDTH).toMatchObject({ datatype: 'INT32', shape: [1, 1], data: [40] });
      expect(out.MEAN_RGB).toMatchObject({ datatype: 'FP32', shape: [1, 3], data: [200, 100, 50] });

      const rgba = await solid(10, 12, { r: 0, g: 255, b: 9 }, 4).png().toBuffer();
      const alpha = await postImage('image-info', rgba, 'image/png');
      expect(alpha.status).toBe(200);
      expect(outputs(alpha.json).MEAN_RGB.data).toEqual([0, 255, 9]);
    });

    test('JPEG and WebP: mean RGB within compression tolerance; the version path works', async () => {
      const colour = { r: 10, g: 200, b: 120 };
      const jpeg = await solid(64, 48, colour).jpeg({ quality: 95 }).toBuffer();
      const res = await postImage('image-info/versions/1', jpeg, 'image/jpeg');
      expect(res.status).toBe(200);
      const out = outputs(res.json);
      expect(out.HEIGHT.data).toEqual([48]);
      expect(out.WIDTH.data).toEqual([64]);
      const [r, g, bl] = out.MEAN_RGB.data as number[];
      expect(Math.abs(r - colour.r)).toBeLessThanOrEqual(3);
      expect(Math.abs(g - colour.g)).toBeLessThanOrEqual(3);
      expect(Math.abs(bl - colour.b)).toBeLessThanOrEqual(3);

      const webp = await solid(20, 20, colour).webp({ lossless: true }).toBuffer();
      const w = await postImage('image-info', webp, 'image/webp; charset=binary');
      expect(w.status).toBe(200);
      expect(outputs(w.json).MEAN_RGB.data).toEqual([10, 200, 120]);
    });

    test('resize with ?width=&height= and ?fit=; ?input= names the input; bad options are 400s', async () => {
      const png = await solid(100, 50, { r: 1, g: 2, b: 3 }).png().toBuffer();
      const fill = await postImage('image-info', png, 'image/png', '?width=16&height=8&fit=fill');
      expect(fill.status).toBe(200);
      expect(outputs(fill.json).HEIGHT.data).toEqual([8]);
      expect(outputs(fill.json).WIDTH.data).toEqual([16]);
      expect(outputs(fill.json).MEAN_RGB.data).toEqual([1, 2, 3]);
      // One side alone keeps the aspect ratio (2:1).
      const one = await postImage('image-info', png, 'image/png', '?width=20&input=IMAGE');
      expect(one.status).toBe(200);
      expect([outputs(one.json).HEIGHT.data[0], outputs(one.json).WIDTH.data[0]]).toEqual([10, 20]);

      const badFit = await postImage('image-info', png, 'image/png', '?width=4&height=4&fit=squash');
      expect(badFit.status).toBe(400);
      expect(badFit.json.error).toContain("'fit'");
      const badWidth = await postImage('image-info', png, 'image/png', '?width=-3');
      expect(badWidth.status).toBe(400);
      const badInput = await postImage('image-info', png, 'image/png', '?input=PIXELS');
      expect(badInput.status).toBe(400);
      expect(badInput.json.error).toContain("no input named 'PIXELS'");
      // A model whose input is not an image.
      const notImage = await postImage('simple', png, 'image/png');
      expect(notImage.status).toBe(400);
      expect(notImage.json.error).toMatch(/2 inputs .*\?input=NAME/);
      const wrongType = await postImage('simple', png, 'image/png', '?input=INPUT0');
      expect(wrongType.status).toBe(400);
      expect(wrongType.json.error).toContain('UINT8 [N, H, W, 3]');
    });

    test('multipart with two images of one size: one request of two rows, answered in order', async () => {
      const before = (await getJson(`${b.url}/v2/models/image-info/stats`)).model_stats[0];
      const form = new FormData();
      form.append('first', new Blob([await solid(24, 16, { r: 255, g: 0, b: 0 }).png().toBuffer()], { type: 'image/png' }), 'red.png');
      form.append('second', new Blob([await solid(24, 16, { r: 0, g: 0, b: 255 }).png().toBuffer()], { type: 'image/png' }), 'blue.png');
      const res = await post('image-info', form);
      const json = (await res.json()) as Json;
      expect(res.status).toBe(200);
      const out = outputs(json);
      expect(out.HEIGHT).toMatchObject({ shape: [2, 1], data: [16, 16] });
      expect(out.WIDTH).toMatchObject({ shape: [2, 1], data: [24, 24] });
      expect(out.MEAN_RGB).toMatchObject({ shape: [2, 3], data: [255, 0, 0, 0, 0, 255] });
      const after = (await getJson(`${b.url}/v2/models/image-info/stats`)).model_stats[0];
      expect(after.execution_count - before.execution_count).toBe(1); // both images in one batch
    });

    test('multipart with two sizes: 400 asking for a resize; with one, both rows come back at that size', async () => {
      const form = () => {
        const f = new FormData();
        return Promise.all([solid(30, 20, { r: 9, g: 9, b: 9 }).png().toBuffer(), solid(12, 40, { r: 90, g: 90, b: 90 }).jpeg().toBuffer()])
          .then(([a, c]) => {
            f.append('a', new Blob([a], { type: 'image/png' }), 'a.png');
            f.append('c', new Blob([c], { type: 'image/jpeg' }), 'c.jpg');
            return f;
          });
      };
      const differ = await post('image-info', await form());
      expect(differ.status).toBe(400);
      const err = ((await differ.json()) as Json).error as string;
      expect(err).toContain('differ in size');
      expect(err).toContain('?width=&height=');
      const resized = await post('image-info', await form(), {}, '?width=8&height=8');
      expect(resized.status).toBe(200);
      const out = outputs((await resized.json()) as Json);
      expect(out.HEIGHT.data).toEqual([8, 8]);
      expect(out.WIDTH.data).toEqual([8, 8]);
      // A non-file field is refused: options go in the query.
      const withField = await form();
      withField.append('width', '8');
      const field = await post('image-info', withField);
      expect(field.status).toBe(400);
      expect(((await field.json()) as Json).error).toContain('query string');
    });

    test('multipart limits: over the body limit 413, no image 400, a Content-Encoding 415, a text part 415', async () => {
      const big = new FormData();
      big.append('a', new Blob([Buffer.alloc(150 * 1024, 1)], { type: 'image/png' }), 'a.png');
      big.append('b', new Blob([Buffer.alloc(150 * 1024, 2)], { type: 'image/png' }), 'b.png');
      const tooBig = await post('image-info', big);
      expect(tooBig.status).toBe(413);
      expect(((await tooBig.json()) as Json).error).toContain(`limit of ${BODY_LIMIT} bytes`);

      const empty = await fetch(url('image-info'), {
        method: 'POST',
        headers: { 'content-type': 'multipart/form-data; boundary=XYZ' },
        body: '--XYZ--\r\n',
      });
      expect(empty.status).toBe(400);
      expect(((await empty.json()) as Json).error).toContain('no image');
      for (const [type, body] of [
        ['multipart/form-data', 'no boundary'],
        ['multipart/form-data; boundary=XYZ', '--XYZ\r\nContent-Disposition: form-data; name="a"; filename="a.png"\r\nContent-Type: image/png\r\n\r\ncut short'],
      ]) {
        const malformed = await fetch(url('image-info'), { method: 'POST', headers: { 'content-type': type }, body });
        expect(malformed.status).toBe(400);
        expect(((await malformed.json()) as Json).error).toContain('malformed multipart body');
      }

      const png = await solid(4, 4, { r: 1, g: 1, b: 1 }).png().toBuffer();
      const form = new FormData();
      form.append('a', new Blob([png], { type: 'image/png' }), 'a.png');
      const encoded = new Request(url('image-info'), { method: 'POST', body: form });
      const encodedBody = Buffer.from(await encoded.arrayBuffer());
      const gz = await post('image-info', zlib.gzipSync(encodedBody), { 'content-type': encoded.headers.get('content-type')!, 'content-encoding': 'gzip' });
      expect(gz.status).toBe(415);

      const text = new FormData();
      text.append('a', new Blob(['hello'], { type: 'text/csv' }), 'a.csv');
      const csv = await post('image-info', text);
      expect(csv.status).toBe(415);
      expect(((await csv.json()) as Json).error).toContain('text/csv');
      // Still serving multipart after all that.
      expect((await post('image-info', form)).status).toBe(200);
    });

    test('corrupt image 400, truncated JPEG 400, unsupported types 415, oversized image 413; the server lives on', async () => {
      const corrupt = await postImage('image-info', Buffer.from('definitely not a picture'), 'image/png');
      expect(corrupt.status).toBe(400);
      expect(corrupt.json.error).toContain('not a readable image');

      const jpeg = await sharp({ create: { width: 256, height: 256, channels: 3, background: { r: 0, g: 0, b: 0 }, noise: { type: 'gaussian', mean: 128, sigma: 30 } } }).jpeg().toBuffer();
      const truncated = await postImage('image-info', jpeg.subarray(0, Math.floor(jpeg.length * 0.6)), 'image/jpeg');
      expect(truncated.status).toBe(400);
      expect(truncated.json.error).toContain('could not be decoded');

      const text = await post('image-info', 'hello', { 'content-type': 'text/plain' });
      expect(text.status).toBe(415);
      expect(((await text.json()) as Json).error).toContain("Content-Type 'text/plain'");
      const gifType = await postImage('image-info', jpeg, 'image/gif');
      expect(gifType.status).toBe(415);
      const gif = await solid(8, 8, { r: 1, g: 1, b: 1 }).gif().toBuffer();
      const gifBytes = await postImage('image-info', gif, 'image/png');
      expect(gifBytes.status).toBe(415);
      expect(gifBytes.json.error).toContain('gif');

      // 6000 x 6000 x 3 elements is over the 64 Mi element limit: refused from the header, before decoding.
      const huge = await postImage('image-info', await pngClaiming(6000, 6000), 'image/png');
      expect(huge.status).toBe(413);
      expect(huge.json.error).toContain('6000x6000');
      const bigResize = await postImage('image-info', jpeg, 'image/jpeg', '?width=65535&height=65535');
      expect(bigResize.status).toBe(413);

      const after = await postImage('image-info', await solid(2, 2, { r: 3, g: 3, b: 3 }).png().toBuffer(), 'image/png');
      expect(after.status).toBe(200);
    });
  });

  describe('compressed request bodies', () => {
    const json = () => JSON.stringify(simpleBody([row(16)], [row(16, 1)]));
    const sums = row(16).map((v) => v + v + 1);

    test('gzip, deflate (zlib) and raw deflate JSON bodies are decoded', async () => {
      for (const [encoding, bytes] of [
        ['gzip', zlib.gzipSync(json())],
        ['deflate', zlib.deflateSync(json())],
        ['deflate', zlib.deflateRawSync(json())],
        ['GZIP, identity', zlib.gzipSync(json())],
      ] as const) {
        const res = await post('simple', bytes, { 'content-type': 'application/json', 'content-encoding': encoding });
        expect(res.status).toBe(200);
        expect(outputs((await res.json()) as Json).OUTPUT0.data).toEqual(sums);
      }
      // An image can be compressed too: the encoding is undone before the type is looked at.
      const png = await solid(5, 5, { r: 7, g: 8, b: 9 }).png().toBuffer();
      const img = await post('image-info', zlib.gzipSync(png), { 'content-type': 'image/png', 'content-encoding': 'gzip' });
      expect(img.status).toBe(200);
    });

    test('a bad stream is 400, an unknown encoding 415, a gzip bomb over the body limit 413', async () => {
      const bad = await post('simple', Buffer.from('not gzip at all'), { 'content-type': 'application/json', 'content-encoding': 'gzip' });
      expect(bad.status).toBe(400);
      expect(((await bad.json()) as Json).error).toContain('gzip body could not be decoded');
      const truncated = zlib.gzipSync(json());
      const cut = await post('simple', truncated.subarray(0, truncated.length - 10), { 'content-type': 'application/json', 'content-encoding': 'gzip' });
      expect(cut.status).toBe(400);

      const br = await post('simple', zlib.brotliCompressSync(json()), { 'content-type': 'application/json', 'content-encoding': 'br' });
      expect(br.status).toBe(415);
      expect(((await br.json()) as Json).error).toContain("'br'");

      const bomb = zlib.gzipSync(Buffer.alloc(16 * 1024 * 1024, 0x20)); // 16 MiB of spaces in ~16 KiB
      expect(bomb.length).toBeLessThan(BODY_LIMIT);
      const boom = await post('simple', bomb, { 'content-type': 'application/json', 'content-encoding': 'gzip' });
      expect(boom.status).toBe(413);
      expect(((await boom.json()) as Json).error).toContain(`limit of ${BODY_LIMIT} bytes`);
      // Still serving.
      expect((await post('simple', json(), { 'content-type': 'application/json' })).status).toBe(200);
    });
  });

  describe('model repository extension', () => {
    test('advertised; index lists every model with its state, and {"ready": true} filters', async () => {
      expect((await getJson(`${b.url}/v2`)).extensions).toContain('model_repository');
      const index = await postJson(`${b.url}/v2/repository/index`, {});
      expect(index.status).toBe(200);
      const rows = index.json as unknown as { name: string; version: string; state: string; reason: string }[];
      expect(rows).toEqual(expect.arrayContaining([
        { name: 'simple', version: '1', state: 'READY', reason: '' },
        expect.objectContaining({ name: 'broken', state: expect.not.stringMatching(/^READY$/) }),
      ]));
      const noBody = await fetch(`${b.url}/v2/repository/index`, { method: 'POST' });
      expect(noBody.status).toBe(200);
      expect(((await noBody.json()) as unknown[]).length).toBe(rows.length);
      const ready = (await postJson(`${b.url}/v2/repository/index`, { ready: true })).json as unknown as { name: string; state: string }[];
      expect(ready.every((r) => r.state === 'READY')).toBe(true);
      expect(ready.map((r) => r.name)).not.toContain('broken');
      expect((await postJson(`${b.url}/v2/repository/index`, { ready: 'yes' })).status).toBe(400);
    });

    test('unload, then load again: 503 while unloaded, served after; unknown 404; a failing load 503 with the reason', async () => {
      const unload = await postJson(`${b.url}/v2/repository/models/simple/unload`, {});
      expect(unload).toMatchObject({ status: 200, json: {} });
      const entry = async () => ((await postJson(`${b.url}/v2/repository/index`, {})).json as unknown as { name: string; state: string; reason: string }[]).find((r) => r.name === 'simple')!;
      const state = async () => (await entry()).state;
      expect(await entry()).toMatchObject({ state: 'UNAVAILABLE', reason: expect.stringMatching(/^unloaded/) });
      const refused = await postJson(url('simple'), simpleBody([row(16)], [row(16)]));
      expect(refused.status).toBe(503);
      expect(refused.json.error).toContain('unloaded');

      const load = await fetch(`${b.url}/v2/repository/models/simple/load`, { method: 'POST' });
      expect(load.status).toBe(200);
      expect(await load.json()).toEqual({});
      expect(await state()).toBe('READY');
      expect((await postJson(url('simple'), simpleBody([row(16)], [row(16)]))).status).toBe(200);

      expect((await postJson(`${b.url}/v2/repository/models/nope/load`, {})).status).toBe(404);
      expect((await postJson(`${b.url}/v2/repository/models/nope/unload`, {})).status).toBe(404);
      // A config override may change only fields with a registry field (tests/e2e/triton-load-config.test.ts).
      const config = await postJson(`${b.url}/v2/repository/models/simple/load`, { parameters: { config: '{"backend":"python"}' } });
      expect(config.status).toBe(400);
      expect(config.json.error).toContain("config field 'backend' cannot be changed");

      const failed = await postJson(`${b.url}/v2/repository/models/broken/load`, {});
      expect(failed.status).toBe(503);
      expect(failed.json.error).toMatch(/broken.*(exit|code|7|weights)/i);
    });
  });

  describe('raw body (Inference-Header-Content-Length: 0)', () => {
    const raw = (model: string, body: Buffer) =>
      post(model, body, { 'content-type': 'application/octet-stream', 'inference-header-content-length': '0' });

    test('a fixed-size input: the one variable dimension comes from the byte size; outputs are binary', async () => {
      const values = new Float32Array([1.5, -2, 3.25]);
      const res = await raw('echo', Buffer.from(values.buffer));
      expect(res.status).toBe(200);
      const { head, data } = await binaryReply(res);
      expect(head.outputs[0]).toMatchObject({ name: 'OUTPUT0', datatype: 'FP32', shape: [1, 3], parameters: { binary_data_size: 12 } });
      expect(Array.from(new Float32Array(new Uint8Array(data.OUTPUT0).buffer))).toEqual([1.5, -2, 3.25]);
    });

    test('a BYTES input takes the whole body as one element', async () => {
      const res = await raw('strings', Buffer.from('raw bytes, héllo'));
      expect(res.status).toBe(200);
      const { head, data } = await binaryReply(res);
      expect(head.outputs.map((o: Json) => [o.name, o.shape])).toEqual([['UPPER', [1, 1]], ['LENGTH', [1, 1]]]);
      expect(bytesItems(data.UPPER)).toEqual(['RAW BYTES, HéLLO']);
      expect(data.LENGTH.readInt32LE(0)).toBe(Buffer.byteLength('raw bytes, héllo'));
    });

    test('400s that explain: two variable dimensions, two inputs, a ragged size', async () => {
      const twoVar = await raw('image-info', Buffer.alloc(12));
      expect(twoVar.status).toBe(400);
      expect(((await twoVar.json()) as Json).error).toContain('2 dimensions are variable');
      const twoInputs = await raw('simple', Buffer.alloc(64));
      expect(twoInputs.status).toBe(400);
      expect(((await twoInputs.json()) as Json).error).toContain('needs a model with one input');
      const ragged = await raw('echo', Buffer.alloc(7));
      expect(ragged.status).toBe(400);
      expect(((await ragged.json()) as Json).error).toContain('4-byte elements');
    });
  });

  describe('BYTES tensors', () => {
    const words = ['hello', 'wörld', '', 'Tensor Broker 1.0'];

    test('JSON strings in, JSON strings out', async () => {
      const res = await postJson(url('strings'), { id: 's1', inputs: [{ name: 'TEXT', datatype: 'BYTES', shape: [4, 1], data: words }] });
      expect(res.status).toBe(200);
      expect(res.json.id).toBe('s1');
      const out = outputs(res.json);
      expect(out.UPPER).toEqual({ name: 'UPPER', datatype: 'BYTES', shape: [4, 1], data: ['HELLO', 'WöRLD', '', 'TENSOR BROKER 1.0'] });
      expect(out.LENGTH.data).toEqual(words.map((w) => Buffer.byteLength(w)));
      const notString = await postJson(url('strings'), { inputs: [{ name: 'TEXT', datatype: 'BYTES', shape: [1, 1], data: [5] }] });
      expect(notString.status).toBe(400);
    });

    test('length-prefixed binary in, binary out', async () => {
      const data = lengthPrefixed(words);
      const header = Buffer.from(JSON.stringify({
        inputs: [{ name: 'TEXT', datatype: 'BYTES', shape: [4, 1], parameters: { binary_data_size: data.length } }],
        outputs: [{ name: 'UPPER', parameters: { binary_data: true } }, { name: 'LENGTH' }],
      }));
      const res = await post('strings', Buffer.concat([header, data]), { 'inference-header-content-length': String(header.length) });
      expect(res.status).toBe(200);
      const { head, data: out } = await binaryReply(res);
      expect(bytesItems(out.UPPER)).toEqual(['HELLO', 'WöRLD', '', 'TENSOR BROKER 1.0']);
      expect(head.outputs.find((o: Json) => o.name === 'LENGTH').data).toEqual([5, 6, 0, 17]);
      // A length prefix that runs past the data is a 400.
      const broken = Buffer.from(data);
      broken.writeUInt32LE(1000, 0);
      const bad = await post('strings', Buffer.concat([header, broken]), { 'inference-header-content-length': String(header.length) });
      expect(bad.status).toBe(400);
    });
  });

  test('priority: a priority-1 request overtakes queued priority-2 requests', async () => {
    const load = () => b.running.broker.load().find((m) => m.model === 'prio')!;
    await waitFor(() => load().running === 0 && load().queued === 0, 5000, 'prio idle');
    const order: string[] = [];
    const send = (tag: string, priority: number) =>
      postJson(url('prio'), { inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [1, 1], data: [priority] }], parameters: { priority } })
        .then((r) => {
          expect(r.status).toBe(200);
          order.push(tag);
        });
    const first = send('A', 2);
    await waitFor(() => load().running === 1, 5000, 'A running');
    const queued = ['B', 'C', 'D'].map((t) => send(t, 2));
    await waitFor(() => load().queued === 3, 5000, 'B, C, D queued');
    const urgent = send('E', 1);
    await Promise.all([first, ...queued, urgent]);
    expect(order[0]).toBe('A');
    expect(order[1]).toBe('E');
    expect(order.slice(2).sort()).toEqual(['B', 'C', 'D']);
  });

  test('curl as an independent client: binary extension request from a file', async () => {
    const curl = await promisify(execFile)('curl', ['--version']).then(() => true, () => false);
    if (!curl) {
      console.warn('curl is not installed: skipping the curl test');
      return;
    }
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tb-curl-'));
    try {
      const a = new Int32Array(row(16, 100));
      const c = new Int32Array(row(16, 3));
      const header = Buffer.from(JSON.stringify({
        inputs: [
          { name: 'INPUT0', datatype: 'INT32', shape: [1, 16], parameters: { binary_data_size: 64 } },
          { name: 'INPUT1', datatype: 'INT32', shape: [1, 16], parameters: { binary_data_size: 64 } },
        ],
        parameters: { binary_data_output: true },
      }));
      const file = path.join(dir, 'request.bin');
      await writeFile(file, Buffer.concat([header, Buffer.from(a.buffer), Buffer.from(c.buffer)]));
      const headersFile = path.join(dir, 'headers.txt');
      const bodyFile = path.join(dir, 'response.bin');
      await promisify(execFile)('curl', [
        '-sS', '--fail-with-body', '-X', 'POST', url('simple'),
        '-H', 'Content-Type: application/octet-stream',
        '-H', `Inference-Header-Content-Length: ${header.length}`,
        '--data-binary', `@${file}`,
        '-D', headersFile, '-o', bodyFile,
      ]);
      const { readFile } = await import('node:fs/promises');
      const headers = await readFile(headersFile, 'utf8');
      expect(headers).toMatch(/^HTTP\/1\.1 200/);
      const hl = Number(/inference-header-content-length:\s*(\d+)/i.exec(headers)?.[1]);
      expect(hl).toBeGreaterThan(0);
      const { head, data } = splitReply(await readFile(bodyFile), hl);
      expect(head.model_name).toBe('simple');
      const int32 = (buf: Buffer) => Array.from(new Int32Array(new Uint8Array(buf).buffer));
      expect(int32(data.OUTPUT0)).toEqual(Array.from(a, (v, i) => v + c[i]));
      expect(int32(data.OUTPUT1)).toEqual(Array.from(a, (v, i) => v - c[i]));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
