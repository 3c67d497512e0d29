/**
 * REST video: `POST /v2/models/{m}/infer` with a video body (video/mp4,
 * video/webm, video/quicktime, video/x-matroska, or a multipart part of one of
 * these) is decoded by ffmpeg into RGB frames that are fed to a stateful model
 * as one sequence (start on the first frame, end on the last); the results
 * stream back as newline-delimited JSON, one line per frame, as they are
 * produced, then one closing line. See bridges/README.md ("Video").
 */
import { quote } from '../shared/truncate';
import { randomBytes } from 'node:crypto';
import { PassThrough, type Readable } from 'node:stream';
import type { BrokerApi } from '../../core/broker';
import { BrokerError, toBrokerError } from '../../core/errors';
import type { InferResult } from '../../core/types';
import { requestOptions } from '../shared/parameters';
import { decodeVideo } from './ffmpeg';
import { imageInput, imageOptions } from './images';
import { tensorToJson } from './json-tensors';
import { stringifyJson } from './json-body';

export const VIDEO_TYPES = new Set(['video/mp4', 'video/webm', 'video/quicktime', 'video/x-matroska']);

/** Frames handed to the broker ahead of the answers: the next frame waits at the copy, not in ffmpeg. */
const WINDOW = 4;

const invalid = (msg: string) => new BrokerError('INVALID_ARGUMENT', msg);

export interface VideoRequest {
  broker: BrokerApi;
  model: string;
  version?: string;
  /** The upload (never buffered whole). */
  body: Readable;
  mediaType: string;
  query: Record<string, unknown>;
  requestId: string;
  /** Aborted when the client goes away: ffmpeg is killed and the sequence cancelled. */
  signal: AbortSignal;
  maxBytes: number;
  maxElements: number;
  ffmpeg?: string;
  /** The sequence's id (a job's, fresh per attempt); default: the query's sequence_id, else a random one. */
  sequenceId?: string;
  /** Batcher priority of the frames (a job's, below live traffic); default: the query's priority. */
  priority?: number;
}

export interface VideoResponse {
  /** NDJSON lines; ends after the closing line (or an error line). */
  stream: Readable;
  sequenceId: string;
  /** Settles once the stream has ended: the error an error line reported (its code and kind kept), else undefined. */
  failure: Promise<BrokerError | undefined>;
}

/** /infer's answer to a video for a stateless model (POST …/jobs gives the same). */
export function requireStateful(broker: Pick<BrokerApi, 'describe'>, model: string, version?: string): void {
  if (broker.describe(model, version).stateless) {
    throw invalid(`model '${model}' is stateless: a video upload is a sequence and needs a stateful model (stateless: false); send frames as images instead`);
  }
}

/** The query options of a video upload, checked (400 for a bad one): decode options (fps, width, height, input) and request options. */
export function videoOptions(query: Record<string, unknown>) {
  return { image: imageOptions({ ...query, fit: undefined }), fps: fpsOption(query.fps), ...requestOptions(query) };
}

function fpsOption(v: unknown): number | undefined {
  if (v === undefined || v === '') return undefined;
  const n = typeof v === 'string' && /^\d+(\.\d+)?$/.test(v) ? Number(v) : NaN;
  if (!(n > 0 && n <= 240)) throw invalid(`query 'fps' must be a number above 0 and at most 240 (got ${quote(v)})`);
  return n;
}

/** One NDJSON line (64-bit integers beyond 2^53 written exactly). */
const line = (o: unknown) => `${stringifyJson(o)}\n`;

function frameLine(frame: number, r: InferResult): string {
  return line({
    frame,
    model_name: r.model,
    model_version: r.version,
    outputs: r.outputs.map((t) => ({ name: t.name, datatype: t.datatype, shape: t.shape, data: tensorToJson(t) })),
  });
}

/**
 * Decodes the video and runs its frames through the model as one sequence.
 * Resolves once the first frame's answer is ready (the response can then
 * start with 200); rejects with a BrokerError when it fails before that.
 */
