/**
 * Asynchronous jobs over REST (issue 15): submit, follow, fetch, cancel, and a
 * model's job queue. It knows the broker's BrokerApi (for 404s) and the job
 * service's JobsApi only. Bodies take every form /infer takes (KServe JSON,
 * the binary extension, a raw input, images, a video), read by the infer
 * route's own reader with the same parsers (routes.ts bodyParsers, in this
 * plugin's context). A video (stateful models only, as on /infer) is
 * streamed into the blob store, bounded by /infer's video limit; its job runs
 * as one sequence (video-jobs.ts) and its result is /infer's NDJSON lines.
 *
 *   POST   /v2/models/{m}[/versions/{v}]/jobs   202 {id, status, created_at, expires_at} + Location
 *   GET    /v2/jobs/{id}                        the job (status, attempts, timestamps, last error)
 *   GET    /v2/jobs/{id}/result                 200 as /infer (a video job: its NDJSON lines) | 202 + Retry-After | 410 | the job's error
 *   DELETE /v2/jobs/{id}                        cancel (a running job's result is dropped)
 *   GET    /v2/models/{m}/jobs/queue            depth per priority, running, oldest age, dead-lettered
 *   GET    /v2/jobs?model=&status=&cursor=&limit=   every job, newest first (admin bearer token)
 *   GET    /v2/jobs/{id}/events                 Server-Sent Events of status changes (job-events.ts)
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { Readable, Transform } from 'node:stream';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { BrokerApi, ModelDescription } from '../../core/broker';
import { BrokerError, HTTP_STATUS, type ErrorCode } from '../../core/errors';
import { JOB_PRIORITIES, JOB_STATUSES, NDJSON, type JobPriority, type JobsApi, type JobStatus } from '../../jobs/types';
import { checkJobInputs, jobModel } from '../shared/job-check';
import { encodeInferResult } from './infer-body';
import { inferBodyReader } from './infer-route';
import { bodyParsers } from './routes';
import { DEFAULT_BODY_TIMEOUTS, type BodyTimeouts } from './body-timeout';
import { DEFAULT_LIMITS } from '../../core/validate';
import { mediaType } from './media';
import { jobEventsRoute } from './job-events';
import { limiter } from './ffmpeg';
import { imageInput } from './images';
import { requireStateful, VIDEO_TYPES, videoOptions } from './video';

export interface JobRoutesOptions {
  broker: BrokerApi;
  jobs: JobsApi;
  /** Bearer token for listing jobs; without one, listing answers 403. */
  adminToken?: string;
  /** The infer route's body limits (the same as /infer's). */
  bodyLimit: number;
  maxElements?: number;
  /** The largest video upload (as /infer's, --max-video-bytes; 413 beyond). Default 1 GiB. */
  maxVideoBytes?: number;
  timeouts?: BodyTimeouts;
  /** Comment lines on an idle event stream, so proxies keep it open. Default 15 s. */
  sseHeartbeatMs?: number;
}

type ModelParams = { model: string; version?: string };
type IdParams = { id: string };

const invalid = (msg: string) => new BrokerError('INVALID_ARGUMENT', msg);

/** Job options (query string, or top-level fields of a JSON body). */
const JOB_KEYS = new Set(['priority', 'ttl_seconds', 'timeout_seconds', 'max_attempts', 'webhook_url']);

/** The query options of /infer's video route a video job keeps (decode options and the per-frame timeout). */
const VIDEO_KEYS = ['fps', 'width', 'height', 'input', 'timeout'];

/**
 * A video job's options, checked now as /infer would check them (400), kept
 * as strings with the job. A job's sequence is its own (a new id per
 * attempt): the sequence parameters are refused.
 */
function videoJobOptions(query: Record<string, unknown>, desc: ModelDescription): Record<string, string> {
  for (const k of ['sequence_id', 'sequence_start', 'sequence_end']) {
    if (query[k] !== undefined) throw invalid(`a video job runs as a sequence of its own (a new one per attempt): '${k}' is not taken`);
  }
  const options: Record<string, string> = {};
  for (const k of VIDEO_KEYS) {
    const v = query[k];
    if (v === undefined) continue;
    if (typeof v !== 'string') throw invalid(`query '${k}' must be given once`);
    options[k] = v;
  }
  const checked = videoOptions(options);
  if (desc.metadata) imageInput(desc.metadata, checked.image.input);
  return options;
}

/**
 * The upload through a byte counter: PAYLOAD_TOO_LARGE past `max` (the words
 * of /infer's 413), CANCELLED when the client goes away before its end, so
 * the blob store's write always ends.
 */
function boundedUpload(body: Readable, max: number): Transform {
  const out = limiter(max);
  const early = (why: string) => out.destroy(new BrokerError('CANCELLED', `the upload ended early: ${why}`));
  body.on('error', (e) => early(e.message));
  body.on('close', () => {
    if (!body.readableEnded) early('the connection closed');
  });
  // Its error may come before the blob store reads it (a submit checks its options first): kept in its state, not unhandled.
  out.on('error', () => undefined);
  body.pipe(out);
  return out;
}

