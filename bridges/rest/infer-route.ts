/**
 * POST /v2/models/{m}[/versions/{v}]/infer. The body form is picked from the
 * headers by one ordered table; each form turns the body into one request.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Readable } from 'node:stream';
import type { BrokerApi } from '../../core/broker';
import { BrokerError } from '../../core/errors';
import { requestOptions } from '../shared/parameters';
import type { BodyTimeouts } from './body-timeout';
import { encodeInferResult, parseInferBody, splitBinaryBody, type ParsedInfer } from './infer-body';
import { readJson, stringifyJson } from './json-body';
import { bodyEncoding, IMAGE_TYPES, isJsonType, mediaType, UnsupportedMediaType } from './media';
import { rawInputTensor } from './raw-input';
import { abortOnClose, both, type ModelParams } from './route-helpers';
import { imageRequest, readUploadParts, videoReply } from './uploads';
import { VIDEO_TYPES } from './video';
import { inferExtended } from '../shared/extended-infer';
import type { SharedMemoryRegistry } from '../shared/shm';
import { stageTimer } from '../../core/stage-timings';
import { pooledOf } from './body-pool';

const PARSE = stageTimer('rest', 'parse');
const ENCODE = stageTimer('rest', 'encode');
const WRITE = stageTimer('rest', 'write');

export interface InferRouteOptions {
  broker: BrokerApi;
  bodyLimit: number;
  maxElements: number;
  maxVideoBytes: number;
  timeouts: BodyTimeouts;
  ffmpeg?: string;
  /** System shared memory regions (inputs read from, outputs written to them). */
  shm?: SharedMemoryRegistry;
}

/** What a body form needs to know about one request. */
interface BodyContext {
  req: FastifyRequest<{ Params: ModelParams }>;
  body: Buffer;
  type: string;
  /** Inference-Header-Content-Length, when given. */
  headerLength?: string;
  query: Record<string, unknown>;
  id: string;
}

interface BodyForm {
  name: string;
  matches(c: BodyContext): boolean;
  parse(c: BodyContext): ParsedInfer | Promise<ParsedInfer>;
}

/**
 * The forms of a request held in memory, tried in order (streamed forms,
 * video and multipart, are picked before the body is read).
 */
function bodyForms(o: Pick<InferRouteOptions, 'broker' | 'maxElements'>): BodyForm[] {
  // Waits through a cold start: decoding these forms needs the model's input metadata.
  const meta = (c: BodyContext) => o.broker.awaitMetadata(c.req.params.model, c.req.params.version);
  return [
    {
      name: 'raw binary (Inference-Header-Content-Length: 0): the body is the one input',
      matches: (c) => c.headerLength !== undefined && c.headerLength.trim() === '0',
      parse: async (c) => ({ request: { id: c.id, inputs: [rawInputTensor(await meta(c), c.body)], ...requestOptions(c.query) }, binaryOutputs: new Set(['*']) }),
    },
    {
      name: 'binary extension: a JSON header, then raw tensor bytes',
      matches: (c) => c.headerLength !== undefined,
      parse: (c) => {
        const { header, binary } = splitBinaryBody(c.body, Number(c.headerLength));
        return readJson(header, 'the JSON header', (h) => parseInferBody(h, binary, c.id));
      },
    },
    {
      name: 'one image (JPEG, PNG, WebP)',
      matches: (c) => IMAGE_TYPES.has(c.type),
      parse: async (c) => imageRequest(await meta(c), [{ label: 'the body', bytes: c.body }], c.query, c.id, o.maxElements),
    },
    {
      name: 'KServe v2 JSON',
      matches: (c) => isJsonType(c.type),
      parse: (c) => readJson(c.body.toString('utf8'), 'the body', (h) => parseInferBody(h, undefined, c.id)),
    },
  ];
}

const unsupported = (type: string) =>
  new UnsupportedMediaType(`Content-Type '${type.slice(0, 100)}' is not accepted: send application/json (KServe v2), ` +
    'the binary extension (Inference-Header-Content-Length), image/jpeg, image/png, image/webp, a video ' +
    `(${[...VIDEO_TYPES].join(', ')}) or multipart/form-data with images or a video`);

/** What reading an infer body needs (the REST bridge's limits). */
export type InferBodyOptions = Pick<InferRouteOptions, 'broker' | 'bodyLimit' | 'maxElements' | 'timeouts'>;

/** A decoded body: one request, or a video upload (a stream, never read here). */
export type InferBody = { parsed: ParsedInfer } | { video: Readable; type: string };

/**
 * Decodes a request body in every form /infer takes (KServe JSON, the binary
 * extension, a raw input, an image, multipart images, a video): one function,
 * so POST …/jobs takes exactly what /infer takes.
 */
