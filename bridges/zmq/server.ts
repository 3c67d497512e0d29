/**
 * The ZeroMQ client bridge: one ROUTER socket for requests and replies
 * (clients connect a DEALER), protocol in proto/client.proto and
 * proto/README.md. It knows the broker's BrokerApi only.
 *
 * zeromq.js allows one pending send and one pending receive per socket, so
 * the bridge runs one receive loop and one send loop fed by a queue. Requests
 * are handed to the broker as they arrive (many per client, pipelined);
 * replies are queued as they complete.
 */
import type { Logger } from 'pino';
import { Router } from 'zeromq';
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
  /** Largest request accepted, all frames together, in bytes. Also the socket's ZMQ_MAXMSGSIZE (per frame). */
  maxMessageBytes: number;
  /** Most frames in one request (routing id and delimiter not counted): header + tensors (+ key frame). Default 66. */
  maxFrames?: number;
  /** Who may call what (bridges/shared/access.ts): API keys for inference. Default: open. */
  access?: AccessControl;
  /**
   * Bytes of replies the bridge keeps for one client that does not read (beyond the
   * `sendHighWaterMark` replies libzmq holds): past it, new requests from that client are
   * refused RESOURCE_EXHAUSTED and replies that still do not fit are dropped (logged). Default 64 MiB.
   */
  clientQueueBytes?: number;
  /** ZMQ_SNDHWM: replies libzmq holds per client beyond the kernel's socket buffer. Default 16. */
  sendHighWaterMark?: number;
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
  /** Bytes of replies waiting in the bridge for clients (send queue and held back for clients that do not read). */
  backlogBytes(): number;
  /** Answers what is in flight (within closeGraceMs), then closes the socket. */
  close(): Promise<void>;
}

/** `at`: performance.now() when an answer was queued (the write stage). */
type Reply = { frames: Buffer[]; peer: string; bytes: number; at?: number };
type Outgoing = Reply | { flushed: () => void } | { retry: string };

/** Replies held back for one client whose libzmq queue is full (EAGAIN), oldest first. */
interface Held {
  items: Reply[];
  bytes: number;
  delayMs: number;
  timer?: NodeJS.Timeout;
  dropped: number;
}

/** The optional first frame of a request that carries an API key: `tb-api-key:<key>` (a protobuf header never starts with 't'). */
export const KEY_FRAME_PREFIX = Buffer.from('tb-api-key:');
/** Messages libzmq queues per client before the bridge reads them: with ZMQ_MAXMSGSIZE, bounds what a fast sender can park in memory. */
const RECEIVE_HWM = 16;


const EMPTY = Buffer.alloc(0);
/** Replies libzmq queues per client before a send fails with EAGAIN (the bridge then holds them, bounded in bytes). */
const SEND_HWM = 16;
const RETRY_MAX_MS = 100;
/** Client ids remembered as gone (their remaining replies are dropped quietly). */
const GONE_LIMIT = 10_000;

const invalid = (msg: string) => new BrokerError('INVALID_ARGUMENT', msg);

function bindAddress(host: string, port: number): string {
  const h = host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
  return `tcp://${h}:${port === 0 ? '*' : port}`;
}

export async function startZmqBridge(opts: ZmqBridgeOptions): Promise<ZmqBridge> {
  const bridge = new ZmqBridgeServer(opts);
  await bridge.start();
  return bridge;
}

class ZmqBridgeServer implements ZmqBridge {
  port = 0;
  endpoint = '';
  private readonly router: Router;
  private readonly log: Logger;
  private readonly queue: Outgoing[] = [];
  private wake?: () => void;
  /** Requests handed to the broker, per client (routing id, hex): cancelled when the client is found gone. */
  private readonly pending = new Map<string, Set<AbortController>>();
  private readonly gone = new Set<string>();
  /** Per client: aborted when it is found gone, which cancels its sequences. */
  private readonly owners = new Map<string, AbortController>();
  private readonly order = new SequenceOrder();
  private inFlight = 0;
  private idleWaiters: (() => void)[] = [];
  private seq = 0;
  private closing = false;
  private closed = false;
  private closePromise?: Promise<void>;
  private loops: Promise<void>[] = [];
  /** Bytes of replies waiting in `queue`, per client. */
  private readonly queuedBytes = new Map<string, number>();
  /** Per client that does not read: replies waiting for room in libzmq, bounded by clientQueueBytes. */
  private readonly held = new Map<string, Held>();
  private readonly access: AccessControl;
  private readonly maxFrames: number;
  private readonly clientQueueBytes: number;