export async function inferVideo(v: VideoRequest): Promise<VideoResponse> {
  const { broker, model, version, query } = v;
  requireStateful(broker, model, version);
  const meta = await broker.awaitMetadata(model, version, v.signal);
  const { image: img, fps, timeoutMs, priority: queryPriority, sequence } = videoOptions(query);
  const spec = imageInput(meta, img.input);
  // A model with a fixed frame size gets frames of that size unless the query says otherwise.
  const width = img.width ?? (spec.shape[2] > 0 ? spec.shape[2] : undefined);
  const height = img.height ?? (spec.shape[1] > 0 ? spec.shape[1] : undefined);
  const priority = v.priority ?? queryPriority;
  const sequenceId = v.sequenceId ?? sequence?.id ?? `video-${randomBytes(8).toString('hex')}`;

  const stop = new AbortController(); // ours: ends decoding and cancels the sequence
  const abort = () => stop.abort();
  v.signal.addEventListener('abort', abort, { once: true });
  const video = await decodeVideo(v.body, {
    fps, width, height, maxBytes: v.maxBytes, maxFrameBytes: v.maxElements, ffmpeg: v.ffmpeg,
    signal: stop.signal, container: v.mediaType === 'video/mp4' || v.mediaType === 'video/quicktime' ? 'mp4' : 'other',
  }).catch((e: unknown) => {
    v.signal.removeEventListener('abort', abort);
    throw toBrokerError(e);
  });

  const out = new PassThrough();
  let first: ((ok: boolean, e?: BrokerError) => void) | undefined;
  const started = new Promise<void>((resolve, reject) => {
    first = (ok, e) => (ok ? resolve() : reject(e));
  });
  let answered = 0;
  let failed = false;
  let failure: BrokerError | undefined;
  /** The first failure: before any line it is the HTTP error, after it an error line; either way the sequence is cancelled. */
  const fail = (e: BrokerError, frame?: number) => {
    if (failed) return;
    failed = true;
    failure = e;
    stop.abort();
    if (first) {
      first(false, e);
      first = undefined;
      out.end();
    } else out.end(line({ ...(frame !== undefined ? { frame } : {}), error: e.message, code: e.code, sequence_id: sequenceId, frames: answered }));
  };
  const write = (text: string) => {
    if (failed) return;
    out.write(text);
    if (first) {
      first(true);
      first = undefined;
    }
  };

  // Answers are written in frame order: each waits for the previous one's line.
  let tail: Promise<void> = Promise.resolve();
  const inFlight: Promise<void>[] = [];
  const submit = (data: Buffer, frame: number, end: boolean) => {
    const answer = broker.infer({
      id: `${v.requestId}-${frame}`,
      model, version,
      inputs: [{ name: spec.name, datatype: 'UINT8', shape: [1, video.height, video.width, 3], data }],
      timeoutMs, priority,
      sequence: { id: sequenceId, start: frame === 0, end, owner: stop.signal },
    });
    answer.catch(() => undefined); // handled in order below
    const done = (tail = tail.then(() => answer).then(
      (r) => {
        answered++;
        write(frameLine(frame, r));
      },
      (e: unknown) => fail(toBrokerError(e), frame),
    ));
    inFlight.push(done);
  };

  const finished = (async () => {
    let held: Buffer | undefined; // the last frame read: only the next one (or the end) says whether it is the last
    let frame = 0;
    try {
      for await (const data of video.frames) {
        if (failed) break;
        if (held) submit(held, frame++, false);
        held = data;
        while (inFlight.length >= WINDOW) await inFlight.shift();
      }
      if (held && !failed) submit(held, frame++, true);
      else if (!held && !failed) fail(invalid('the video has no frames'));
    } catch (e) {
      // A decode error after some frames: the frames read so far are answered first.
      await tail;
      fail(toBrokerError(e), frame);
    }
    await tail;
    v.signal.removeEventListener('abort', abort);
    if (!failed) out.end(line({ end: true, sequence_id: sequenceId, frames: answered, width: video.width, height: video.height }));
  })();

  await started;
  return { stream: out, sequenceId, failure: finished.then(() => failure) };
}
