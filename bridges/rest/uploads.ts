/**
 * Upload forms of infer: multipart bodies (images, or one video, streamed by
 * @fastify/multipart), video replies (NDJSON) and image requests.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Readable } from 'node:stream';
import { BrokerError } from '../../core/errors';
import type { ModelMetadata } from '../../core/types';
import { requestOptions } from '../shared/parameters';
import { truncate } from '../shared/truncate';
import { watchBody, type BodyTimeouts } from './body-timeout';
import { imageInput, imageOptions, imagesTensor } from './images';
import type { ParsedInfer } from './infer-body';
import { IMAGE_TYPES, mediaType, UnsupportedMediaType } from './media';
import { abortOnClose } from './route-helpers';
import { inferVideo, VIDEO_TYPES, type VideoRequest } from './video';

/** The most images one multipart request may carry (the model's batch size limits it further). */
export const MAX_IMAGES = 64;

/**
 * Reads the parts of a multipart body: a video (the first part, when it is
 * one: handed over as a stream, never read here) or image parts, in order, as
 * Buffers, their total bounded by the body limit (413). Parts that are not
 * files are refused: options travel in the query string. The parts must keep
 * arriving (`timeouts`): a stalled upload has its connection closed.
 */
export async function readUploadParts(req: FastifyRequest, limit: number, timeouts: BodyTimeouts): Promise<{ video: Readable; type: string } | { images: { label: string; bytes: Buffer }[] }> {
  const files: { label: string; bytes: Buffer }[] = [];
  let total = 0;
  // Iterated by hand: leaving a for-await would end the iterator and with it a video part's stream.
  const parts = req.parts()[Symbol.asyncIterator]();
  const watch = watchBody(req.raw, timeouts, (e) => req.raw.destroy(e));
  try {
    for (;;) {
      const next = await parts.next();
      if (next.done) break;
      const part = next.value;
      const label = `part ${files.length + 1} ('${truncate(part.type === 'file' && part.filename ? part.filename : part.fieldname, 80)}')`;
      if (part.type !== 'file') {
        throw new BrokerError('INVALID_ARGUMENT', `multipart ${label} is not a file: options go in the query string (?input=, ?width=, ?height=, ?fit=, ?fps=)`);
      }
      const type = mediaType(part.mimetype);
      if (VIDEO_TYPES.has(type)) {
        if (files.length > 0) throw new BrokerError('INVALID_ARGUMENT', `multipart ${label} is a video after images: send one video, or images only`);
        watch.stop(); // a video streams for as long as it lasts
        return { video: part.file, type };
      }
      if (type !== '' && type !== 'application/octet-stream' && !IMAGE_TYPES.has(type)) {
        part.file.resume();
        throw new UnsupportedMediaType(`multipart ${label} is ${truncate(type, 80)}: uploads take image/jpeg, image/png, image/webp, or one video (${[...VIDEO_TYPES].join(', ')})`);
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
    const status = (e as { statusCode?: number }).statusCode;
    if (status === 413) throw new BrokerError('PAYLOAD_TOO_LARGE', truncate(message, 300));
    if (status === 408) throw e;
    throw new BrokerError('INVALID_ARGUMENT', `malformed multipart body: ${truncate(message, 300)}`);
  } finally {
    watch.stop();
  }
  return { images: files };
}

/** Runs a video upload; the answer is NDJSON once the first frame's result is ready (errors before that are plain HTTP errors). */
export async function videoReply(req: FastifyRequest, reply: FastifyReply, v: Omit<VideoRequest, 'signal'>): Promise<FastifyReply> {
  const signal = abortOnClose(reply);
  req.log.debug({ model: v.model, requestId: v.requestId, type: v.mediaType }, 'video infer');
  const res = await inferVideo({ ...v, signal });
  return reply
    .header('Content-Type', 'application/x-ndjson')
    .header('Cache-Control', 'no-store')
    .header('X-Sequence-Id', res.sequenceId)
    .send(res.stream);
}

/** An infer request from uploaded images: one UINT8 [N, H, W, 3] tensor, outputs as JSON. */
export async function imageRequest(
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
