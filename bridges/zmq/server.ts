/**
 * The ZeroMQ client bridge: a ROUTER for requests and replies (clients
 * connect a DEALER or REQ), protocol in proto/client.proto and
 * proto/README.md. It knows the broker's BrokerApi only.
 *
 * The ROUTER is ours (zmtp-router.ts, ZMTP 3.x over node:net), not libzmq's:
 * a message is bounded as a whole before it is received, a client's TCP close
 * is seen at once, and replies are written to its socket directly. Requests
 * are handed to the broker as they arrive (many per client, pipelined);
 * replies go out as they complete.
 */
import type { Logger } from 'pino';
import type { BrokerApi } from '../../core/broker';
import { BrokerError, toBrokerError } from '../../core/errors';
import type { InferRequest as CoreRequest, InferResult } from '../../core/types';
import {
  ClientDecodeError, InferReplySchema, InferRequestSchema, StatusSchema, decodeHeader, encodeFrames,
  parametersFromProto, peekId, tensorsFromFrames, toMeta, type InferRequest,
} from '../../proto/client';
import { create } from '@bufbuild/protobuf';
import { AccessControl, withoutLogLines } from '../shared/access';
import { bounded } from '../shared/bounded';
import { requestOptions } from '../shared/parameters';
import { SequenceOrder } from '../shared/sequence-order';
import type { JobsApi } from '../../jobs/types';
import { jobCall } from './jobs';
import { ZmtpRouter, type ZmtpConnection } from './zmtp-router';
import { stageTimer } from '../../core/stage-timings';

const PARSE = stageTimer('zmq', 'parse');
const ENCODE = stageTimer('zmq', 'encode');
const WRITE = stageTimer('zmq', 'write');

export interface ZmqBridgeOptions {
  broker: BrokerApi;
  /** Address to bind (e.g. 127.0.0.1, 0.0.0.0, ::1). */
  host: string;
  /** TCP port; 0 = a free port chosen by the OS. */
  port: number;
  /** Largest request accepted, all frames together, in bytes: a message over it is skipped as it arrives (never stored) and answered INVALID_ARGUMENT. */
  maxMessageBytes: number;
  /** Most frames in one request (routing id and delimiter not counted): header + tensors (+ key frame). Default 66. */
  maxFrames?: number;
  /** Who may call what (bridges/shared/access.ts): API keys for inference. Default: open. */
  access?: AccessControl;
  /**
   * Bytes of replies the bridge keeps for one client that does not read (its socket's
   * write buffer, beyond what the kernel holds): replies that do not fit are dropped
   * (logged); past it, new requests from that client are refused RESOURCE_EXHAUSTED and
   * its connection is not read until it drains. Default 64 MiB.
   */
  clientQueueBytes?: number;
  /** @deprecated Ignored: was libzmq's ZMQ_SNDHWM. Replies are bounded in bytes (clientQueueBytes). */
  sendHighWaterMark?: number;
  /** Connections at once; more are refused at accept. Default 1024. */
  maxConnections?: number;
  /** ZMTP 3.1 heartbeats: a PING to a client silent this long (default 5000 ms)... */
  heartbeatIntervalMs?: number;
  /** ...and the connection dropped (the client gone) after this long without traffic (default 15000 ms). */
  heartbeatTimeoutMs?: number;
  logger: Logger;
  /** On close: how long requests in flight get to finish before they are cancelled (default 5000 ms). */
  closeGraceMs?: number;
  /** Asynchronous jobs: requests with a `job` header are job operations (jobs.ts). */
  jobs?: JobsApi;
}

export interface ZmqBridge {
  port: number;
  /** The bound endpoint, e.g. tcp://127.0.0.1:7787. */
  endpoint: string;
  /** Bytes of replies waiting in the bridge for clients (written, not yet taken by the kernel). */
  backlogBytes(): number;
  /** Answers what is in flight (within closeGraceMs), then closes the socket. */
  close(): Promise<void>;
}

