/**
 * Job operations over ZeroMQ: a request whose header has `job` set
 * (proto/client.proto JobCall) is a job operation, answered with one reply
 * carrying the job (JobInfo), a page of jobs, or a succeeded job's outputs as
 * frames. Submit takes the request's model, inputs and tensor frames as an
 * inference would. It knows the BrokerApi and the JobsApi only.
 */
import type { BrokerApi } from '../../core/broker';
import { BrokerError } from '../../core/errors';
import type { Tensor } from '../../proto/tensor';
import { JobCall_Op, tensorsFromFrames, type InferRequest, type JobInfo } from '../../proto/client';
import type { MessageInitShape } from '@bufbuild/protobuf';
import type { JobInfoSchema } from '../../proto/gen/client_pb';
import { JOB_PRIORITIES, JOB_STATUSES, type JobPriority, type JobStatus, type JobsApi, type JobView } from '../../jobs/types';
import type { AccessControl } from '../shared/access';
import { checkJobInputs, jobModel, requireJobListing, metadataOf, videoResultElsewhere } from '../shared/job-check';

const invalid = (msg: string) => new BrokerError('INVALID_ARGUMENT', msg);

/** WATCH's wait when the call names none, and its bound (a reply must come well inside a client's timeout). */
export const WATCH_DEFAULT_MS = 25_000;
export const WATCH_MAX_MS = 60_000;

/**
 * The job once its status or attempts differ from what the client saw, or
 * unchanged after `waitMs`: the long poll that makes a watch over a protocol
 * with one reply per request (the events themselves come from JobsApi.watch).
 */
async function watchOnce(jobs: JobsApi, id: string, seenStatus: string, seenAttempts: number, waitMs: number, signal?: AbortSignal): Promise<JobView> {
  const stop = new AbortController();
  const onAbort = () => stop.abort();
  signal?.addEventListener('abort', onAbort);
  const timer = setTimeout(() => stop.abort(), waitMs);
  let last: JobView | undefined;
  try {
    for await (const v of jobs.watch(id, stop.signal)) {
      last = v;
      if (seenStatus === '' || v.status !== seenStatus || v.attempts !== seenAttempts) return v;
    }
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener('abort', onAbort);
    stop.abort(); // ends the watch's subscription when we returned early
  }
  // Ended without a change: the wait ran out, the client went away, or the broker is stopping.
  return last ?? (await jobs.get(id));
}

export interface JobCallReply {
  job?: MessageInitShape<typeof JobInfoSchema>;
  jobs?: MessageInitShape<typeof JobInfoSchema>[];
  nextCursor?: string;
  /** RESULT of a succeeded job: its outputs, sent as frames. */
  outputs?: Tensor[];
  model?: string;
  version?: string;
}

function info(v: JobView, extra: Partial<Omit<JobInfo, '$typeName' | '$unknown'>> = {}): MessageInitShape<typeof JobInfoSchema> {
  return {
    id: v.id, model: v.model, version: v.version ?? '', status: v.status, priority: v.priority,
    attempts: v.attempts, maxAttempts: v.max_attempts, createdAt: v.created_at, expiresAt: v.expires_at,
    startedAt: v.started_at ?? '', finishedAt: v.finished_at ?? '', resultExpiresAt: v.result_expires_at ?? '',
    lastError: v.last_error ?? '', metadataJson: v.metadata ? JSON.stringify(v.metadata) : '',
    webhookState: v.webhook?.state ?? '', webhookAttempts: v.webhook?.attempts ?? 0, webhookLastStatus: v.webhook?.last_status ?? '',
    ...extra,
  };
}