export function inferBodyReader(o: InferBodyOptions): (req: FastifyRequest<{ Params: ModelParams }>, query?: Record<string, unknown>) => Promise<InferBody> {
  const forms = bodyForms(o);
  /** `query`: the request options in the query string (default: all of it). */
  return async (req, query = (req.query ?? {}) as Record<string, unknown>) => {
    const { model, version } = req.params;
    const type = mediaType(req.headers['content-type']);
    const id = String(req.id);
    const video = (body: Readable, videoType: string): InferBody => {
      if (bodyEncoding(req.headers['content-encoding']) !== undefined) {
        body.resume();
        throw new UnsupportedMediaType('a video upload cannot have a Content-Encoding (videos are compressed already)');
      }
      return { video: body, type: videoType };
    };
    if (VIDEO_TYPES.has(type)) return video(req.body as Readable, type);
    if (req.isMultipart()) {
      if (bodyEncoding(req.headers['content-encoding']) !== undefined) {
        throw new UnsupportedMediaType('a multipart body cannot have a Content-Encoding (images are compressed already)');
      }
      const parts = await readUploadParts(req, o.bodyLimit, { idleMs: o.timeouts.idleMs, totalMs: o.timeouts.totalMs });
      if ('video' in parts) return video(parts.video, parts.type);
      return { parsed: await imageRequest(await o.broker.awaitMetadata(model, version), parts.images, query, id, o.maxElements) };
    }
    const body = req.body;
    if (!Buffer.isBuffer(body) || body.length === 0) throw new BrokerError('INVALID_ARGUMENT', 'the request has no body');
    const rawLength = req.headers['inference-header-content-length'];
    const c: BodyContext = { req, body, type, headerLength: Array.isArray(rawLength) ? rawLength[0] : rawLength, query, id };
    const form = forms.find((f) => f.matches(c));
    if (!form) throw unsupported(type);
    return { parsed: await form.parse(c) };
  };
}

export async function inferRoute(app: FastifyInstance, o: InferRouteOptions): Promise<void> {
  const { broker } = o;
  const read = inferBodyReader(o);

  both(app, 'POST', '/infer', async (req, reply) => {
    const t0 = performance.now();
    // A lent body (body-pool.ts): this exchange's reference goes when the response is closed (written, or the client left).
    const lease = Buffer.isBuffer(req.body) ? pooledOf(req.body) : undefined;
    if (lease) reply.raw.once('close', lease.releaser());
    const { model, version } = req.params;
    broker.describe(model, version); // 404 before looking at the body
    const body = await read(req);
    if ('video' in body) {
      const query = (req.query ?? {}) as Record<string, unknown>;
      return videoReply(req, reply, { broker, model, version, body: body.video, mediaType: body.type, query, requestId: String(req.id), maxBytes: o.maxVideoBytes, maxElements: o.maxElements, ffmpeg: o.ffmpeg });
    }
    PARSE.since(t0);
    return answer(req, reply, broker, body.parsed, o.shm);
  });
}

/** Runs the request; JSON outputs as JSON (64-bit integers exact), binary ones after the JSON header. */
async function answer(req: FastifyRequest<{ Params: ModelParams }>, reply: FastifyReply, broker: BrokerApi, parsed: ParsedInfer, shm: SharedMemoryRegistry | undefined): Promise<FastifyReply> {
  const { model, version } = req.params;
  const signal = abortOnClose(reply);
  req.log.debug({ model, requestId: parsed.request.id }, 'infer');
  // The link's reference to a lent body: dropped when the core no longer reads the inputs for the link.
  const lease = Buffer.isBuffer(req.body) ? pooledOf(req.body) : undefined;
  let onSent: (() => void) | undefined;
  if (lease) {
    lease.retain();
    onSent = lease.releaser();
  }
  // (Refused before the core saw it, e.g. an unknown shared memory region: onSent never runs and the slab is not reused, only collected.)
  const result = await inferExtended(broker, shm, { ...parsed.request, model, version, signal, ...(onSent ? { onSent } : {}) }, parsed);
  const t0 = performance.now();
  const enc = encodeInferResult(result, parsed.clientId, parsed.binaryOutputs);
  const json = stringifyJson(enc.json);
  if (enc.binary.length === 0) {
    const t1 = ENCODE.since(t0);
    reply.type('application/json; charset=utf-8').send(json);
    WRITE.since(t1);
    return reply;
  }
  const head = Buffer.from(json);
  const body = Buffer.concat([head, ...enc.binary]);
  const t1 = ENCODE.since(t0);
  reply.header('Content-Type', 'application/octet-stream').header('Inference-Header-Content-Length', head.length).send(body);
  WRITE.since(t1);
  return reply;
}
