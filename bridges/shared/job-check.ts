/**
 * What every bridge checks before queuing a job, so a bad input is refused
 * at submit (as /infer would refuse it) rather than failing later: the model
 * exists and is stateless (a stateful model's jobs are REST video uploads),
 * and the inputs match its metadata and batch size.
 * Also the admin check of listing jobs, the same on every bridge.
 */
import type { BrokerApi } from '../../core/broker';
import { BrokerError } from '../../core/errors';
import type { InferRequest } from '../../core/types';
import { requestRows, validateAgainst } from '../../core/validate';
import type { AccessControl } from './access';

const invalid = (msg: string) => new BrokerError('INVALID_ARGUMENT', msg);

/**
 * A tensor job's model: NOT_FOUND for an unknown model, INVALID_ARGUMENT for
 * a stateful one, whose jobs are video uploads over REST (one sequence per
 * job; call before reading the body).
 */
export function jobModel(broker: BrokerApi, model: string, version?: string): ReturnType<BrokerApi['describe']> {
  const desc = broker.describe(model, version);
  if (!desc.stateless) {
    throw invalid(`model '${model}' is stateful: a job on it is a video upload (POST /v2/models/${model}/jobs over REST with a video body, ` +
      'run as one sequence); tensor jobs run on stateless models only');
  }
  return desc;
}

/** The job's request against the model's known metadata (names, datatypes, shapes, rows). */
export function checkJobInputs(desc: ReturnType<BrokerApi['describe']>, request: Pick<InferRequest, 'inputs' | 'outputs' | 'id'> & { model: string }): void {
  const rows = requestRows(request as InferRequest);
  const meta = desc.metadata;
  const maxRows = meta && meta.maxBatch > 0 ? Math.min(meta.maxBatch, desc.batchSize) : desc.batchSize;
  if (meta) validateAgainst(request as InferRequest, meta, rows, maxRows);
  else if (rows > maxRows) throw invalid(`model '${request.model}' takes at most ${maxRows} rows per request, got ${rows}`);
}

/** Listing jobs needs the admin token itself (not loopback, not an API key). */
export function requireJobListing(access: Pick<AccessControl, 'adminConfigured' | 'isAdmin'>, credential: string | undefined): void {
  if (!access.adminConfigured) throw new BrokerError('PERMISSION_DENIED', 'listing jobs needs the admin token, and none is configured (TB_ADMIN_TOKEN)');
  if (!access.isAdmin(credential)) throw new BrokerError('UNAUTHENTICATED', 'listing jobs needs the admin token');
}

/** A job's `metadata_json` (gRPC and ZeroMQ carry it as text): empty, or a JSON object. */
export function metadataOf(json: string): Record<string, unknown> | undefined {
  if (json === '') return undefined;
  let v: unknown;
  try {
    v = JSON.parse(json);
  } catch {
    throw invalid('metadata_json is not valid JSON');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw invalid('metadata_json must be a JSON object');
  return v as Record<string, unknown>;
}

/** Where a video job's result is fetched: it is NDJSON lines, not tensors, so only REST serves it. */
export function videoResultElsewhere(id: string): BrokerError {
  return invalid(`job '${id}' ran a video: its result is NDJSON lines (application/x-ndjson), not tensors; fetch it over REST: GET /v2/jobs/${id}/result`);
}
