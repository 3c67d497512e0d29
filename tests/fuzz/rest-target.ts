/**
 * The REST bridge as a fuzz target: generated and mutated KServe JSON
 * bodies, binary-extension bodies (with right and wrong
 * Inference-Header-Content-Length), raw bodies, image uploads (valid
 * pictures, mutated bytes, resize bombs), multipart forms, compressed bodies,
 * odd headers and paths, against a broker serving `identity` and `image-info`.
 */
import http from 'node:http';
import zlib from 'node:zlib';
import fc from 'fast-check';
import sharp from 'sharp';
import { DATATYPES } from '../../proto/tensor';
import { mutatedBytes, nastyJsonText, type FuzzTarget, type Sent } from './harness';

export interface RestCase {
  method: string;
  path: string;
  headers: Record<string, string>;
  body?: Buffer;
}

/** Small valid pictures of each accepted format (and one GIF, refused with 415). */
export async function fuzzImages(): Promise<Buffer[]> {
  const base = () => sharp({ create: { width: 12, height: 7, channels: 3, background: { r: 200, g: 30, b: 60 } } });
  return Promise.all([base().png().toBuffer(), base().jpeg().toBuffer(), base().webp().toBuffer(), base().gif().toBuffer(),
    sharp({ create: { width: 2, height: 300, channels: 4, background: { r: 1, g: 2, b: 3, alpha: 0.5 } } }).png().toBuffer()]);
}

const MODELS = ['identity', 'image-info', 'nope', '', 'identity/versions/1', 'identity/versions/9', 'm'.repeat(120), 'm'.repeat(2000), '..', '%zz', '%00', 'ümlaut', 'a b'];

const modelPath = fc.oneof(
  { weight: 10, arbitrary: fc.constant('identity') },
  { weight: 6, arbitrary: fc.constantFrom(...MODELS) },
  { weight: 1, arbitrary: fc.string({ maxLength: 40 }).map(encodeURIComponent) },
);

const QUERY = fc.dictionary(
  fc.constantFrom('width', 'height', 'fit', 'input', 'timeout', 'priority', 'fps', 'sequence_id', 'x'),
  fc.oneof(fc.constantFrom('1', '8', '65535', '65536', '0', '-3', 'cover', 'outside', 'inside', 'fill', 'contain', 'squash', 'IMAGE', 'IN_INT32', ''), fc.string({ maxLength: 12 })),
  { maxKeys: 3 },
).map((q) => {
  const s = new URLSearchParams(q).toString();
  return s ? `?${s}` : '';
});

/** A valid-looking input for the identity model (IN_<DT>, [rows, cols]) or a wrong one. */
const tensorJson = fc.record({
  name: fc.oneof(fc.constantFrom(...DATATYPES.map((d) => `IN_${d}`)), fc.constantFrom('IN_NOPE', '', 'IMAGE'), fc.string({ maxLength: 20 })),
  datatype: fc.oneof({ weight: 6, arbitrary: fc.constantFrom(...DATATYPES) }, { weight: 1, arbitrary: fc.constantFrom('INT', 'fp32', '', 'STRING') }),
  shape: fc.oneof({ weight: 4, arbitrary: fc.tuple(fc.integer({ min: 1, max: 3 }), fc.integer({ min: 1, max: 4 })).map((s) => s as number[]) },
    { weight: 1, arbitrary: fc.array(fc.integer({ min: -2, max: 70_000 }), { maxLength: 5 }) }),
  values: fc.oneof(
    fc.array(fc.integer({ min: -300, max: 300 }), { maxLength: 12 }),
    fc.array(fc.double(), { maxLength: 12 }),
    fc.array(fc.boolean(), { maxLength: 12 }),
    fc.array(fc.string({ maxLength: 8 }), { maxLength: 12 }),
    fc.array(nastyJsonText.map((raw) => ({ raw })), { maxLength: 3 }),
  ),
  binarySize: fc.option(fc.integer({ min: -1, max: 64 }), { nil: undefined }),
});

/** JSON text of a generated value; `{raw}` is JSON text already (long integers, deep nesting, odd literals). */
const text = (v: unknown): string => (v !== null && typeof v === 'object' && 'raw' in v ? (v as { raw: string }).raw : JSON.stringify(v) ?? 'null');