/** A positive number from the body (number) or the query string (string). */
function positive(key: string, v: unknown): number | undefined {
  if (v === undefined || v === null || v === '') return undefined;
  const n = typeof v === 'string' ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isFinite(n) || n <= 0) throw invalid(`'${key}' must be a positive number (got ${JSON.stringify(v)})`);
  return n;
}

/** Job options: the query string, overridden by top-level fields of the JSON body. */
export function jobOptions(query: Record<string, unknown>, body: Record<string, unknown>) {
  const pick = (k: string) => (body[k] !== undefined ? body[k] : query[k]);
  const priority = pick('priority');
  if (priority !== undefined && !JOB_PRIORITIES.includes(priority as JobPriority)) {
    throw invalid(`'priority' must be one of ${JOB_PRIORITIES.join(', ')} (got ${JSON.stringify(priority)})`);
  }
  const maxAttempts = positive('max_attempts', pick('max_attempts'));
  if (maxAttempts !== undefined && !Number.isInteger(maxAttempts)) throw invalid(`'max_attempts' must be a whole number`);
  const metadata = body.metadata;
  if (metadata !== undefined && (typeof metadata !== 'object' || metadata === null || Array.isArray(metadata))) throw invalid(`'metadata' must be a JSON object`);
  const webhook = pick('webhook_url');
  if (webhook !== undefined && typeof webhook !== 'string') throw invalid(`'webhook_url' must be a string`);
  return {
    webhookUrl: webhook === '' ? undefined : webhook,
    priority: priority as JobPriority | undefined,
    ttlSeconds: positive('ttl_seconds', pick('ttl_seconds')),
    timeoutSeconds: positive('timeout_seconds', pick('timeout_seconds')),
    maxAttempts,
    metadata: metadata as Record<string, unknown> | undefined,
  };
}

/**
 * The JSON object of a JSON or binary-extension body (its top-level job
 * options: priority, ttl_seconds, …); {} for images and raw inputs, whose
 * options travel in the query string. The body was read and checked already.
 */
function jsonHeader(body: unknown, rawLength: string | string[] | undefined): Record<string, unknown> {
  if (!Buffer.isBuffer(body)) return {};
  const length = Array.isArray(rawLength) ? rawLength[0] : rawLength;
  if (length !== undefined && Number(length) === 0) return {};
  const text = length === undefined ? body.toString('utf8') : body.toString('utf8', 0, Number(length));
  try {
    const o: unknown = JSON.parse(text);
    return typeof o === 'object' && o !== null && !Array.isArray(o) ? (o as Record<string, unknown>) : {};
  } catch {
    return {}; // an image, or a body the reader took in another form
  }
}