  constructor(private readonly opts: ZmqBridgeOptions) {
    this.log = opts.logger.child({ bridge: 'zmq' });
    this.access = opts.access ?? new AccessControl();
    this.maxFrames = opts.maxFrames ?? 66;
    this.clientQueueBytes = opts.clientQueueBytes ?? 64 * 1024 * 1024;
    this.router = new Router({
      mandatory: true, // unroutable replies fail with EHOSTUNREACH instead of vanishing
      sendTimeout: 0, // never block the send loop on one slow client: EAGAIN instead
      sendHighWaterMark: opts.sendHighWaterMark ?? SEND_HWM,
      receiveHighWaterMark: RECEIVE_HWM,
      // libzmq checks this per frame, as it decodes each one (a bigger frame drops the connection).
      maxMessageSize: opts.maxMessageBytes,
      linger: 500,
      // ZMTP heartbeats: half-open connections are dropped, so replies to dead clients fail fast.
      heartbeatInterval: 5000,
      heartbeatTimeout: 15_000,
      ipv6: opts.host.includes(':'),
    });
  }

  async start(): Promise<void> {
    await this.router.bind(bindAddress(this.opts.host, this.opts.port));
    this.endpoint = this.router.lastEndpoint ?? bindAddress(this.opts.host, this.opts.port);
    const m = /:(\d+)$/.exec(this.endpoint);
    this.port = m ? Number(m[1]) : this.opts.port;
    this.loops = [this.receiveLoop(), this.sendLoop()];
    this.log.info({ endpoint: this.endpoint, maxMessageBytes: this.opts.maxMessageBytes }, 'zmq bridge bound');
  }

  backlogBytes(): number {
    let n = 0;
    for (const b of this.queuedBytes.values()) n += b;
    for (const h of this.held.values()) n += h.bytes;
    return n;
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
    // Let the replies queued so far reach the socket, then close it (linger flushes them to the wire).
    await new Promise<void>((flushed) => this.push({ flushed }));
    this.closed = true;
    for (const h of this.held.values()) clearTimeout(h.timer);
    this.held.clear();
    this.wake?.();
    this.router.close();
    await Promise.allSettled(this.loops);
    this.log.info('zmq bridge closed');
  }

  private push(item: Outgoing): void {
    if ('peer' in item) this.queuedBytes.set(item.peer, (this.queuedBytes.get(item.peer) ?? 0) + item.bytes);
    this.queue.push(item);
    this.wake?.();
  }

  private dequeued(peer: string, bytes: number): void {
    const left = (this.queuedBytes.get(peer) ?? 0) - bytes;
    if (left > 0) this.queuedBytes.set(peer, left);
    else this.queuedBytes.delete(peer);
  }

  private async sendLoop(): Promise<void> {
    while (!this.closed) {
      const item = this.queue.shift();
      if (!item) {
        await new Promise<void>((resolve) => (this.wake = resolve));
        this.wake = undefined;
        continue;
      }
      if ('flushed' in item) {
        item.flushed();
        continue;
      }
      if ('retry' in item) {
        await this.sendHeld(item.retry);
        continue;
      }
      this.dequeued(item.peer, item.bytes);
      if (this.gone.has(item.peer)) {
        this.log.debug({ client: item.peer }, 'zmq: reply to a client that is gone dropped');
        continue;
      }
      const held = this.held.get(item.peer);
      if (held) {
        this.hold(held, item); // keep the client's order: behind what is already waiting
        continue;
      }
      try {
        await this.router.send(item.frames);
        if (item.at !== undefined) WRITE.since(item.at);
      } catch (err) {
        if (this.closed) return;
        if ((err as { code?: string }).code === 'EAGAIN') {
          const h: Held = { items: [], bytes: 0, delayMs: 1, dropped: 0 };
          this.held.set(item.peer, h);
          this.hold(h, item);
          this.retryLater(item.peer, h);
        } else this.undelivered(item.peer, err);
      }
    }
  }

  /** Bytes waiting for one client, in the send queue and held back. */
  private backlog(peer: string): number {
    return (this.queuedBytes.get(peer) ?? 0) + (this.held.get(peer)?.bytes ?? 0);
  }

  private hold(h: Held, item: Reply): void {
    if (h.bytes + item.bytes > this.clientQueueBytes) {
      if (h.dropped++ === 0) {
        this.log.error({ client: item.peer, heldBytes: h.bytes, limit: this.clientQueueBytes }, 'zmq: client does not read its replies: over its byte budget, replies dropped');
      }
      return;
    }
    h.items.push(item);
    h.bytes += item.bytes;
  }

