/**
 * REST bridge under hostile input, end to end over real HTTP with real model
 * processes: image resize bombs refused from the header, slow bodies timed
 * out (408, connection closed, memory bounded), bounded error messages, deep
 * JSON, long model names in the KServe error form, exact 64-bit integers
 * through the identity model, and compressed answers.
 */
import net from 'node:net';
import http from 'node:http';
import zlib from 'node:zlib';
import { parse as losslessParse, isLosslessNumber, type LosslessNumber } from 'lossless-json';
import sharp from 'sharp';
import { modelMain, startTestBroker, waitReady, type TestBroker } from '../helpers/broker';

const IDLE_MS = 400;
const TOTAL_MS = 1500;

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Json = Record<string, any>;

/** A small PNG of width x height (a tall or wide one makes the aspect-ratio bombs). */
const png = (width: number, height: number) =>
  sharp({ create: { width, height, channels: 3, background: { r: 9, g: 99, b: 199 } } }).png().toBuffer();

/** Sends raw bytes over one connection; resolves with everything received once the server closes it. */
function rawExchange(port: number, head: string, body: Buffer): Promise<{ text: string; closedAfterMs: number }> {
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    const got: Buffer[] = [];
    socket.on('data', (d) => got.push(d));
    socket.on('error', reject);
    socket.on('close', () => resolve({ text: Buffer.concat(got).toString('latin1'), closedAfterMs: Date.now() - t0 }));
    socket.write(head);
    socket.write(body);
  });
}