export async function jobsRoutes(app: FastifyInstance, opts: JobRoutesOptions): Promise<void> {
  const { broker, jobs } = opts;
  const timeouts = opts.timeouts ?? DEFAULT_BODY_TIMEOUTS;
  await bodyParsers(app, opts.bodyLimit, timeouts);
  const read = inferBodyReader({ broker, bodyLimit: opts.bodyLimit, maxElements: opts.maxElements ?? DEFAULT_LIMITS.maxElements, timeouts });
  const maxVideoBytes = opts.maxVideoBytes ?? 1024 * 1024 * 1024;
  const idempotencyKey = (req: FastifyRequest) => {
    const raw = req.headers['idempotency-key'];
    return Array.isArray(raw) ? raw[0] : raw;
  };
  const accepted = (reply: FastifyReply, r: Awaited<ReturnType<JobsApi['submit']>>) => {
    if (r.replayed) reply.header('Idempotent-Replayed', 'true');
    return reply.code(202).header('Location', `/v2/jobs/${r.job.id}`)
      .send({ id: r.job.id, status: r.job.status, created_at: r.job.created_at, expires_at: r.job.expires_at });
  };

  /** A video job: the upload streamed into the blob store (bounded), its options checked now. */
  const submitVideo = async (req: FastifyRequest<{ Params: ModelParams }>, reply: FastifyReply, desc: ModelDescription,
    body: Readable, contentType: string, query: Record<string, unknown>) => {
    const { model, version } = req.params;
    let upload: Transform | undefined;
    // Not stored (refused, or a replay answered before reading it): drain what is left, so the connection carries the answer.
    const discard = () => {
      if (upload) {
        body.unpipe(upload);
        upload.destroy();
      }
      body.resume();
    };
    try {
      requireStateful(broker, model, version); // a multipart video part is known only now
      const options = videoJobOptions(query, desc);
      const jobOpts = jobOptions(query, {});
      upload = boundedUpload(body, maxVideoBytes);
      const r = await jobs.submit({
        model, version, inputs: [], video: { stream: upload, contentType, options }, ...jobOpts, idempotencyKey: idempotencyKey(req),
      });
      if (r.replayed) discard();
      return accepted(reply, r);
    } catch (e) {
      discard();
      throw e;
    }
  };

  const submit = async (req: FastifyRequest<{ Params: ModelParams }>, reply: FastifyReply) => {
    const { model, version } = req.params;
    const desc = broker.describe(model, version); // 404 before looking at the body
    // As on /infer: a video needs a stateful model (400 before reading the upload).
    if (VIDEO_TYPES.has(mediaType(req.headers['content-type']))) requireStateful(broker, model, version);
    // The job's own options are not the request's (priority=high is a job priority, not the live one).
    const query = (req.query ?? {}) as Record<string, unknown>;
    const decoded = await read(req, Object.fromEntries(Object.entries(query).filter(([k]) => !JOB_KEYS.has(k))));
    if ('video' in decoded) return submitVideo(req, reply, desc, decoded.video, decoded.type, query);
    // A body /infer takes (else its 400 or 415 came first), but a job on a stateful model is a video: 400.
    jobModel(broker, model, version);
    const parsed = decoded.parsed;
    if (parsed.shmInputs || parsed.shmOutputs) throw invalid('a job cannot use shared memory regions: its input is stored with the job, and its result is fetched later');
    if (parsed.classification) throw invalid('a job cannot ask for classification outputs: fetch the tensors and rank them');
    const body = jsonHeader(req.body, req.headers['inference-header-content-length']);
    // Checked now, as /infer would, so a bad input is a 400 here rather than a failed job later.
    checkJobInputs(desc, { ...parsed.request, model });
    return accepted(reply, await jobs.submit({
      model, version, inputs: parsed.request.inputs, outputs: parsed.request.outputs,
      ...jobOptions(query, body),
      idempotencyKey: idempotencyKey(req),
      reply: { clientId: parsed.clientId, binaryOutputs: [...parsed.binaryOutputs] },
    }));
  };
  app.post('/v2/models/:model/jobs', submit);
  app.post('/v2/models/:model/versions/:version/jobs', submit);

  app.get('/v2/models/:model/jobs/queue', async (req: FastifyRequest<{ Params: ModelParams }>) => {
    broker.describe(req.params.model);
    return jobs.queue(req.params.model);
  });

  const digest = (s: string) => createHash('sha256').update(s).digest();
  const adminDigest = opts.adminToken ? digest(opts.adminToken) : undefined;
  app.get('/v2/jobs', async (req) => {
    if (!adminDigest) throw new BrokerError('PERMISSION_DENIED', 'listing jobs needs the admin token, and none is configured (TB_ADMIN_TOKEN)');
    const m = /^Bearer (.+)$/.exec(req.headers.authorization ?? '');
    if (!m || !timingSafeEqual(digest(m[1]), adminDigest)) throw new BrokerError('UNAUTHENTICATED', 'missing or wrong bearer token');
    const q = (req.query ?? {}) as Record<string, string | undefined>;
    if (q.status !== undefined && !JOB_STATUSES.includes(q.status as JobStatus)) throw invalid(`'status' must be one of ${JOB_STATUSES.join(', ')}`);
    const limit = q.limit === undefined ? undefined : Number(q.limit);
    return jobs.list({ model: q.model || undefined, status: q.status as JobStatus | undefined, cursor: q.cursor || undefined, limit });
  });

  jobEventsRoute(app, jobs, opts.sseHeartbeatMs ?? 15_000);

  app.get('/v2/jobs/:id', async (req: FastifyRequest<{ Params: IdParams }>) => jobs.get(req.params.id));

  app.delete('/v2/jobs/:id', async (req: FastifyRequest<{ Params: IdParams }>) => jobs.cancel(req.params.id));

  app.get('/v2/jobs/:id/result', async (req: FastifyRequest<{ Params: IdParams }>, reply) => {
    const r = await jobs.result(req.params.id);
    switch (r.state) {
      case 'pending':
        return reply.code(202).header('Retry-After', '1').send({ id: r.job.id, status: r.job.status });
      case 'gone':
        return reply.code(410).send({ error: r.reason, job: r.job });
      case 'failed':
        return reply.code(HTTP_STATUS[r.code as ErrorCode] ?? 500).send({ error: r.message, job: r.job });
      case 'succeeded': {
        // A video job: the NDJSON lines /infer would have streamed.
        if (r.ndjson) return reply.header('Content-Type', NDJSON).header('Cache-Control', 'no-store').send(r.ndjson);
        const hints = (r.reply ?? {}) as { clientId?: string; binaryOutputs?: string[] };
        const enc = encodeInferResult(r.result, hints.clientId, new Set(hints.binaryOutputs ?? []));
        if (enc.binary.length === 0) return reply.send(enc.json);
        const json = Buffer.from(JSON.stringify(enc.json));
        return reply.header('Content-Type', 'application/octet-stream').header('Inference-Header-Content-Length', json.length)
          .send(Buffer.concat([json, ...enc.binary]));
      }
    }
  });
}