/** KServe JSON text: built as text so long integers, deep nesting and odd literals survive. */
const kserveText = fc.record({
  inputs: fc.array(tensorJson, { minLength: 0, maxLength: 3 }),
  outputs: fc.option(fc.array(fc.oneof(fc.constantFrom(...DATATYPES.map((d) => `OUT_${d}`)), fc.string({ maxLength: 10 })), { maxLength: 3 }), { nil: undefined }),
  binaryOut: fc.boolean(),
  id: fc.option(fc.oneof(fc.string({ maxLength: 10 }), nastyJsonText.map((raw) => ({ raw }))), { nil: undefined }),
  params: fc.dictionary(fc.constantFrom('timeout', 'priority', 'sequence_id', 'sequence_start', 'sequence_end', 'binary_data_output', 'x'),
    fc.oneof(fc.constantFrom('0', '1', 'true', '"7"', '-1', '1000000', '99999999999999999999'), nastyJsonText), { maxKeys: 3 }),
}).map(({ inputs, outputs, binaryOut, id, params }) => {
  // Outputs default to every input's twin, so well-formed bodies reach the model (identity answers only what it got).
  const outs = outputs ?? inputs.map((t) => t.name.replace(/^IN_/, 'OUT_'));
  const p = Object.entries({ ...params, ...(binaryOut ? { binary_data_output: 'true' } : {}) }).map(([k, v]) => `"${k}": ${v}`).join(', ');
  const tensors = inputs.map((t) => {
    const size = t.binarySize === undefined ? '' : `, "parameters": {"binary_data_size": ${t.binarySize}}`;
    const data = t.binarySize === undefined ? `, "data": [${(t.values as unknown[]).map(text).join(', ')}]` : '';
    return `{"name": ${JSON.stringify(t.name)}, "datatype": ${JSON.stringify(t.datatype)}, "shape": ${JSON.stringify(t.shape)}${size}${data}}`;
  });
  return `{${id !== undefined ? `"id": ${text(id)}, ` : ''}"parameters": {${p}}, ` +
    `"inputs": [${tensors.join(', ')}], "outputs": [${outs.map((o) => `{"name": ${JSON.stringify(o)}}`).join(', ')}]}`;
});

/** A correct identity request: INT32 rows, the matching output. */
const validIdentity = fc.array(fc.integer({ min: -1000, max: 1000 }), { minLength: 1, maxLength: 8 })
  .map((v) => `{"inputs": [{"name": "IN_INT32", "datatype": "INT32", "shape": [1, ${v.length}], "data": [${v.join(',')}]}], "outputs": [{"name": "OUT_INT32"}]}`);

const CONTENT_TYPES = ['application/json', '', 'application/octet-stream', 'text/plain', 'image/png', 'image/jpeg', 'image/webp', 'image/gif',
  'video/mp4', 'multipart/form-data; boundary=xyz', 'multipart/form-data', 'application/x-www-form-urlencoded', 'application/vnd.x+json'];

