/**
 * The KServe v2 REST bridge: health, metadata, config, statistics, the model
 * repository, and infer (JSON, binary extension, raw body, image uploads).
 * It knows the broker's BrokerApi only.
 */
import { EXTENSIONS } from '../shared/extensions';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { BrokerApi } from '../../core/broker';
import { BrokerError } from '../../core/errors';
import { tritonConfig, PLATFORM } from '../shared/model-config';
import multipart from '@fastify/multipart';
import { DEFAULT_LIMITS } from '../../core/validate';
import type { ModelMetadata } from '../../core/types';
import { inferExtended } from '../shared/extended-infer';
import type { SharedMemoryRegistry } from '../shared/shm';
import { sharedMemoryRoutes } from './shared-memory';
import { requestOptions } from '../shared/parameters';
import { imageInput, imageOptions, imagesTensor } from './images';
import { encodeInferResult, parseInferBody, splitBinaryBody, type ParsedInfer } from './infer-body';
import { bodyEncoding, IMAGE_TYPES, isJsonType, mediaType, UnsupportedMediaType } from './media';
import { rawBodyParser } from './raw-body';
import { rawInputTensor } from './raw-input';
import { repositoryRoutes } from './repository';
import { inferVideo, VIDEO_TYPES, type VideoRequest } from './video';
import type { Readable } from 'node:stream';

export interface RestOptions {
  broker: BrokerApi;
  version: string;
  /** Largest request body accepted, in bytes (413 beyond); also bounds decompressed and multipart bodies. */
  bodyLimit: number;
  /** Elements per input tensor (the broker's limit); bounds decoded images before they are decoded. Default 64 Mi. */
  maxElements?: number;
  /** Largest video upload in bytes (streamed, never held in memory; 413 beyond). Default 1 GiB. */
  maxVideoBytes?: number;
  /** ffmpeg binary for video uploads (config `ffmpeg`, TB_FFMPEG). */
  ffmpeg?: string;
  /** System shared memory regions, shared with the gRPC bridge (none: the extension answers 400). */
  shm?: SharedMemoryRegistry;
}

/** Extensions of the KServe v2 / Triton protocol this server implements. */

type ModelParams = { model: string; version?: string };

/** Registers `path` and its `/versions/:version` twin. */
function both(app: FastifyInstance, method: 'GET' | 'POST', path: string, handler: (req: FastifyRequest<{ Params: ModelParams }>, reply: FastifyReply) => Promise<unknown>) {
  app.route({ method, url: `/v2/models/:model${path}`, handler });
  app.route({ method, url: `/v2/models/:model/versions/:version${path}`, handler });
}