  private retryLater(peer: string, h: Held): void {
    h.timer = setTimeout(() => this.push({ retry: peer }), h.delayMs);
    h.delayMs = Math.min(RETRY_MAX_MS, h.delayMs * 2);
  }

  /** Sends what is held for `peer` until libzmq is full again (then retries later) or nothing is left. */
  private async sendHeld(peer: string): Promise<void> {
    const h = this.held.get(peer);
    if (!h) return;
    while (h.items.length > 0) {
      try {
        await this.router.send(h.items[0].frames);
      } catch (err) {
        if (this.closed) return;
        if ((err as { code?: string }).code === 'EAGAIN') return this.retryLater(peer, h);
        this.held.delete(peer);
        return this.undelivered(peer, err);
      }
      h.bytes -= h.items.shift()!.bytes;
      h.delayMs = 1;
    }
    this.held.delete(peer);
    if (h.dropped > 0) this.log.warn({ client: peer, dropped: h.dropped }, 'zmq: client reads again');
  }

  /** A reply could not be sent: the client disconnected (EHOSTUNREACH) or stopped reading (EAGAIN). */
  private undelivered(peer: string, err: unknown): void {
    const code = (err as { code?: string }).code;
    if (code === 'EHOSTUNREACH') {
      const set = this.pending.get(peer);
      this.log.warn({ client: peer, cancelled: set?.size ?? 0 }, 'zmq: client disconnected; reply dropped, its queued requests cancelled');
      if (this.gone.size >= GONE_LIMIT) this.gone.clear();
      this.gone.add(peer);
      if (set) for (const ac of set) ac.abort();
      this.owners.get(peer)?.abort();
      this.owners.delete(peer);
    } else {
      this.log.error({ client: peer, err }, 'zmq: reply not sent');
    }
  }

  private async receiveLoop(): Promise<void> {
    while (!this.closed) {
      let frames: Buffer[];
      try {
        frames = await this.router.receive();
      } catch (err) {
        if (this.closed) return;
        this.log.error({ err }, 'zmq: receive failed');
        await new Promise((r) => setTimeout(r, 10));
        continue;
      }
      try {
        this.handle(frames);
      } catch (err) {
        // handle() answers every error it expects; this is a last line against a crash.
        this.log.error({ err }, 'zmq: unexpected error handling a message');
      }
    }
  }