function multipart(parts: { name: string; type: string; filename?: string; bytes: Buffer }[], boundary: string): Buffer {
  const chunks: Buffer[] = [];
  for (const p of parts) {
    const disp = `form-data; name="${p.name}"${p.filename !== undefined ? `; filename="${p.filename}"` : ''}`;
    chunks.push(Buffer.from(`--${boundary}\r\nContent-Disposition: ${disp}\r\nContent-Type: ${p.type}\r\n\r\n`), p.bytes, Buffer.from('\r\n'));
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return Buffer.concat(chunks);
}

/** Every generated REST request. */
export function restRequests(images: Buffer[]): fc.Arbitrary<RestCase> {
  const image = fc.oneof({ weight: 3, arbitrary: fc.constantFrom(...images) }, { weight: 2, arbitrary: mutatedBytes(fc.constantFrom(...images)) });
  const headersExtra = fc.record({
    'accept-encoding': fc.option(fc.constantFrom('gzip', 'deflate', 'br', 'gzip;q=0, deflate', '*', 'identity'), { nil: undefined }),
    'content-encoding': fc.option(fc.constantFrom('gzip', 'deflate', 'br', 'identity', 'gzip, gzip', 'x'), { nil: undefined }),
    'x-request-id': fc.option(fc.string({ maxLength: 30 }).filter((s) => /^[\x20-\x7e]*$/.test(s)), { nil: undefined }),
  }, { requiredKeys: [] });
  const clean = (h: Record<string, string | undefined>) => Object.fromEntries(Object.entries(h).filter(([, v]) => v !== undefined)) as Record<string, string>;
  const infer = (model: string, query = '') => `/v2/models/${model}/infer${query}`;

  const jsonCase = fc.tuple(modelPath, fc.oneof({ weight: 2, arbitrary: validIdentity }, { weight: 5, arbitrary: kserveText }), fc.constantFrom(...CONTENT_TYPES.slice(0, 3)), headersExtra)
    .map(([m, text, type, extra]): RestCase => ({ method: 'POST', path: infer(m), headers: clean({ 'content-type': type, ...extra, 'content-encoding': undefined }), body: Buffer.from(text) }));

  const mutatedJson = fc.tuple(modelPath, mutatedBytes(fc.oneof(validIdentity, kserveText).map((t) => Buffer.from(t))))
    .map(([m, body]): RestCase => ({ method: 'POST', path: infer(m), headers: { 'content-type': 'application/json' }, body }));

  const binaryCase = fc.tuple(modelPath, kserveText, fc.uint8Array({ maxLength: 256 }), fc.oneof(fc.constant('right'), fc.constantFrom('0', '-1', '99999999', 'abc', ' 3', '')))
    .map(([m, text, bin, hl]): RestCase => {
      const head = Buffer.from(text);
      return {
        method: 'POST',
        path: infer(m),
        headers: { 'content-type': 'application/octet-stream', 'inference-header-content-length': hl === 'right' ? String(head.length) : hl },
        body: Buffer.concat([head, Buffer.from(bin)]),
      };
    });

  const imageCase = fc.tuple(fc.constantFrom('image-info', 'identity', 'nope'), QUERY, image, fc.constantFrom('image/png', 'image/jpeg', 'image/webp', 'image/jpg', 'application/octet-stream'))
    .map(([m, q, bytes, type]): RestCase => ({ method: 'POST', path: infer(m, q), headers: { 'content-type': type }, body: bytes }));

  const multipartCase = fc.tuple(fc.constantFrom('image-info', 'identity'), QUERY,
    fc.array(fc.record({ name: fc.constantFrom('a', 'b', 'file'), type: fc.constantFrom('image/png', 'text/plain', 'video/mp4', 'application/json', ''), filename: fc.option(fc.constantFrom('x.png', 'y.jpg', ''), { nil: undefined }), bytes: image }), { minLength: 0, maxLength: 4 }),
    fc.boolean())
    .map(([m, q, parts, broken]): RestCase => {
      let body = multipart(parts, 'fuzzboundary');
      if (broken) body = body.subarray(0, Math.floor(body.length / 2));
      return { method: 'POST', path: infer(m, q), headers: { 'content-type': 'multipart/form-data; boundary=fuzzboundary' }, body };
    });

  const compressedCase = fc.tuple(fc.oneof(validIdentity, kserveText), fc.constantFrom('gzip', 'deflate', 'deflate-raw'), fc.boolean())
    .map(([text, enc, corrupt]): RestCase => {
      let body = enc === 'gzip' ? zlib.gzipSync(text) : enc === 'deflate' ? zlib.deflateSync(text) : zlib.deflateRawSync(text);
      if (corrupt) body = Buffer.concat([body.subarray(0, body.length >> 1), Buffer.from('garbage')]);
      return { method: 'POST', path: infer('identity'), headers: { 'content-type': 'application/json', 'content-encoding': enc === 'gzip' ? 'gzip' : 'deflate' }, body };
    });

  const randomCase = fc.tuple(fc.constantFrom('POST', 'GET', 'PUT', 'DELETE'), fc.oneof(modelPath.map((m) => infer(m)), fc.constantFrom('/v2', '/v2/health/ready', '/v2/health/live', '/v2/models/stats', '/v2/repository/index', '/v2/models/identity/config', '/v2/models/identity/stats', '/v2/models/image-info', '/v2/models/identity/sequences', '/nope', '/v2/models//infer', '/v2/models/identity/infer/extra'), fc.string({ maxLength: 30 }).map((s) => `/${encodeURIComponent(s)}`)),
    fc.constantFrom(...CONTENT_TYPES), fc.option(fc.uint8Array({ maxLength: 512 }).map((u) => Buffer.from(u)), { nil: undefined }), headersExtra)
    .map(([method, path, type, body, extra]): RestCase => ({ method, path, headers: clean({ 'content-type': type, ...extra }), body: method === 'GET' ? undefined : body }));

  // Well-formed requests, so the success paths are exercised between the bad ones.
  const validCase = fc.oneof(
    validIdentity.map((t): RestCase => ({ method: 'POST', path: infer('identity'), headers: { 'content-type': 'application/json' }, body: Buffer.from(t) })),
    fc.constantFrom(...images.slice(0, 3)).map((bytes): RestCase => ({ method: 'POST', path: infer('image-info', '?width=16&height=16'), headers: { 'content-type': 'image/png' }, body: bytes })),
  );

  return fc.oneof(
    { weight: 3, arbitrary: validCase },
    { weight: 6, arbitrary: jsonCase },
    { weight: 3, arbitrary: mutatedJson },
    { weight: 3, arbitrary: binaryCase },
    { weight: 3, arbitrary: imageCase },
    { weight: 1, arbitrary: multipartCase },
    { weight: 1, arbitrary: compressedCase },
    { weight: 2, arbitrary: randomCase },
  );
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });

