/**
 * tensorbroker.jobs.v1.JobService (proto/jobs.proto): asynchronous jobs over
 * gRPC, on the same server and port as GRPCInferenceService. Submit, Get,
 * GetResult and Cancel follow the inference access rules (API keys), List
 * needs the admin token; Watch streams the job at each status change. It knows
 * the BrokerApi (for NOT_FOUND and the inputs' check) and the JobsApi only.
 */
import * as grpc from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';
import type { Logger } from 'pino';
import type { BrokerApi } from '../../core/broker';
import { BrokerError } from '../../core/errors';
import { JOB_PRIORITIES, JOB_STATUSES, type JobPriority, type JobStatus, type JobsApi, type JobView } from '../../jobs/types';
import {
  JobResultSchema, JobSchema, JobService, ListJobsResponseSchema,
  type Job, type JobId, type JobResult, type ListJobsRequest, type ListJobsResponse, type SubmitJobRequest,
} from '../../proto/gen/jobs_pb';
import type { AccessControl, CallClass } from '../shared/access';
import { checkJobInputs, jobModel, requireJobListing, metadataOf, videoResultElsewhere } from '../shared/job-check';
import { callerOf } from './caller';
import { decoded } from './context';
import { parseInferRequest, toInferResponse } from './convert';
import { serviceDefinition, type Undecodable } from './service-definition';
import { toGrpcStatus } from './status';

export interface JobServiceOptions {
  broker: BrokerApi;
  jobs: JobsApi;
  access: AccessControl;
  logger: Logger;
}

const invalid = (msg: string) => new BrokerError('INVALID_ARGUMENT', msg);

function jobMessage(v: JobView, replayed = false): Job {
  return create(JobSchema, {
    id: v.id, model: v.model, version: v.version ?? '', status: v.status, priority: v.priority,
    attempts: v.attempts, maxAttempts: v.max_attempts, createdAt: v.created_at, expiresAt: v.expires_at,
    startedAt: v.started_at ?? '', finishedAt: v.finished_at ?? '', resultExpiresAt: v.result_expires_at ?? '',
    lastError: v.last_error ?? '', metadataJson: v.metadata ? JSON.stringify(v.metadata) : '',
    webhook: v.webhook ? { state: v.webhook.state, attempts: v.webhook.attempts, lastStatus: v.webhook.last_status ?? '' } : undefined,
    replayed,
  });
}

let ids = 0;