export async function restRoutes(app: FastifyInstance, opts: RestOptions): Promise<void> {
  const { broker } = opts;
  const maxElements = opts.maxElements ?? DEFAULT_LIMITS.maxElements;
  const maxVideoBytes = opts.maxVideoBytes ?? 1024 * 1024 * 1024;

  // Every body arrives as one Buffer (gzip/deflate undone); JSON is parsed in
  // the handler so the binary extension, raw bodies, images and plain JSON
  // share one path. multipart/form-data is streamed by @fastify/multipart:
  // registered in this context after the catch-all, its parser wins for that type.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { bodyLimit: opts.bodyLimit }, rawBodyParser(opts.bodyLimit));
  // Videos are streamed to ffmpeg as they arrive: the handler gets the request stream itself.
  app.addContentTypeParser([...VIDEO_TYPES], (_req, payload, done) => done(null, payload));
  await app.register(multipart, {
    limits: { fileSize: opts.bodyLimit, files: MAX_IMAGES, fields: 16, fieldSize: 64 * 1024, parts: MAX_IMAGES + 16, headerPairs: 64 },
    // A part is a file when it has a filename or a non-text type (fetch's Blob parts, curl -F x=@file).
    isPartAFile: (_field, contentType, fileName) => fileName !== undefined || (contentType !== undefined && !contentType.startsWith('text/')),
  });

  repositoryRoutes(app, broker);
  sharedMemoryRoutes(app, opts.shm);

  app.get('/v2', async () => ({ name: 'tensorbroker', version: opts.version, extensions: EXTENSIONS }));
  app.get('/v2/health/live', async (_req, reply) => reply.code(200).send());
  app.get('/v2/health/ready', async (_req, reply) => {
    const r = broker.ready();
    if (!r.ready) throw new BrokerError('UNAVAILABLE', r.reason ?? 'not ready');
    return reply.code(200).send();
  });

  app.get('/v2/models/stats', async () => ({ model_stats: broker.stats() }));

  both(app, 'GET', '', async (req) => {
    const { model, version } = req.params;
    const meta = broker.metadata(model, version);
    return {
      name: model,
      versions: [meta.version || broker.describe(model).version],
      platform: PLATFORM,
      inputs: meta.inputs.map(({ name, datatype, shape }) => ({ name, datatype, shape })),
      outputs: meta.outputs.map(({ name, datatype, shape }) => ({ name, datatype, shape })),
    };
  });

  both(app, 'GET', '/ready', async (req, reply) => {
    const r = broker.modelReady(req.params.model, req.params.version);
    if (!r.ready) throw new BrokerError('UNAVAILABLE', `model '${req.params.model}' is not ready: ${r.reason ?? r.phase}`);
    return reply.code(200).send();
  });

  both(app, 'GET', '/config', async (req) => {
    return tritonConfig(broker.describe(req.params.model, req.params.version));
  });

  both(app, 'GET', '/stats', async (req) => ({ model_stats: broker.stats(req.params.model, req.params.version) }));

  // Not KServe: slots, active and backlogged sequences of a stateful model, ends by reason.
  both(app, 'GET', '/sequences', async (req) => broker.sequences(req.params.model, req.params.version));

  both(app, 'POST', '/infer', async (req, reply) => {
    const { model, version } = req.params;
    broker.describe(model, version); // 404 before looking at the body
    const query = (req.query ?? {}) as Record<string, unknown>;
    const type = mediaType(req.headers['content-type']);
    let parsed: ParsedInfer;
    const video = (body: Readable, videoType: string) => {
      if (bodyEncoding(req.headers['content-encoding']) !== undefined) {
        body.resume();
        throw new UnsupportedMediaType('a video upload cannot have a Content-Encoding (videos are compressed already)');
      }
      return videoReply(req, reply, { broker, model, version, body, mediaType: videoType, query, requestId: String(req.id), maxBytes: maxVideoBytes, maxElements, ffmpeg: opts.ffmpeg });
    };
    if (VIDEO_TYPES.has(type)) return video(req.body as Readable, type);
    if (req.isMultipart()) {
      if (bodyEncoding(req.headers['content-encoding']) !== undefined) {
        throw new UnsupportedMediaType('a multipart body cannot have a Content-Encoding (images are compressed already)');
      }
      const parts = await readUploadParts(req, opts.bodyLimit);
      if ('video' in parts) return video(parts.video, parts.type);
      parsed = await imageRequest(await broker.awaitMetadata(model, version), parts.images, query, String(req.id), maxElements);
    } else {
      const body = req.body;
      if (!Buffer.isBuffer(body) || body.length === 0) throw new BrokerError('INVALID_ARGUMENT', 'the request has no body');
      const rawLength = req.headers['inference-header-content-length'];
      const headerLength = Array.isArray(rawLength) ? rawLength[0] : rawLength;
      if (headerLength !== undefined && headerLength.trim() === '0') {
        const input = rawInputTensor(await broker.awaitMetadata(model, version), body);
        parsed = { request: { id: String(req.id), inputs: [input], ...requestOptions(query) }, binaryOutputs: new Set(['*']) };
      } else if (headerLength !== undefined) {
        const { header, binary } = splitBinaryBody(body, Number(headerLength));
        parsed = parseInferBody(header, binary, String(req.id));
      } else if (IMAGE_TYPES.has(type)) {
        parsed = await imageRequest(await broker.awaitMetadata(model, version), [{ label: 'the body', bytes: body }], query, String(req.id), maxElements);
      } else if (!isJsonType(type)) {
        throw new UnsupportedMediaType(`Content-Type '${type}' is not accepted: send application/json (KServe v2), ` +
          'the binary extension (Inference-Header-Content-Length), image/jpeg, image/png, image/webp, a video ' +
          `(${[...VIDEO_TYPES].join(', ')}) or multipart/form-data with images or a video`);
      } else {
        let header: unknown;
        try {
          header = JSON.parse(body.toString('utf8'));
        } catch (e) {
          throw new BrokerError('INVALID_ARGUMENT', `the body is not valid JSON: ${(e as Error).message}`);
        }
        parsed = parseInferBody(header, undefined, String(req.id));
      }
    }
    const aborted = new AbortController();
    reply.raw.on('close', () => {
      if (!reply.raw.writableFinished) aborted.abort();
    });
    req.log.debug({ model, requestId: parsed.request.id }, 'infer');
    const result = await inferExtended(broker, opts.shm, { ...parsed.request, model, version, signal: aborted.signal }, parsed);
    const enc = encodeInferResult(result, parsed.clientId, parsed.binaryOutputs);
    if (enc.binary.length === 0) return reply.send(enc.json);
    const json = Buffer.from(JSON.stringify(enc.json));
    return reply
      .header('Content-Type', 'application/octet-stream')
      .header('Inference-Header-Content-Length', json.length)
      .send(Buffer.concat([json, ...enc.binary]));
  });
}