  private handle(frames: Buffer[]): void {
    const t0 = performance.now();
    const rid = frames[0];
    const peer = rid.toString('hex');
    this.gone.delete(peer);
    let body = frames.slice(1);
    // A REQ client puts an empty delimiter frame first; echo it so the reply reaches it.
    const prefix = body.length >= 2 && body[0].length === 0 ? [rid, EMPTY] : [rid];
    if (prefix.length === 2) body = body.slice(1);

    let total = 0;
    for (const f of body) total += f.length;
    if (total > this.opts.maxMessageBytes || body.length > this.maxFrames) {
      // libzmq has already assembled it (ZMQ_MAXMSGSIZE bounds frames, not messages; RECEIVE_HWM bounds how many wait).
      const what = total > this.opts.maxMessageBytes ? `${total} bytes; the limit is ${this.opts.maxMessageBytes}` : `${body.length} frames; the limit is ${this.maxFrames}`;
      this.log.warn({ client: peer, bytes: total, frames: body.length }, 'zmq: oversized message refused');
      return this.fail(prefix, peer, { id: peekId(body[0]) }, invalid(`the message has ${what}`));
    }
    // Optional API key frame before the header.
    let credential: string | undefined;
    if (body.length > 0 && body[0].length >= KEY_FRAME_PREFIX.length && body[0].subarray(0, KEY_FRAME_PREFIX.length).equals(KEY_FRAME_PREFIX)) {
      credential = body[0].subarray(KEY_FRAME_PREFIX.length).toString('utf8');
      body = body.slice(1);
    }
    const refused = this.access.check('infer', { credential });
    if (refused) return this.fail(prefix, peer, { id: peekId(body[0]) }, refused);
    if (this.backlog(peer) > this.clientQueueBytes) {
      return this.fail(prefix, peer, { id: peekId(body[0]) }, new BrokerError('RESOURCE_EXHAUSTED', 'this client has too many unread replies: read them first', 100));
    }
    let header: InferRequest;
    try {
      header = decodeHeader(InferRequestSchema, body[0]);
    } catch (err) {
      return this.fail(prefix, peer, { id: peekId(body[0]) }, invalid(bounded((err as Error).message)));
    }
    const id = header.id !== '' ? header.id : `zmq-${++this.seq}`;
    const ctx = { id, model: header.model, version: header.version };
    if (this.closing) return this.fail(prefix, peer, ctx, new BrokerError('UNAVAILABLE', 'the broker is shutting down'));
    if (header.job) return this.runJob(prefix, peer, header, body.slice(1), credential, ctx);
    let req: CoreRequest;
    try {
      req = this.toRequest(header, id, body.slice(1), peer);
    } catch (err) {
      return this.fail(prefix, peer, ctx, err instanceof ClientDecodeError ? invalid(bounded(err.message)) : toBrokerError(err));
    }
    PARSE.since(t0);
    this.run(prefix, peer, req);
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

  /** Aborted when the client is found gone: cancels the sequences it fed. */
  private owner(peer: string): AbortController {
    let ac = this.owners.get(peer);
    if (!ac) {
      if (this.owners.size >= GONE_LIMIT) this.owners.clear();
      this.owners.set(peer, (ac = new AbortController()));
    }
    return ac;
  }

  private run(prefix: Buffer[], peer: string, req: CoreRequest): void {
    const ac = new AbortController();
    let set = this.pending.get(peer);
    if (!set) this.pending.set(peer, (set = new Set()));
    set.add(ac);
    this.inFlight++;
    // Replies go out as they complete; those of one sequence in arrival order.
    const key = req.sequence ? `${peer}\0${req.model}\0${req.sequence.id}` : undefined;
    this.order.run(key, this.opts.broker.infer({ ...req, signal: ac.signal }), (result, err) => {
      if (result) this.succeed(prefix, peer, result);
      else this.fail(prefix, peer, req, toBrokerError(err));
    }).catch((err: unknown) => {
      this.log.error({ err, client: peer, id: req.id }, 'zmq: reply could not be encoded');
      this.fail(prefix, peer, req, new BrokerError('INTERNAL', 'the reply could not be encoded'));
    }).finally(() => {
      set.delete(ac);
      if (set.size === 0 && this.pending.get(peer) === set) this.pending.delete(peer);
      if (--this.inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
    });
  }

  /** A job operation: one reply with the job (and a succeeded result's outputs as frames). */
  private runJob(prefix: Buffer[], peer: string, h: InferRequest, frames: Buffer[], credential: string | undefined, ctx: { id: string; model: string; version: string }): void {
    // Registered like an inference: a WATCH waiting for a change ends when the client is gone or the bridge closes.
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
      const reply = [...prefix, ...encodeFrames(InferReplySchema, header, outputs)];
      this.push({ frames: reply, peer, bytes: reply.reduce((n, f) => n + f.length, 0) });
    }, (err: unknown) => this.fail(prefix, peer, ctx, err instanceof ClientDecodeError ? invalid(bounded(err.message)) : toBrokerError(err)))
      .finally(() => {
        set.delete(ac);
        if (set.size === 0 && this.pending.get(peer) === set) this.pending.delete(peer);
        if (--this.inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
      });
  }

  private succeed(prefix: Buffer[], peer: string, r: InferResult): void {
    const t0 = performance.now();
    const header = create(InferReplySchema, {
      id: r.id, model: r.model, version: r.version,
      status: create(StatusSchema, { code: 'OK' }),
      outputs: r.outputs.map(toMeta),
    });
    // Output frames are the broker's buffers (views of the model's reply): no copy.
    const frames = [...prefix, ...encodeFrames(InferReplySchema, header, r.outputs)];
    const at = ENCODE.since(t0);
    this.push({ frames, peer, bytes: frames.reduce((n, f) => n + f.length, 0), at });
  }

  private fail(prefix: Buffer[], peer: string, ctx: { id: string; model?: string; version?: string }, err: BrokerError): void {
    if (err.code === 'INVALID_ARGUMENT' || err.code === 'NOT_FOUND') {
      this.log.debug({ client: peer, id: bounded(ctx.id, 256), model: bounded(ctx.model ?? '', 256), code: err.code, err: { message: bounded(err.message) } }, 'zmq: request refused');
    }
    const header = create(InferReplySchema, {
      id: ctx.id, model: ctx.model ?? '', version: ctx.version ?? '',
      status: create(StatusSchema, {
        code: err.code,
        message: bounded(withoutLogLines(err.message)),
        retryAfterMs: err.retryAfterMs !== undefined ? Math.max(0, Math.ceil(err.retryAfterMs)) : 0,
      }),
    });
    const frames = [...prefix, ...encodeFrames(InferReplySchema, header)];
    this.push({ frames, peer, bytes: frames.reduce((n, f) => n + f.length, 0) });
  }
}