/** The optional first frame of a request that carries an API key: `tb-api-key:<key>` (a protobuf header never starts with 't'). */
export const KEY_FRAME_PREFIX = Buffer.from('tb-api-key:');

const EMPTY = Buffer.alloc(0);
/** Replies this small (error replies) may use ERROR_ROOM beyond clientQueueBytes; reading stops past the budget, so few do. */
const SMALL_REPLY = 4096;
const ERROR_ROOM = 1 << 20;
/** How long close() lets the sockets flush what is queued (libzmq's linger before). */
const LINGER_MS = 500;

const invalid = (msg: string) => new BrokerError('INVALID_ARGUMENT', msg);
const isKeyFrame = (f: Buffer | undefined) =>
  f !== undefined && f.length >= KEY_FRAME_PREFIX.length && f.subarray(0, KEY_FRAME_PREFIX.length).equals(KEY_FRAME_PREFIX);

function endpointOf(host: string, port: number): string {
  const h = host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
  return `tcp://${h}:${port}`;
}

export async function startZmqBridge(opts: ZmqBridgeOptions): Promise<ZmqBridge> {
  const bridge = new ZmqBridgeServer(opts);
  await bridge.start();
  return bridge;
}

type Client = ZmtpConnection;

class ZmqBridgeServer implements ZmqBridge {
  port = 0;
  endpoint = '';
  private readonly router: ZmtpRouter;
  private readonly log: Logger;
  /** Requests handed to the broker, per client (routing id): cancelled when the client is gone. */
  private readonly pending = new Map<string, Set<AbortController>>();
  /** Per client: aborted when it is gone, which cancels its sequences. */
  private readonly owners = new Map<string, AbortController>();
  /** Replies dropped per client since it last had room (one error log per episode). */
  private readonly dropped = new Map<string, number>();
  private readonly order = new SequenceOrder();
  private inFlight = 0;
  private idleWaiters: (() => void)[] = [];
  private seq = 0;
  private closing = false;
  private closePromise?: Promise<void>;
  private readonly access: AccessControl;
  private readonly maxFrames: number;
  private readonly clientQueueBytes: number;

  constructor(private readonly opts: ZmqBridgeOptions) {
    this.log = opts.logger.child({ bridge: 'zmq' });
    this.access = opts.access ?? new AccessControl();
    this.maxFrames = opts.maxFrames ?? 66;
    this.clientQueueBytes = opts.clientQueueBytes ?? 64 * 1024 * 1024;
    this.router = new ZmtpRouter({
      host: opts.host, port: opts.port, logger: this.log,
      // One more frame than maxFrames: a REQ client's empty delimiter (handle() counts without it).
      limits: { maxMessageBytes: opts.maxMessageBytes, maxFrames: this.maxFrames + 1 },
      maxConnections: opts.maxConnections,
      pauseAboveBytes: this.clientQueueBytes,
      heartbeatIntervalMs: opts.heartbeatIntervalMs ?? 5000,
      heartbeatTimeoutMs: opts.heartbeatTimeoutMs ?? 15_000,
      onMessage: (c, frames) => this.handle(c, frames),
      onOversized: (c, leading, frames, bytes) => this.oversized(c, leading, frames, bytes),
      onGone: (c, reason) => this.gone(c, reason),
    });
  }

  async start(): Promise<void> {
    this.port = await this.router.listen();
    this.endpoint = endpointOf(this.opts.host, this.port);
    this.log.info({ endpoint: this.endpoint, maxMessageBytes: this.opts.maxMessageBytes }, 'zmq bridge bound');
  }

  backlogBytes(): number {
    return this.router.pendingBytes();
  }

  close(): Promise<void> {
    this.closePromise ??= this.shutdown();
    return this.closePromise;
  }