/** The most images one multipart request may carry (the model's batch size limits it further). */
const MAX_IMAGES = 64;

/**
 * Reads the parts of a multipart body: a video (the first part, when it is
 * one: handed over as a stream, never read here) or image parts, in order, as
 * Buffers, their total bounded by the body limit (413). Parts that are not
 * files are refused: options travel in the query string.
 */
async function readUploadParts(req: FastifyRequest, limit: number): Promise<{ video: Readable; type: string } | { images: { label: string; bytes: Buffer }[] }> {
  const files: { label: string; bytes: Buffer }[] = [];
  let total = 0;
  // Iterated by hand: leaving a for-await would end the iterator and with it a video part's stream.
  const parts = req.parts()[Symbol.asyncIterator]();
  try {
    for (;;) {
      const next = await parts.next();
      if (next.done) break;
      const part = next.value;
      const label = `part ${files.length + 1} ('${part.type === 'file' && part.filename ? part.filename : part.fieldname}')`;
      if (part.type !== 'file') {
        throw new BrokerError('INVALID_ARGUMENT', `multipart ${label} is not a file: options go in the query string (?input=, ?width=, ?height=, ?fit=, ?fps=)`);
      }
      const type = mediaType(part.mimetype);
      if (VIDEO_TYPES.has(type)) {
        if (files.length > 0) throw new BrokerError('INVALID_ARGUMENT', `multipart ${label} is a video after images: send one video, or images only`);
        return { video: part.file, type };
      }
      if (type !== '' && type !== 'application/octet-stream' && !IMAGE_TYPES.has(type)) {
        part.file.resume();
        throw new UnsupportedMediaType(`multipart ${label} is ${type}: uploads take image/jpeg, image/png, image/webp, or one video (${[...VIDEO_TYPES].join(', ')})`);
      }
      const chunks: Buffer[] = [];
      for await (const chunk of part.file as AsyncIterable<Buffer>) {
        total += chunk.length;
        if (total > limit) throw new BrokerError('PAYLOAD_TOO_LARGE', `the multipart body is larger than the limit of ${limit} bytes`);
        chunks.push(chunk);
      }
      if (part.file.truncated) throw new BrokerError('PAYLOAD_TOO_LARGE', `multipart ${label} is larger than the limit of ${limit} bytes`);
      files.push({ label, bytes: Buffer.concat(chunks) });
    }
  } catch (e) {
    if (e instanceof BrokerError || e instanceof UnsupportedMediaType) throw e;
    // busboy's and @fastify/multipart's own errors: limits are 413s, the rest a malformed body.
    const message = (e as Error).message;
    if ((e as { statusCode?: number }).statusCode === 413) throw new BrokerError('PAYLOAD_TOO_LARGE', message);
    throw new BrokerError('INVALID_ARGUMENT', `malformed multipart body: ${message}`);
  }
  return { images: files };
}

/** Runs a video upload; the answer is NDJSON once the first frame's result is ready (errors before that are plain HTTP errors). */
async function videoReply(req: FastifyRequest, reply: FastifyReply, v: Omit<VideoRequest, 'signal'>): Promise<FastifyReply> {
  const aborted = new AbortController();
  reply.raw.on('close', () => {
    if (!reply.raw.writableFinished) aborted.abort();
  });
  req.log.debug({ model: v.model, requestId: v.requestId, type: v.mediaType }, 'video infer');
  const res = await inferVideo({ ...v, signal: aborted.signal });
  return reply
    .header('Content-Type', 'application/x-ndjson')
    .header('Cache-Control', 'no-store')
    .header('X-Sequence-Id', res.sequenceId)
    .send(res.stream);
}

/** An infer request from uploaded images: one UINT8 [N, H, W, 3] tensor, outputs as JSON. */
async function imageRequest(
  meta: ModelMetadata,
  files: { label: string; bytes: Buffer }[],
  query: Record<string, unknown>,
  id: string,
  maxElements: number,
): Promise<ParsedInfer> {
  const options = imageOptions(query);
  const spec = imageInput(meta, options.input);
  const tensor = await imagesTensor(files, spec, options, maxElements);
  return { request: { id, inputs: [tensor], ...requestOptions(query) }, binaryOutputs: new Set() };
}
