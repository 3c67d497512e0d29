/**
 * The job service's vocabulary: what a bridge hands in (SubmitJob), what it
 * reads back (JobView, JobResult), the slice of the broker the runner
 * depends on (JobBroker: infer plus a read-only queue depth, nothing else),
 * and the runner of video jobs a bridge provides (VideoJobRunner).
 */
import type { Readable } from 'node:stream';
import type { BrokerApi } from '../core/broker';
import type { Tensor } from '../proto/tensor';
import type { InferResult } from '../core/types';

export const JOB_STATUSES = ['queued', 'running', 'succeeded', 'failed', 'cancelled', 'expired'] as const;
export type JobStatus = (typeof JOB_STATUSES)[number];
export const FINAL_STATUSES: ReadonlySet<JobStatus> = new Set(['succeeded', 'failed', 'cancelled', 'expired']);

/** One Redis stream per model and priority; a worker drains high before normal before low. */
export const JOB_PRIORITIES = ['high', 'normal', 'low'] as const;
export type JobPriority = (typeof JOB_PRIORITIES)[number];

/**
 * What the job runner needs of the broker: `infer` (the same path as live
 * traffic, through the same batcher) and each model's live queue depth
 * (Broker.load(), read-only) to use idle capacity only. The Broker class
 * satisfies it as is.
 */
export interface JobBroker {
  infer: BrokerApi['infer'];
  models: BrokerApi['models'];
  /** batchSize: rows per batch, for the model's capacity (jobs/capacity.ts). */
  describe: BrokerApi['describe'];
  /** copies: ready copies (absent: counted as one). */
  load(): { model: string; queued: number; running: number; copies?: number }[];
  /** A stateful model's sequence slots (a video job takes one); absent: one video job at a time. */
  sequences?(model: string): { slots: number; active: number; backlog: number };
}

/** The content type of a video job's result: one JSON line per frame, then a closing line. */
export const NDJSON = 'application/x-ndjson';

/** A video upload as a job's input (REST): kept in the blob store, run as one sequence on a stateful model. */
export interface VideoJobInput {
  /**
   * The upload, streamed into the blob store as it arrives (the bridge bounds
   * its size). Not read at all when the submit is answered before storing it
   * (a replayed Idempotency-Key, a full queue): the caller then drains it.
   */
  stream: Readable;
  /** video/mp4, video/webm, video/quicktime or video/x-matroska. */
  contentType: string;
  /** The decode and request options /infer takes for a video (fps, width, height, input, timeout), as given. */
  options: Record<string, string>;
}

/** One attempt of a video job, as the worker hands it to the runner. */
export interface VideoJobRun {
  jobId: string;
  attempt: number;
  model: string;
  version?: string;
  /** The stored upload (the runner reads it once; the worker closes it after the run). */
  video: Readable;
  contentType: string;
  options: Record<string, string>;
  /** A fresh id per attempt: a retry never continues the sequence of a lost one. */
  sequenceId: string;
  /** Batcher priority of the frames (below every live request). */
  priority: number;
  /** Aborted on cancel, timeout or shutdown: the decode stops and the model is told the sequence ended (cancelled). */
  signal: AbortSignal;
}

/**
 * Runs a video job: decodes the video and sends its frames in order through
 * the broker as one sequence (start on the first frame, end on the last).
 * Resolves with the NDJSON lines /infer would have streamed for the same
 * upload; rejects with a BrokerError whose code and kind tell the worker
 * whether to retry (a lost copy: kind copy-lost or sequence-lost) or fail
 * (a bad video, the model's own error). The REST bridge implements it with
 * its ffmpeg decode (bridges/rest/video-jobs.ts); app/server.ts injects it.
 */
export interface VideoJobRunner {
  run(job: VideoJobRun): Promise<Buffer>;
}

export interface SubmitJob {
  model: string;
  version?: string;
  /** Tensors of a tensor job (stateless model); empty for a video job. */
  inputs: Tensor[];
  /** A video job (stateful model): the upload instead of tensors. */
  video?: VideoJobInput;
  /** Outputs wanted; undefined = all. */
  outputs?: string[];
  priority?: JobPriority;
  ttlSeconds?: number;
  timeoutSeconds?: number;
  maxAttempts?: number;
  metadata?: Record<string, unknown>;
  idempotencyKey?: string;
  /** POSTed (signed) when the job is final: http(s), a host on the allow-list (jobs/webhooks.ts). */
  webhookUrl?: string;
  /** Opaque to the service: how the bridge will answer the result (client id, binary outputs). */
  reply?: Record<string, unknown>;
}

/** A job as clients see it (timestamps ISO 8601). */
export interface JobView {
  id: string;
  model: string;
  version?: string;
  status: JobStatus;
  priority: JobPriority;
  attempts: number;
  max_attempts: number;
  created_at: string;
  expires_at: string;
  started_at?: string;
  finished_at?: string;
  result_expires_at?: string;
  last_error?: string;
  metadata?: Record<string, unknown>;
  /** A video job: the upload's content type and its options; its result is NDJSON. */
  video?: { content_type: string; options: Record<string, string> };
  /** The webhook's outcome so far (jobs with a webhook_url). */
  webhook?: { state: 'pending' | 'retrying' | 'delivered' | 'failed'; attempts: number; last_status?: string };
}

export type JobResult =
  | { state: 'pending'; job: JobView }
  | { state: 'succeeded'; job: JobView; result: InferResult; reply?: Record<string, unknown>; ndjson?: undefined }
  /** A succeeded video job: the NDJSON lines (content type NDJSON), not tensors. */
  | { state: 'succeeded'; job: JobView; ndjson: Buffer; result?: undefined; reply?: undefined }
  /** Failed: the error code (core ErrorCode) and message of the last attempt. */
  | { state: 'failed'; job: JobView; code: string; message: string }
  /** Cancelled, expired in the queue, or the result is past result_ttl. */
  | { state: 'gone'; job: JobView; reason: string };

/** Queue figures of one model (GET /v2/models/{m}/jobs/queue). */
export interface QueueInfo {
  model: string;
  /** Jobs waiting (not yet taken by a worker), per priority. */
  depth: Record<JobPriority, number>;
  /** Jobs taken by a worker and not finished (pending entries, including those of a dead worker before reclaim). */
  running: number;
  oldest_age_seconds: number;
  dead_lettered: number;
}

export interface ListQuery {
  model?: string;
  status?: JobStatus;
  /** From a previous page's next_cursor. */
  cursor?: string;
  /** Jobs per page (default 100, at most 1000). */
  limit?: number;
}

/** Newest first; next_cursor is absent on the last page. */
export interface JobPage { jobs: JobView[]; next_cursor?: string }

/** What a bridge may call. */
export interface JobsApi {
  submit(job: SubmitJob): Promise<{ job: JobView; replayed: boolean }>;
  get(id: string): Promise<JobView>;
  result(id: string): Promise<JobResult>;
  cancel(id: string): Promise<JobView>;
  queue(model: string): Promise<QueueInfo>;
  /** Every job, newest first (an admin operation: the bridge checks the admin token). */
  list(q: ListQuery): Promise<JobPage>;
  /** The job now, then at each status change, until a final status (jobs/events.ts); NOT_FOUND first. */
  watch(id: string, signal?: AbortSignal): AsyncIterable<JobView>;
}
