/**
 * The owner's side of forwarding: POST /internal/cluster/infer on the HTTP
 * port takes a request another broker forwarded (frames, see frames.ts) and
 * runs it through BrokerApi.infer() marked `forwardedBy`, so it is served
 * here and never forwarded again. Every outcome is one 200 answer whose header
 * carries the status (the sender relays it); only a missing or wrong cluster
 * token (401/403) or an unreadable body (400) is an HTTP error.
 */
import { timingSafeEqual } from 'node:crypto';
import { create } from '@bufbuild/protobuf';
import type { FastifyInstance, FastifyPluginAsync } from 'fastify';
import type { BrokerApi } from '../core/broker';
import { toBrokerError } from '../core/errors';
import type { InferRequest } from '../core/types';
import {
  ClientDecodeError, InferReplySchema, InferRequestSchema, StatusSchema, decodeHeader, encodeFrames, tensorsFromFrames, toMeta,
} from '../proto/client';
import { CLUSTER_TOKEN, FORWARD_PATH, FORWARDED_BY } from './forwarder';
import { FRAMES_TYPE, frameBody, splitFrames } from './frames';

export interface ForwardRouteOptions {
  broker: BrokerApi;
  bodyLimit: number;
  maxFrames: number;
  /** When set, a forwarded request must carry it in x-tb-cluster-token. */
  token?: string;
}

function sameToken(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

const int = (p: { parameterChoice: { case?: string; value?: unknown } } | undefined): number | undefined =>
  p?.parameterChoice.case === 'int64Param' ? Number(p.parameterChoice.value as bigint) : undefined;

export const forwardRoute: FastifyPluginAsync<ForwardRouteOptions> = async (app: FastifyInstance, opts) => {
  app.addContentTypeParser(FRAMES_TYPE, { parseAs: 'buffer', bodyLimit: opts.bodyLimit }, (_req, body, done) => done(null, body));
  app.post(FORWARD_PATH, async (request, reply) => {
    const from = request.headers[FORWARDED_BY];
    if (typeof from !== 'string' || from === '') return reply.code(400).send({ error: `a forwarded request names its sender in ${FORWARDED_BY}` });
    if (opts.token !== undefined) {
      const given = request.headers[CLUSTER_TOKEN];
      if (typeof given !== 'string') return reply.code(401).send({ error: `forwarding between brokers needs the cluster token (${CLUSTER_TOKEN})` });
      if (!sameToken(given, opts.token)) return reply.code(403).send({ error: 'wrong cluster token' });
    }
    let req: InferRequest;
    try {
      const frames = splitFrames(request.body as Buffer, opts.maxFrames);
      const h = decodeHeader(InferRequestSchema, frames[0]);
      const aborted = new AbortController();
      reply.raw.on('close', () => {
        if (!reply.raw.writableFinished) aborted.abort();
      });
      req = {
        id: h.id, model: h.model, version: h.version || undefined, inputs: tensorsFromFrames(h.inputs, frames.slice(1)),
        outputs: h.outputs.length > 0 ? h.outputs : undefined, priority: int(h.parameters.priority), timeoutMs: int(h.parameters.timeout_ms),
        sequence: h.sourceId !== '' ? { id: h.sourceId, start: h.start, end: h.end } : undefined,
        signal: aborted.signal, forwardedBy: from,
      };
      if (h.parameters.background?.parameterChoice.case === 'boolParam' && h.parameters.background.parameterChoice.value) req.background = true;
    } catch (e) {
      if (e instanceof ClientDecodeError) return reply.code(400).send({ error: e.message });
      throw e;
    }
    let frames: Buffer[];
    try {
      const r = await opts.broker.infer(req);
      frames = encodeFrames(InferReplySchema, create(InferReplySchema, {
        id: r.id, model: r.model, version: r.version, status: create(StatusSchema, { code: 'OK' }), outputs: r.outputs.map(toMeta),
      }), r.outputs);
    } catch (e) {
      const err = toBrokerError(e);
      frames = encodeFrames(InferReplySchema, create(InferReplySchema, {
        id: req.id, model: req.model, status: create(StatusSchema, { code: err.code, message: err.message, retryAfterMs: err.retryAfterMs ?? 0 }),
      }));
    }
    return reply.type(FRAMES_TYPE).send(Buffer.concat(frameBody(frames)));
  });
};