export function addJobService(server: grpc.Server, o: JobServiceOptions): void {
  const { broker, jobs, access, logger: log } = o;
  const admit = (call: { metadata: grpc.Metadata; getPeer(): string }, cls: CallClass) => {
    const caller = callerOf(call);
    const refused = access.check(cls, caller);
    if (refused) {
      log.warn({ peer: caller.address, code: refused.code, cls }, 'gRPC job call refused by the access policy');
      throw refused;
    }
    return caller;
  };
  const unary = <Req, Res>(rpc: string, fn: (req: Req, call: grpc.ServerUnaryCall<Req | Undecodable, Res>) => Promise<Res>): grpc.handleUnaryCall<Req | Undecodable, Res> =>
    (call, callback) => {
      Promise.resolve()
        .then(() => {
          admit(call, 'infer');
          return fn(decoded(call.request), call);
        })
        .then((res) => callback(null, res), (err: unknown) => callback(toGrpcStatus(err, log, rpc, access.seesAdminDetails(callerOf(call)))));
    };

  const handlers = {
    Submit: unary<SubmitJobRequest, Job>('Submit', async (m) => {
      const r = m.request;
      if (!r) throw invalid('the job needs a request (a ModelInferRequest with its inputs)');
      if (r.modelName === '') throw invalid('the request needs a model_name');
      const desc = jobModel(broker, r.modelName, r.modelVersion || undefined);
      const parsed = parseInferRequest(r, `gj-${++ids}`);
      if (parsed.shmInputs || parsed.shmOutputs) throw invalid('a job cannot use shared memory regions: its input is stored with the job, and its result is fetched later');
      if (parsed.classification) throw invalid('a job cannot ask for classification outputs: fetch the tensors and rank them');
      checkJobInputs(desc, parsed.request);
      if (m.priority !== '' && !JOB_PRIORITIES.includes(m.priority as JobPriority)) throw invalid(`priority must be one of ${JOB_PRIORITIES.join(', ')} (got '${m.priority}')`);
      const positive = (name: string, v: number) => {
        if (!Number.isFinite(v) || v < 0) throw invalid(`${name} must be a positive number`);
        return v === 0 ? undefined : v;
      };
      const { job, replayed } = await jobs.submit({
        model: r.modelName, version: r.modelVersion || undefined, inputs: parsed.request.inputs, outputs: parsed.request.outputs,
        priority: (m.priority || undefined) as JobPriority | undefined,
        ttlSeconds: positive('ttl_seconds', m.ttlSeconds), timeoutSeconds: positive('timeout_seconds', m.timeoutSeconds),
        maxAttempts: m.maxAttempts === 0 ? undefined : m.maxAttempts,
        webhookUrl: m.webhookUrl || undefined, metadata: metadataOf(m.metadataJson), idempotencyKey: m.idempotencyKey || undefined,
        reply: { clientId: parsed.clientId },
      });
      return jobMessage(job, replayed);
    }),
    Get: unary<JobId, Job>('Get', async (m) => jobMessage(await jobs.get(m.id))),
    Cancel: unary<JobId, Job>('Cancel', async (m) => jobMessage(await jobs.cancel(m.id))),
    GetResult: unary<JobId, JobResult>('GetResult', async (m) => {
      const r = await jobs.result(m.id);
      const job = jobMessage(r.job);
      switch (r.state) {
        case 'pending': return create(JobResultSchema, { job, state: 'pending' });
        case 'gone': return create(JobResultSchema, { job, state: 'gone', error: r.reason });
        case 'failed': return create(JobResultSchema, { job, state: 'failed', errorCode: r.code, error: r.message });
        case 'succeeded': {
          if (r.ndjson) throw videoResultElsewhere(m.id);
          const clientId = typeof r.reply?.clientId === 'string' ? r.reply.clientId : '';
          return create(JobResultSchema, { job, state: 'succeeded', response: toInferResponse(r.result, clientId) });
        }
      }
    }),
    List: ((call, callback) => {
      Promise.resolve()
        .then(async () => {
          requireJobListing(access, callerOf(call).credential);
          const m = decoded(call.request);
          if (m.status !== '' && !JOB_STATUSES.includes(m.status as JobStatus)) throw invalid(`status must be one of ${JOB_STATUSES.join(', ')}`);
          const page = await jobs.list({ model: m.model || undefined, status: (m.status || undefined) as JobStatus | undefined, cursor: m.cursor || undefined, limit: m.limit || undefined });
          return create(ListJobsResponseSchema, { jobs: page.jobs.map((j) => jobMessage(j)), nextCursor: page.next_cursor ?? '' });
        })
        .then((res) => callback(null, res), (err: unknown) => callback(toGrpcStatus(err, log, 'List')));
    }) as grpc.handleUnaryCall<ListJobsRequest | Undecodable, ListJobsResponse>,
    Watch: ((call) => {
      const stop = new AbortController();
      call.on('cancelled', () => stop.abort());
      void (async () => {
        try {
          admit(call, 'infer');
          for await (const v of jobs.watch(decoded(call.request).id, stop.signal)) {
            if (stop.signal.aborted) return;
            call.write(jobMessage(v));
          }
          call.end();
        } catch (err) {
          if (!stop.signal.aborted) call.emit('error', toGrpcStatus(err, log, 'Watch'));
        }
      })();
    }) as grpc.handleServerStreamingCall<JobId | Undecodable, Job>,
  };
  server.addService(serviceDefinition(JobService, { lenientRequests: true }), handlers as unknown as grpc.UntypedServiceImplementation);
}
