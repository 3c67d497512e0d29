/**
 * Forwards a request to the broker that owns its sequence (core/cluster.ts
 * Forwarder): one HTTP POST to the owner's internal route with the request's
 * frames, over a keep-alive connection per owner. The answer (or the owner's
 * error) is relayed as it came. The owner unreachable, gone mid-answer or
 * answering garbage: UNAVAILABLE naming the owner; the deadline passed:
 * DEADLINE_EXCEEDED. Never waits past the request's deadline.
 */
import http from 'node:http';
import https from 'node:https';
import { create } from '@bufbuild/protobuf';
import type { Forwarder } from '../core/cluster';
import { BrokerError, type ErrorCode } from '../core/errors';
import type { InferRequest, InferResult } from '../core/types';
import { InferReplySchema, InferRequestSchema, decodeHeader, encodeFrames, parametersToProto, tensorsFromFrames, toMeta, type ParameterValue } from '../proto/client';
import { FRAMES_TYPE, frameBody, splitFrames } from './frames';

export const FORWARD_PATH = '/internal/cluster/infer';
export const FORWARDED_BY = 'x-tb-forwarded-by';
export const CLUSTER_TOKEN = 'x-tb-cluster-token';
/** A new connection to an owner that does not open this fast counts as the owner unreachable (a vanished pod sends no RST). */
const CONNECT_MS = 2000;

const CODES = new Set<string>(['INVALID_ARGUMENT', 'NOT_FOUND', 'RESOURCE_EXHAUSTED', 'UNAVAILABLE', 'DEADLINE_EXCEEDED', 'CANCELLED',
  'PAYLOAD_TOO_LARGE', 'UNSUPPORTED_MEDIA_TYPE', 'UNAUTHENTICATED', 'PERMISSION_DENIED', 'UNIMPLEMENTED', 'INTERNAL']);

export interface HttpForwarderOptions {
  /** This broker's id: the hop marker. */
  self: string;
  /** Sent as x-tb-cluster-token; the owner's route checks it. */
  token?: string;
  /** Most frames in an answer (header + outputs). */
  maxFrames: number;
  /** Told each forward's outcome: 'ok' or the error code (metrics). */
  outcome?: (model: string, outcome: string) => void;
}

export class HttpForwarder implements Forwarder {
  private readonly agents = { http: new http.Agent({ keepAlive: true, noDelay: true }), https: new https.Agent({ keepAlive: true, noDelay: true }) };

  constructor(private readonly opts: HttpForwarderOptions) {}

  forward(target: { broker: string; url: string }, req: InferRequest, deadlineMs: number): Promise<InferResult> {
    const p = this.send(target, req, deadlineMs);
    const tell = this.opts.outcome;
    if (tell) p.then(() => tell(req.model, 'ok'), (e: BrokerError) => tell(req.model, e.code ?? 'INTERNAL'));
    return p;
  }

