/**
 * The KServe v2 REST bridge, as one fastify plugin made of route-group
 * plugins: health (health-routes.ts), per-model metadata (model-routes.ts),
 * the model repository (repository.ts) and infer (infer-route.ts). This file
 * sets what they share: body parsers, body timeouts, response compression.
 * It knows the broker's BrokerApi only.
 */
import compress from '@fastify/compress';
import multipart from '@fastify/multipart';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { BrokerApi } from '../../core/broker';
import { DEFAULT_LIMITS } from '../../core/validate';
import { DEFAULT_BODY_TIMEOUTS, type BodyTimeouts } from './body-timeout';
import { healthRoutes } from './health-routes';
import { inferRoute } from './infer-route';
import { modelRoutes } from './model-routes';
import { rawBodyParser, type RawBodyPooling } from './raw-body';
import { BodyPool } from './body-pool';
import { repositoryRoutes } from './repository';
import { sharedMemoryRoutes } from './shared-memory';
import type { SharedMemoryRegistry } from '../shared/shm';
import { MAX_IMAGES } from './uploads';
import { VIDEO_TYPES } from './video';

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
  /** Longest gap between two pieces of a request body (408 and the connection closed beyond). Default 10 s. */
  bodyIdleTimeoutMs?: number;
  /** Longest time to receive a whole request body, video uploads excepted (408 beyond). Default 60 s. */
  bodyTimeoutMs?: number;
  /** Responses at least this large are compressed when the client accepts gzip or deflate. Default 1024 bytes. */
  compressThreshold?: number;
  /** Big bodies of infer requests in reusable buffers (body-pool.ts); `false` turns the pool off. Default: a pool. */
  bodyPool?: BodyPool | false;
}

export const DEFAULT_COMPRESS_THRESHOLD = 1024;

/** Response types compressed: JSON and binary tensors. Never NDJSON video results: they stream one line at a time. */
const COMPRESSIBLE = /^application\/(json|octet-stream)(;|$)/;

/**
 * The body parsers of infer (also used by POST …/jobs, in its own context).
 * Every body arrives as one Buffer (gzip/deflate undone); JSON is parsed in
 * the handler so the binary extension, raw bodies, images and plain JSON
 * share one path. multipart/form-data is streamed by @fastify/multipart:
 * registered in this context after the catch-all, its parser wins for that type.
 */
export async function bodyParsers(app: FastifyInstance, bodyLimit: number, timeouts: BodyTimeouts, pooling?: RawBodyPooling): Promise<void> {
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { bodyLimit }, rawBodyParser(bodyLimit, timeouts, pooling));
  // Videos are streamed to ffmpeg as they arrive: the handler gets the request stream itself.
  app.addContentTypeParser([...VIDEO_TYPES], (_req, payload, done) => done(null, payload));
  await app.register(multipart, {
    limits: { fileSize: bodyLimit, files: MAX_IMAGES, fields: 16, fieldSize: 64 * 1024, parts: MAX_IMAGES + 16, headerPairs: 64 },
    // A part is a file when it has a filename or a non-text type (fetch's Blob parts, curl -F x=@file).
    isPartAFile: (_field, contentType, fileName) => fileName !== undefined || (contentType !== undefined && !contentType.startsWith('text/')),
  });
}

export async function restRoutes(app: FastifyInstance, opts: RestOptions): Promise<void> {
  const { broker } = opts;
  const maxElements = opts.maxElements ?? DEFAULT_LIMITS.maxElements;
  const maxVideoBytes = opts.maxVideoBytes ?? 1024 * 1024 * 1024;
  const timeouts = { idleMs: opts.bodyIdleTimeoutMs ?? DEFAULT_BODY_TIMEOUTS.idleMs, totalMs: opts.bodyTimeoutMs ?? DEFAULT_BODY_TIMEOUTS.totalMs };

  // Only the infer route releases lent bodies (infer-route.ts); every other route gets its own buffer.
  const pool = opts.bodyPool === false ? undefined : opts.bodyPool ?? new BodyPool();
  const pooling = pool && { pool, wants: (req: FastifyRequest) => req.routeOptions.url?.endsWith('/infer') === true };
  await bodyParsers(app, opts.bodyLimit, timeouts, pooling);
  // Compressed answers when asked (Accept-Encoding), above a threshold so small ones stay fast.
  // Request bodies are decoded by rawBodyParser (bounded by the body limit), not by this plugin.
  await app.register(compress, {
    global: true,
    globalDecompression: false,
    threshold: opts.compressThreshold ?? DEFAULT_COMPRESS_THRESHOLD,
    encodings: ['gzip', 'deflate'],
    customTypes: COMPRESSIBLE,
  });
  // A body timeout answers 408 before the body is complete: close the connection rather than read the rest.
  app.addHook('onSend', (_req, reply, payload, done) => {
    if (reply.statusCode === 408) reply.header('connection', 'close');
    done(null, payload);
  });

  await app.register(healthRoutes, { broker, version: opts.version });
  await app.register(modelRoutes, { broker });
  repositoryRoutes(app, broker);
  sharedMemoryRoutes(app, opts.shm);
  await app.register(inferRoute, { broker, bodyLimit: opts.bodyLimit, maxElements, maxVideoBytes, timeouts, ffmpeg: opts.ffmpeg, shm: opts.shm });
}