  private async shutdown(): Promise<void> {
    this.closing = true; // requests arriving from now on are answered UNAVAILABLE
    const grace = this.opts.closeGraceMs ?? 5000;
    if (this.inFlight > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        new Promise<void>((r) => this.idleWaiters.push(r)),
        new Promise<void>((r) => (timer = setTimeout(r, grace))),
      ]);
      clearTimeout(timer);
      if (this.inFlight > 0) {
        this.log.warn({ inFlight: this.inFlight }, 'zmq bridge closing: cancelling requests still in flight');
        for (const set of this.pending.values()) for (const ac of set) ac.abort();
      }
    }
    // The replies written so far are flushed (up to LINGER_MS), then the connections close.
    await this.router.close(LINGER_MS);
    this.log.info('zmq bridge closed');
  }

  /** Sends a reply unless the client is gone or it would take the client's unread replies over clientQueueBytes. */
  private deliver(c: Client, frames: Buffer[], at?: number): void {
    if (c.closed) {
      this.log.debug({ client: c.id }, 'zmq: reply to a client that is gone dropped');
      return;
    }
    let bytes = 0;
    for (const f of frames) bytes += f.length;
    const waiting = c.pendingBytes();
    // Error replies (no tensors) get some room past the budget, so a refusal still reaches the client.
    const room = bytes <= SMALL_REPLY ? this.clientQueueBytes + ERROR_ROOM : this.clientQueueBytes;
    if (waiting > 0 && waiting + bytes > room) {
      const n = (this.dropped.get(c.id) ?? 0) + 1;
      this.dropped.set(c.id, n);
      if (n === 1) {
        this.log.error({ client: c.id, heldBytes: waiting, limit: this.clientQueueBytes }, 'zmq: client does not read its replies: over its byte budget, replies dropped');
      }
      return;
    }
    const dropped = this.dropped.get(c.id);
    if (dropped !== undefined && waiting === 0) {
      this.dropped.delete(c.id);
      this.log.warn({ client: c.id, dropped }, 'zmq: client reads again');
    }
    c.send(frames);
    if (at !== undefined) WRITE.since(at);
  }

  /** The client's connection ended: nothing can reach it any more, so its requests and sequences are cancelled. */
  private gone(c: Client, reason: string): void {
    const set = this.pending.get(c.id);
    const owner = this.owners.get(c.id);
    if (set && set.size > 0) this.log.warn({ client: c.id, reason, cancelled: set.size }, 'zmq: client disconnected; its requests and sequences cancelled');
    else if (owner) this.log.info({ client: c.id, reason }, 'zmq: client gone; its sequences cancelled');
    if (set) for (const ac of set) ac.abort();
    owner?.abort();
    this.owners.delete(c.id);
    this.dropped.delete(c.id);
  }

  /** A message over maxMessageBytes or maxFrames, skipped as it arrived: answered from its first frames. */
  private oversized(c: Client, leading: Buffer[], count: number, bytes: number): void {
    let head = leading;
    let prefix: Buffer[] = [];
    if (count >= 2 && head.length > 0 && head[0].length === 0) {
      prefix = [EMPTY]; // a REQ client's delimiter
      head = head.slice(1);
      count--;
    }
    if (isKeyFrame(head[0])) head = head.slice(1);
    const what = bytes > this.opts.maxMessageBytes ? `${bytes} bytes; the limit is ${this.opts.maxMessageBytes}` : `${count} frames; the limit is ${this.maxFrames}`;
    this.log.warn({ client: c.id, bytes, frames: count }, 'zmq: oversized message refused');
    this.fail(prefix, c, { id: peekId(head[0]) }, invalid(`the message has ${what}`));
  }

  private handle(c: Client, frames: Buffer[]): void {
    const t0 = performance.now();
    let body = frames;
    // A REQ client puts an empty delimiter frame first; echo it so the reply reaches it.
    const prefix = body.length >= 2 && body[0].length === 0 ? [EMPTY] : [];
    if (prefix.length === 1) body = body.slice(1);

    let total = 0;
    for (const f of body) total += f.length;
    if (total > this.opts.maxMessageBytes || body.length > this.maxFrames) {
      // Only one frame over maxFrames gets here (the router's limit leaves room for a REQ delimiter); bigger ones are oversized().
      const what = total > this.opts.maxMessageBytes ? `${total} bytes; the limit is ${this.opts.maxMessageBytes}` : `${body.length} frames; the limit is ${this.maxFrames}`;
      this.log.warn({ client: c.id, bytes: total, frames: body.length }, 'zmq: oversized message refused');
      return this.fail(prefix, c, { id: peekId(isKeyFrame(body[0]) ? body[1] : body[0]) }, invalid(`the message has ${what}`));
    }
    // Optional API key frame before the header.
    let credential: string | undefined;
    if (isKeyFrame(body[0])) {
      credential = body[0].subarray(KEY_FRAME_PREFIX.length).toString('utf8');
      body = body.slice(1);
    }
    const refused = this.access.check('infer', { credential });
    if (refused) return this.fail(prefix, c, { id: peekId(body[0]) }, refused);
    if (c.pendingBytes() > this.clientQueueBytes) {
      return this.fail(prefix, c, { id: peekId(body[0]) }, new BrokerError('RESOURCE_EXHAUSTED', 'this client has too many unread replies: read them first', 100));
    }
    let header: InferRequest;
    try {
      header = decodeHeader(InferRequestSchema, body[0]);
    } catch (err) {
      return this.fail(prefix, c, { id: peekId(body[0]) }, invalid(bounded((err as Error).message)));
    }
    const id = header.id !== '' ? header.id : `zmq-${++this.seq}`;
    const ctx = { id, model: header.model, version: header.version };
    if (this.closing) return this.fail(prefix, c, ctx, new BrokerError('UNAVAILABLE', 'the broker is shutting down'));
    if (header.job) return this.runJob(prefix, c, header, body.slice(1), credential, ctx);
    let req: CoreRequest;
    try {
      req = this.toRequest(header, id, body.slice(1), c.id);
    } catch (err) {
      return this.fail(prefix, c, ctx, err instanceof ClientDecodeError ? invalid(bounded(err.message)) : toBrokerError(err));
    }
    PARSE.since(t0);
    this.run(prefix, c, req);
  }

  private toRequest(h: InferRequest, id: string, frames: Buffer[], peer: string): CoreRequest {
    if (h.model === '') throw invalid('the request names no model');
    this.opts.broker.describe(h.model, h.version); // NOT_FOUND before looking at the tensors
    const inputs = tensorsFromFrames(h.inputs, frames);
    if (inputs.length === 0) throw invalid('the request has no input tensors');
    const options = requestOptions(parametersFromProto(h.parameters));
    // Sequence control: source_id + start/end (fields 16-18), or the KServe parameters; not both.
    if (h.sourceId !== '' || h.start || h.end) {
      if (options.sequence) throw invalid('give the sequence either as source_id/start/end or as sequence_* parameters, not both');
      if (h.sourceId === '') throw invalid('start / end need a source_id');
      if (h.sourceId.length > 256) throw invalid('source_id is longer than 256 characters');
      options.sequence = { id: h.sourceId, start: h.start, end: h.end };
    }
    if (options.sequence) options.sequence = { ...options.sequence, owner: this.owner(peer).signal };
    return {
      id,
      model: h.model,
      version: h.version !== '' ? h.version : undefined,
      inputs,
      outputs: h.outputs.length > 0 ? [...h.outputs] : undefined,
      ...options,
    };
  }

  /** Aborted when the client is gone: cancels the sequences it fed. */
  private owner(peer: string): AbortController {
    let ac = this.owners.get(peer);
    if (!ac) this.owners.set(peer, (ac = new AbortController()));
    return ac;
  }

  private run(prefix: Buffer[], c: Client, req: CoreRequest): void {
    const peer = c.id;
    const ac = new AbortController();
    let set = this.pending.get(peer);
    if (!set) this.pending.set(peer, (set = new Set()));
    set.add(ac);
    this.inFlight++;
    // Replies go out as they complete; those of one sequence in arrival order.
    const key = req.sequence ? `${peer}\0${req.model}\0${req.sequence.id}` : undefined;
    this.order.run(key, this.opts.broker.infer({ ...req, signal: ac.signal }), (result, err) => {
      if (result) this.succeed(prefix, c, result);
      else this.fail(prefix, c, req, toBrokerError(err));
    }).catch((err: unknown) => {
      this.log.error({ err, client: peer, id: req.id }, 'zmq: reply could not be encoded');
      this.fail(prefix, c, req, new BrokerError('INTERNAL', 'the reply could not be encoded'));
    }).finally(() => {
      set.delete(ac);
      if (set.size === 0 && this.pending.get(peer) === set) this.pending.delete(peer);
      if (--this.inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
    });
  }

  /** A job operation: one reply with the job (and a succeeded result's outputs as frames). */
  private runJob(prefix: Buffer[], c: Client, h: InferRequest, frames: Buffer[], credential: string | undefined, ctx: { id: string; model: string; version: string }): void {
    // Registered like an inference: a WATCH waiting for a change ends when the client is gone or the bridge closes.
    const peer = c.id;
    const ac = new AbortController();
    let set = this.pending.get(peer);
    if (!set) this.pending.set(peer, (set = new Set()));
    set.add(ac);
    this.inFlight++;
    jobCall({ broker: this.opts.broker, jobs: this.opts.jobs, access: this.access }, h, frames, credential, ac.signal).then((r) => {
      const outputs = r.outputs ?? [];
      const header = create(InferReplySchema, {
        id: ctx.id, model: r.model ?? ctx.model, version: r.version ?? ctx.version,
        status: create(StatusSchema, { code: 'OK' }), outputs: outputs.map(toMeta),
        job: r.job, jobs: r.jobs ?? [], nextCursor: r.nextCursor ?? '',
      });
      this.deliver(c, [...prefix, ...encodeFrames(InferReplySchema, header, outputs)]);
    }, (err: unknown) => this.fail(prefix, c, ctx, err instanceof ClientDecodeError ? invalid(bounded(err.message)) : toBrokerError(err)))
      .finally(() => {
        set.delete(ac);
        if (set.size === 0 && this.pending.get(peer) === set) this.pending.delete(peer);
        if (--this.inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
      });
  }

  private succeed(prefix: Buffer[], c: Client, r: InferResult): void {
    const t0 = performance.now();
    const header = create(InferReplySchema, {
      id: r.id, model: r.model, version: r.version,
      status: create(StatusSchema, { code: 'OK' }),
      outputs: r.outputs.map(toMeta),
    });
    // Output frames are the broker's buffers (views of the model's reply): no copy.
    const frames = [...prefix, ...encodeFrames(InferReplySchema, header, r.outputs)];
    this.deliver(c, frames, ENCODE.since(t0));
  }

  private fail(prefix: Buffer[], c: Client, ctx: { id: string; model?: string; version?: string }, err: BrokerError): void {
    if (err.code === 'INVALID_ARGUMENT' || err.code === 'NOT_FOUND') {
      this.log.debug({ client: c.id, id: bounded(ctx.id, 256), model: bounded(ctx.model ?? '', 256), code: err.code, err: { message: bounded(err.message) } }, 'zmq: request refused');
    }
    const header = create(InferReplySchema, {
      id: ctx.id, model: ctx.model ?? '', version: ctx.version ?? '',
      status: create(StatusSchema, {
        code: err.code,
        message: bounded(withoutLogLines(err.message)),
        retryAfterMs: err.retryAfterMs !== undefined ? Math.max(0, Math.ceil(err.retryAfterMs)) : 0,
      }),
    });
    this.deliver(c, [...prefix, ...encodeFrames(InferReplySchema, header)]);
  }
}