  private send(target: { broker: string; url: string }, req: InferRequest, deadlineMs: number): Promise<InferResult> {
    if (target.url === '') return Promise.reject(new BrokerError('UNAVAILABLE', `broker '${target.broker}' has not published its forwarding address yet; retry`));
    const left = deadlineMs - Date.now();
    if (left <= 0) return Promise.reject(new BrokerError('DEADLINE_EXCEEDED', `the deadline passed before request '${req.id}' could be forwarded to broker '${target.broker}'`));
    const params: Record<string, ParameterValue> = {};
    if (Number.isFinite(left)) params.timeout_ms = Math.max(1, Math.ceil(left));
    if (req.priority !== undefined) params.priority = req.priority;
    if (req.background) params.background = true; // a job stays behind live traffic on the owner too
    const header = create(InferRequestSchema, {
      id: req.id, model: req.model, version: req.version ?? '', inputs: req.inputs.map(toMeta), outputs: req.outputs ?? [],
      parameters: parametersToProto(params), sourceId: req.sequence?.id ?? '', start: req.sequence?.start ?? false, end: req.sequence?.end ?? false,
    });
    const body = frameBody(encodeFrames(InferRequestSchema, header, req.inputs));
    const length = body.reduce((n, b) => n + b.length, 0);
    const url = new URL(FORWARD_PATH, target.url);
    const lib = url.protocol === 'https:' ? https : http;
    const who = `broker '${target.broker}' (${target.url})`;
    const whom = req.sequence ? `the owner of sequence '${req.sequence.id}', ${who},` : who;
    return new Promise<InferResult>((resolve, reject) => {
      let settled = false;
      const done = (err: BrokerError | undefined, res?: InferResult) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        clearTimeout(connectTimer);
        req.signal?.removeEventListener('abort', onAbort);
        if (err) {
          out.destroy();
          reject(err);
        } else resolve(res!);
      };
      const out = lib.request(url, {
        method: 'POST',
        agent: url.protocol === 'https:' ? this.agents.https : this.agents.http,
        headers: { 'content-type': FRAMES_TYPE, 'content-length': length, [FORWARDED_BY]: this.opts.self, ...(this.opts.token ? { [CLUSTER_TOKEN]: this.opts.token } : {}) },
      }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', (e) => done(new BrokerError('UNAVAILABLE', `${who} went away while answering forwarded request '${req.id}': ${e.message}`, { cause: e })));
        res.on('aborted', () => done(new BrokerError('UNAVAILABLE', `${who} went away while answering forwarded request '${req.id}'`)));
        res.on('end', () => {
          if (!res.complete) return done(new BrokerError('UNAVAILABLE', `${who} went away while answering forwarded request '${req.id}'`));
          const data = Buffer.concat(chunks);
          if (res.statusCode !== 200) {
            return done(new BrokerError('UNAVAILABLE', `${who} refused forwarded request '${req.id}' with HTTP ${res.statusCode}: ${data.toString('utf8', 0, 300)}`));
          }
          try {
            done(undefined, this.decode(data, req));
          } catch (e) {
            done(e instanceof BrokerError ? e : new BrokerError('UNAVAILABLE', `${who} sent an unreadable answer to forwarded request '${req.id}': ${(e as Error).message}`));
          }
        });
      });
      let connectTimer: NodeJS.Timeout | undefined;
      out.on('socket', (sock) => {
        if (!sock.connecting) return;
        connectTimer = setTimeout(() => done(new BrokerError('UNAVAILABLE', `${whom} cannot be reached: no connection within ${CONNECT_MS} ms`)), Math.min(CONNECT_MS, left));
        sock.once('connect', () => clearTimeout(connectTimer));
      });
      out.on('error', (e: NodeJS.ErrnoException) => done(new BrokerError('UNAVAILABLE',
        `${whom} cannot be reached: ${e.code ?? e.message}`, { cause: e })));
      const timer = Number.isFinite(left)
        ? setTimeout(() => done(new BrokerError('DEADLINE_EXCEEDED', `deadline passed while request '${req.id}' was forwarded to ${who}`)), left)
        : undefined;
      const onAbort = () => done(new BrokerError('CANCELLED', 'the client cancelled the request'));
      req.signal?.addEventListener('abort', onAbort, { once: true });
      if (req.signal?.aborted) return onAbort();
      // One write: separate small writes of the length prefixes would each be a TCP segment.
      out.end(Buffer.concat(body, length));
    });
  }

  close(): void {
    this.agents.http.destroy();
    this.agents.https.destroy();
  }

  private decode(data: Buffer, req: InferRequest): InferResult {
    const frames = splitFrames(data, this.opts.maxFrames);
    const h = decodeHeader(InferReplySchema, frames[0]);
    const code = h.status?.code ?? 'INTERNAL';
    if (code !== 'OK') {
      throw new BrokerError(CODES.has(code) ? (code as ErrorCode) : 'INTERNAL', h.status?.message ?? '', { retryAfterMs: h.status?.retryAfterMs || undefined });
    }
    return { id: req.id, model: h.model, version: h.version, outputs: tensorsFromFrames(h.outputs, frames.slice(1)) };
  }
}