/** One request with raw headers; the body undecoded (to see Content-Encoding at work). */
function rawPost(url: string, body: string, headers: Record<string, string>): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('REST bridge limits, process runtime', () => {
  let b: TestBroker;
  let port: number;
  const inferUrl = (model: string, query = '') => `${b.url}/v2/models/${model}/infer${query}`;
  const post = async (model: string, body: Buffer | string, headers: Record<string, string>, query = '') => {
    const res = await fetch(inferUrl(model, query), { method: 'POST', headers, body });
    const text = await res.text();
    let json: Json = {};
    if (res.headers.get('content-type')?.startsWith('application/json')) json = JSON.parse(text) as Json;
    return { status: res.status, text, json };
  };

  beforeAll(async () => {
    b = await startTestBroker({
      config: { bodyIdleTimeoutMs: IDLE_MS, bodyTimeoutMs: TOTAL_MS },
      models: {
        'image-info': { command: ['node', modelMain('image-info')], batch_size: 8 },
        identity: { command: ['node', modelMain('identity')], batch_size: 16 },
      },
    });
    port = b.running.ports.http;
    await Promise.all(['image-info', 'identity'].map((m) => waitReady(b, m)));
  });
  afterAll(() => b?.stop());

  describe('image resize bombs are refused from the header, before decoding', () => {
    test('one side given (the other follows the aspect ratio), fit=outside and fit=inside: 413; RSS stays flat', async () => {
      const tall = await png(2, 300); // 65535 wide -> 9,830,250 high
      const wide = await png(300, 2);
      expect(tall.length).toBeLessThan(1000);
      const bombs: [Buffer, string][] = [
        [tall, '?width=65535'],
        [wide, '?height=65535'],
        [wide, '?width=1&height=65535&fit=outside'],
        [tall, '?width=65535&height=1&fit=outside'],
        [tall, '?width=65535&height=65535&fit=inside'],
        [tall, '?width=65535&height=65535&fit=cover'],
        [tall, '?width=65535&height=65535&fit=fill'],
        [tall, '?width=65535&height=65535&fit=contain'],
      ];
      const rss0 = process.memoryUsage().rss;
      // Several at once, as in the attack (four took the broker to 10 GB).
      const answers = await Promise.all([...bombs, ...bombs].map(([image, query]) => post('image-info', image, { 'content-type': 'image/png' }, query)));
      const rss1 = process.memoryUsage().rss;
      for (const a of answers) {
        expect(a.status).toBe(413);
        expect(a.json.error).toMatch(/over the limit/);
      }
      expect(answers[0].json.error).toContain('2x300');
      expect(rss1 - rss0).toBeLessThan(200 * 1024 * 1024);
      // Sane resizes of the same pictures still work, in every mode.
      const ok = await post('image-info', tall, { 'content-type': 'image/png' }, '?width=20');
      expect(ok.status).toBe(200);
      const out = Object.fromEntries((ok.json.outputs as { name: string; data: number[] }[]).map((o) => [o.name, o.data]));
      expect(out.WIDTH).toEqual([20]);
      expect(out.HEIGHT).toEqual([3000]);
      const outside = await post('image-info', wide, { 'content-type': 'image/png' }, '?width=10&height=4&fit=outside');
      expect(outside.status).toBe(200);
    });

    test('a small upload does not wait behind big decodes (they have their own lane)', async () => {
      const big = await png(4000, 4000); // small to send, 48 M elements to decode
      const small = await png(8, 8);
      const order: string[] = [];
      const send = (name: string, image: Buffer) => post('image-info', image, { 'content-type': 'image/png' }).then((r) => {
        order.push(name);
        return r.status;
      });
      const bigs = [1, 2, 3, 4].map((i) => send(`big${i}`, big));
      // The small one is sent once the broker is busy decoding the big ones.
      const statuses = await Promise.all([...bigs, send('small', small)]);
      expect(statuses).toEqual([200, 200, 200, 200, 200]);
      expect(order.indexOf('small')).toBeLessThan(order.length - 1);
    });

    test('a multipart of many images whose sum exceeds the limit is refused before any decode', async () => {
      const form = new FormData();
      const image = await png(2, 300);
      for (let i = 0; i < 40; i++) form.append(`f${i}`, new Blob([image], { type: 'image/png' }), `${i}.png`);
      // 40 x 100 x 15000 x 3 elements: each alone under the limit, together far over.
      const res = await fetch(inferUrl('image-info', '?width=100'), { method: 'POST', body: form });
      expect(res.status).toBe(413);
      expect(((await res.json()) as Json).error).toMatch(/images .* over the limit/);
    });
  });

  describe('request bodies must keep coming', () => {
    test('20 stalled bodies each get 408 and a closed connection; what they announced is never allocated', async () => {
      const announced = 60 * 1024 * 1024;
      const head = `POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${announced}\r\n\r\n`;
      const external0 = process.memoryUsage().arrayBuffers;
      const sockets: Promise<{ text: string; closedAfterMs: number }>[] = [];
      for (let i = 0; i < 20; i++) sockets.push(rawExchange(port, head, Buffer.alloc(64 * 1024, 0x20)));
      // While they are all stalled, the broker holds what was sent (20 x 64 KiB), not 20 x 60 MB: watch the peak.
      let peak = 0;
      const sampler = setInterval(() => {
        peak = Math.max(peak, process.memoryUsage().arrayBuffers - external0);
      }, 10);
      const results = await Promise.all(sockets).finally(() => clearInterval(sampler));
      const held = peak;
      expect(held).toBeLessThan(200 * 1024 * 1024);
      for (const r of results) {
        expect(r.text).toMatch(/^HTTP\/1\.1 408 /);
        expect(r.text.toLowerCase()).toContain('connection: close');
        expect(r.text).toContain('{"error":"no part of the request body arrived for 400 ms"}');
        expect(r.closedAfterMs).toBeLessThan(10_000);
      }
      // Still serving.
      const ok = await post('identity', JSON.stringify({ inputs: [{ name: 'IN_INT32', datatype: 'INT32', shape: [1, 1], data: [7] }], outputs: [{ name: 'OUT_INT32' }] }), { 'content-type': 'application/json' });
      expect(ok.status).toBe(200);
    });

    test('a body trickling a byte at a time hits the whole-body timeout', async () => {
      const t0 = Date.now();
      const result = await new Promise<string>((resolve, reject) => {
        const socket = net.connect(port, '127.0.0.1');
        const got: Buffer[] = [];
        // Faster than the idle timeout, so only the total one can end it.
        const timer = setInterval(() => socket.writable && socket.write(' '), IDLE_MS / 4);
        socket.on('data', (d) => got.push(d));
        socket.on('error', reject);
        socket.on('close', () => {
          clearInterval(timer);
          resolve(Buffer.concat(got).toString());
        });
        socket.write('POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n');
      });
      expect(result).toMatch(/^HTTP\/1\.1 408 /);
      expect(result).toContain(`not complete within ${TOTAL_MS} ms`);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(TOTAL_MS - 50);
    });
  });

  describe('errors stay small and in the KServe form', () => {
    test('a 5 MB name, datatype or element is not echoed whole', async () => {
      const huge = 'x'.repeat(5 * 1024 * 1024);
      const bodies = [
        { inputs: [{ name: huge, datatype: 'INT32', shape: [1, 1], data: [1] }] },
        { inputs: [{ name: 'IN_INT32', datatype: huge, shape: [1, 1], data: [1] }] },
        { inputs: [{ name: 'IN_INT32', datatype: 'INT32', shape: [1, 1], data: [huge] }] },
      ];
      for (const body of bodies) {
        const res = await post('identity', JSON.stringify(body), { 'content-type': 'application/json' });
        expect(res.status).toBe(400);
        expect(res.text.length).toBeLessThan(2000);
        expect(res.json.error).toMatch(/more characters/);
      }
      const notJson = await post('identity', `{"inputs": ${huge}`, { 'content-type': 'application/json' });
      expect(notJson.status).toBe(400);
      expect(notJson.text.length).toBeLessThan(3000);
    });

    test('data nested 11,000 deep is a 400, with or without a long integer in the body', async () => {
      const deep = '['.repeat(11_000) + '1' + ']'.repeat(11_000);
      for (const extra of ['', ', "id": 12345678901234567890']) {
        const body = `{"inputs": [{"name": "IN_INT32", "datatype": "INT32", "shape": [1, 1], "data": ${deep}}]${extra}}`;
        const res = await post('identity', body, { 'content-type': 'application/json' });
        expect(res.status).toBe(400);
        expect(res.json.error).toMatch(/nested/);
      }
    });

    test('model names of 101 to 128 characters get a KServe 404; longer paths a KServe 414', async () => {
      for (const n of [101, 120, 128]) {
        const res = await fetch(`${b.url}/v2/models/${'m'.repeat(n)}`);
        expect(res.status).toBe(404);
        expect(Object.keys((await res.json()) as Json)).toEqual(['error']);
      }
      const res = await fetch(`${b.url}/v2/models/${'m'.repeat(5000)}/ready`);
      expect(res.status).toBe(414);
      const json = (await res.json()) as Json;
      expect(Object.keys(json)).toEqual(['error']);
      expect(json.error.length).toBeLessThan(400);
    });
  });

  describe('64-bit integers are exact in JSON, both ways (identity model)', () => {
    const INT64 = ['-9223372036854775808', '9223372036854775807', '4611686018427387907', '-4611686018427387907', '9007199254740993', '0'];
    const UINT64 = ['18446744073709551615', '9223372036854775808', '4611686018427387907', '9007199254740993', '1', '0'];
    const body = (dt: string, values: string[]) => `{"id": "x", "inputs": [{"name": "IN_${dt}", "datatype": "${dt}", "shape": [2, 3], "data": [${values.join(', ')}]}], "outputs": [{"name": "OUT_${dt}"}]}`;
    /** Output values as exact decimal strings. */
    const exactValues = (text: string, name: string) => {
      const json = losslessParse(text) as Json;
      const out = (json.outputs as { name: string; data: LosslessNumber[] }[]).find((o) => o.name === name);
      return out?.data.map((v) => (isLosslessNumber(v) ? v.toString() : String(v)));
    };

    test('INT64 and UINT64 extremes come back digit for digit (JSON and binary-extension headers)', async () => {
      for (const [dt, values] of [['INT64', INT64], ['UINT64', UINT64]] as const) {
        const res = await post('identity', body(dt, values), { 'content-type': 'application/json' });
        expect(res.status).toBe(200);
        expect(exactValues(res.text, `OUT_${dt}`)).toEqual(values);
        expect(res.text).toContain(values[0]);
        // The same body as the JSON header of the binary extension.
        const header = Buffer.from(body(dt, values));
        const bin = await post('identity', header, { 'content-type': 'application/octet-stream', 'inference-header-content-length': String(header.length) });
        expect(bin.status).toBe(200);
        expect(exactValues(bin.text, `OUT_${dt}`)).toEqual(values);
      }
      // Binary outputs of the same values: the bytes themselves.
      const res = await fetch(inferUrl('identity'), { method: 'POST', body: body('INT64', INT64).replace('"id": "x"', '"parameters": {"binary_data_output": true}'), headers: { 'content-type': 'application/json' } });
      expect(res.status).toBe(200);
      const raw = Buffer.from(await res.arrayBuffer());
      const data = raw.subarray(Number(res.headers.get('inference-header-content-length')));
      expect(Array.from(new BigInt64Array(new Uint8Array(data).buffer), String)).toEqual(INT64);
    });

    test('out of range per datatype is a 400 naming the element', async () => {
      const cases: [string, string[]][] = [
        ['INT64', ['9223372036854775808', '0', '0', '0', '0', '0']],
        ['INT64', ['-9223372036854775809', '0', '0', '0', '0', '0']],
        ['UINT64', ['18446744073709551616', '0', '0', '0', '0', '0']],
        ['UINT64', ['-1', '0', '0', '0', '0', '0']],
        ['INT32', ['12345678901234567890', '0', '0', '0', '0', '0']],
      ];
      for (const [dt, values] of cases) {
        const res = await post('identity', body(dt, values), { 'content-type': 'application/json' });
        expect(res.status).toBe(400);
        // INT32 is never read exactly: its message may show the value rounded.
        expect(res.json.error).toContain(dt === 'INT32' ? 'element 0 (' : `element 0 (${values[0]})`);
      }
    });

    test('FP64 data with long integer literals still parses as numbers', async () => {
      const res = await post('identity', body('FP64', ['12345678901234567890', '1.5', '0.30000000000000004', '1e300', '-2', '3']), { 'content-type': 'application/json' });
      expect(res.status).toBe(200);
      const out = (JSON.parse(res.text).outputs as { data: number[] }[])[0].data;
      expect(out).toEqual([12345678901234567890, 1.5, 0.30000000000000004, 1e300, -2, 3]);
    });
  });

  describe('responses are compressed when the client asks', () => {
    const outputs = [{ name: 'OUT_INT32' }];
    const big = JSON.stringify({ inputs: [{ name: 'IN_INT32', datatype: 'INT32', shape: [1, 2000], data: Array.from({ length: 2000 }, (_, i) => i % 7) }], outputs });
    const small = JSON.stringify({ inputs: [{ name: 'IN_INT32', datatype: 'INT32', shape: [1, 2], data: [1, 2] }], outputs });

    test('gzip and deflate above the threshold; identical content once decoded', async () => {
      const plain = await rawPost(inferUrl('identity'), big, {});
      expect(plain.headers['content-encoding']).toBeUndefined();
      const gz = await rawPost(inferUrl('identity'), big, { 'accept-encoding': 'gzip' });
      expect(gz.status).toBe(200);
      expect(gz.headers['content-encoding']).toBe('gzip');
      expect(gz.body.length).toBeLessThan(plain.body.length / 2);
      expect(zlib.gunzipSync(gz.body).toString()).toBe(plain.body.toString());
      const df = await rawPost(inferUrl('identity'), big, { 'accept-encoding': 'deflate' });
      expect(df.headers['content-encoding']).toBe('deflate');
      expect(zlib.inflateSync(df.body).toString()).toBe(plain.body.toString());
      // Metadata answers too, when large enough; binary-extension answers as well.
      const bin = await rawPost(inferUrl('identity'), big.replace('"inputs"', '"parameters": {"binary_data_output": true}, "inputs"'), { 'accept-encoding': 'gzip' });
      expect(bin.headers['content-type']).toBe('application/octet-stream');
      expect(bin.headers['content-encoding']).toBe('gzip');
    });

    test('small answers and clients that do not ask stay uncompressed', async () => {
      const res = await rawPost(inferUrl('identity'), small, { 'accept-encoding': 'gzip, deflate' });
      expect(res.status).toBe(200);
      expect(res.headers['content-encoding']).toBeUndefined();
      expect(JSON.parse(res.body.toString()).outputs[0].data).toEqual([1, 2]);
    });
  });
});