export async function jobCall(o: { broker: BrokerApi; jobs?: JobsApi; access: AccessControl }, h: InferRequest, frames: Buffer[], credential: string | undefined, signal?: AbortSignal): Promise<JobCallReply> {
  const { jobs } = o;
  if (!jobs) throw new BrokerError('UNAVAILABLE', 'asynchronous jobs are off on this broker (--jobs, with --redis-url)');
  const c = h.job!;
  switch (c.op) {
    case JobCall_Op.SUBMIT: {
      if (h.model === '') throw invalid('the request names no model');
      const desc = jobModel(o.broker, h.model, h.version || undefined);
      const inputs = tensorsFromFrames(h.inputs, frames);
      if (inputs.length === 0) throw invalid('the request has no input tensors');
      const outputs = h.outputs.length > 0 ? [...h.outputs] : undefined;
      checkJobInputs(desc, { id: h.id, model: h.model, inputs, outputs });
      if (c.priority !== '' && !JOB_PRIORITIES.includes(c.priority as JobPriority)) throw invalid(`priority must be one of ${JOB_PRIORITIES.join(', ')} (got '${c.priority}')`);
      const positive = (name: string, v: number) => {
        if (!Number.isFinite(v) || v < 0) throw invalid(`${name} must be a positive number`);
        return v === 0 ? undefined : v;
      };
      // The tensors are views of the message's frames: the service encodes (copies) them before this returns.
      const { job, replayed } = await jobs.submit({
        model: h.model, version: h.version || undefined, inputs, outputs,
        priority: (c.priority || undefined) as JobPriority | undefined,
        ttlSeconds: positive('ttl_seconds', c.ttlSeconds), timeoutSeconds: positive('timeout_seconds', c.timeoutSeconds),
        maxAttempts: c.maxAttempts === 0 ? undefined : c.maxAttempts, webhookUrl: c.webhookUrl || undefined,
        metadata: metadataOf(c.metadataJson), idempotencyKey: c.idempotencyKey || undefined,
      });
      return { job: info(job, { replayed }) };
    }
    case JobCall_Op.GET:
      return { job: info(await jobs.get(c.jobId)) };
    case JobCall_Op.CANCEL:
      return { job: info(await jobs.cancel(c.jobId)) };
    case JobCall_Op.WATCH: {
      if (c.seenStatus !== '' && !JOB_STATUSES.includes(c.seenStatus as JobStatus)) throw invalid(`seen_status must be empty or one of ${JOB_STATUSES.join(', ')}`);
      const waitMs = c.waitMs === 0 ? WATCH_DEFAULT_MS : Math.min(c.waitMs, WATCH_MAX_MS);
      return { job: info(await watchOnce(jobs, c.jobId, c.seenStatus, c.seenAttempts, waitMs, signal)) };
    }
    case JobCall_Op.RESULT: {
      const r = await jobs.result(c.jobId);
      switch (r.state) {
        case 'succeeded':
          if (r.ndjson) throw videoResultElsewhere(c.jobId);
          return { job: info(r.job, { resultState: 'succeeded' }), outputs: r.result.outputs, model: r.result.model, version: r.result.version };
        case 'failed':
          return { job: info(r.job, { resultState: 'failed', lastError: r.message }) };
        case 'gone':
          return { job: info(r.job, { resultState: 'gone', lastError: r.reason }) };
        case 'pending':
          return { job: info(r.job, { resultState: 'pending' }) };
      }
      break;
    }
    case JobCall_Op.LIST: {
      requireJobListing(o.access, credential);
      if (c.status !== '' && !JOB_STATUSES.includes(c.status as JobStatus)) throw invalid(`status must be one of ${JOB_STATUSES.join(', ')}`);
      const page = await jobs.list({ model: h.model || undefined, status: (c.status || undefined) as JobStatus | undefined, cursor: c.cursor || undefined, limit: c.limit || undefined });
      return { jobs: page.jobs.map((j) => info(j)), nextCursor: page.next_cursor ?? '' };
    }
  }
  throw invalid(`unknown job operation ${String(c.op)}: SUBMIT, GET, RESULT, CANCEL, LIST or WATCH`);
}