/** Sends one case; the outcome from the status, a timeout, or a connection error. */
export function sendRest(base: string, c: RestCase, hangMs: number): Promise<Sent> {
  return new Promise((resolve) => {
    let req: http.ClientRequest;
    try {
      req = http.request(`${base}${c.path}`, { method: c.method, headers: { ...c.headers, ...(c.body ? { 'content-length': String(c.body.length) } : {}) }, agent }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (d: Buffer) => chunks.length < 4 && chunks.push(d));
        res.on('end', () => {
          clearTimeout(timer);
          const status = res.statusCode ?? 0;
          const text = Buffer.concat(chunks).toString('utf8', 0, 300);
          // Every error answer has the KServe form.
          if (status >= 400 && !text.startsWith('{"error":')) return resolve({ outcome: 'server-error', status: String(status), detail: `not a KServe error body: ${text}` });
          const outcome = status < 400 ? 'ok' : status < 500 ? 'client-error' : status === 504 ? 'deadline'
            : status === 500 && text.startsWith('{"error":"model error: ') ? 'model-error' : 'server-error';
          resolve({ outcome, status: String(status), detail: outcome === 'server-error' ? text : undefined });
        });
        res.on('error', (e) => resolve({ outcome: 'dropped', detail: e.message }));
      });
    } catch (e) {
      return resolve({ outcome: 'not-sent', detail: (e as Error).message });
    }
    const timer = setTimeout(() => {
      req.destroy();
      resolve({ outcome: 'hang', detail: `no answer within ${hangMs} ms` });
    }, hangMs);
    req.on('error', (e) => {
      clearTimeout(timer);
      resolve({ outcome: 'dropped', detail: e.message });
    });
    req.end(c.body);
  });
}

export function restTarget(base: string, images: Buffer[]): FuzzTarget<RestCase> {
  return {
    name: 'rest',
    requests: restRequests(images),
    send: (c, hangMs) => sendRest(base, c, hangMs),
    describe: (c) => {
      const body = c.body === undefined ? '' : ` body(${c.body.length}) ${JSON.stringify(c.body.toString('latin1', 0, 160))}`;
      return `${c.method} ${c.path.slice(0, 200)} ${JSON.stringify(c.headers).slice(0, 300)}${body}`;
    },
    stillServing: async () => {
      const res = await fetch(`${base}/v2/models/identity/infer`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ inputs: [{ name: 'IN_INT64', datatype: 'INT64', shape: [1, 2], data: [4611686018427387907n.toString(), 5] }], outputs: [{ name: 'OUT_INT64' }] }).replace('"4611686018427387907"', '4611686018427387907'),
      });
      const text = await res.text();
      return res.status === 200 && text.includes('[4611686018427387907,5]');
    },
  };
}

/** The models.yaml entries the REST target expects (compiled examples). */
export function restFuzzModels(modelMain: (m: string) => string): Record<string, unknown> {
  return {
    identity: { command: ['node', modelMain('identity')], batch_size: 16 },
    'image-info': { command: ['node', modelMain('image-info')], batch_size: 8 },
  };
}
