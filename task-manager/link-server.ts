/**
 * The broker's end of the link: one ZeroMQ ROUTER that every model copy's
 * DEALER connects to. One send queue and one receive loop (zeromq allows one
 * pending send and one pending receive per socket).
 *
 * Who may speak for a copy (see proto/README.md, "Copy identity"):
 * - each copy gets, in its env only, an unguessable routing id
 *   (`<copy id>.<token>`) and a secret; both are derived from a key that stays
 *   in the broker's folder (0600), so a restarted broker recognises the copies
 *   it adopts. Messages from any other routing id are refused, and a READY
 *   without the copy's secret is refused;
 * - with ipc, each copy connects to its own socket in its own folder
 *   (`<dir>/copies/<copy id>/`), the only folder mounted into its container, so
 *   a container cannot reach or replace another copy's (or the broker's) socket.
 *
 * The broker's own socket `<dir>/link.sock` is its lock: a broker that finds it
 * connectable refuses to start (another live broker has the same id/folder).
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { EventEmitter } from 'node:events';
import * as fss from 'node:fs';
import { promises as fs } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as zmq from 'zeromq';
import type { Logger } from 'pino';
import { create } from '@bufbuild/protobuf';
import { HeartbeatSchema, ShutdownSchema, decodeFrames, encodeFrames, LinkDecodeError, type DecodedMessage } from '../proto/link';
import { stageTimer } from '../core/stage-timings';
import type { LinkInfo } from './runtime';
import { zapDomain } from './zap';

const LINK_SEND = stageTimer('link', 'link_send');

/** What the link server routes a copy's messages to. */
export interface LinkPeer {
  /** A decoded message from the copy. May throw: the error is logged. */
  handle(msg: DecodedMessage): void;
  /** Called every heartbeat interval (after the broker's heartbeat was queued). */
  tick(now: number): void;
  /** True once the copy was heard from: broker heartbeats go only to those. */
  readonly connected: boolean;
  /**
   * An adopted copy (it sent READY with its secret to an earlier run of this broker):
   * its routing id, derived from the same key, is its proof; it sends no second READY.
   */
  readonly adopted?: boolean;
}

/** The link as a copy connection sees it. */
export interface LinkSender {
  /** `sent` runs once zeromq took the message (its send resolved or failed); libzmq may still hold frames over 128 bytes. */
  send(copyId: string, frames: Buffer[], sent?: () => void): void;
}

/** A message waiting for the send loop: when it was queued (performance.now()) and who waits for it. */
interface Outgoing {
  msg: Buffer[];
  at: number;
  sent?: () => void;
}

export interface LinkServerOptions {
  /** 'ipc' (default): socket files under socketDir. 'tcp': 127.0.0.1 on tcpPort (0 = any free port). */
  transport?: 'ipc' | 'tcp';
  /** Base folder of the ipc sockets (default /tmp/tensorbroker). With brokerId the broker's folder is `<socketDir>/<brokerId>`. */
  socketDir?: string;
  /** The broker's id: names its socket folder, so brokers with different ids never share a socket. */
  brokerId?: string;
  /** Socket file name (default link.sock). */
  socketName?: string;
  /** File mode of the sockets, so copies running as other users can connect (default 0o666). */
  socketMode?: number;
  tcpHost?: string;
  tcpPort?: number;
  /** Broker heartbeat interval (default 1000 ms). */
  heartbeatMs?: number;
  /**
   * tcp only: ZeroMQ CURVE (encrypted, authenticated). The broker's key pair
   * (Z85); copies get its public key. Only clients whose public key was allowed
   * (each process copy gets its own pair; see allowClientKey) complete the
   * handshake; others never get a message through.
   */
  curve?: { publicKey: string; secretKey: string };
  /** The endpoint copies dial when it differs from the bound one (a pod IP or a Service, e.g. tcp://10.0.3.7:7788). */
  advertise?: string;
  /**
   * Keep a READY from a routing id nobody registered for this long (and ignore
   * its heartbeats meanwhile) instead of refusing it at once: a pod can connect
   * before the broker's pod informer has reported the pod. Registering that
   * routing id within the time delivers the READY; after it, the copy is told
   * to shut down as usual. 0 (default) = refuse at once.
   */
  holdUnknownReadyMs?: number;
  logger?: Logger;
}

/** Handshake outcomes of the link's socket (ZeroMQ monitor events), for operators and tests. */
export interface LinkSecurityEvents {
  /** 'ok', or why a peer's handshake failed: 'auth' (CURVE key not allowed), 'protocol' (e.g. a plain client on a CURVE link), 'other'. */
  handshake: [result: 'ok' | 'auth' | 'protocol' | 'other', address: string];
}

/** Longest unix socket path (sun_path is 108 bytes with its NUL). */
const MAX_SOCKET_PATH = 107;
const COPY_ID = /^[A-Za-z0-9_-]{1,64}$/;

/**
 * A broker id as a folder name: safe characters, at most 32 of them (a longer id keeps
 * its start plus a hash of the whole id), so socket paths stay under the unix limit.
 */
export function brokerFolderName(brokerId: string): string {
  const safe = brokerId.replace(/[^A-Za-z0-9_.-]/g, '_').replace(/^\.+/, '_') || 'broker';
  if (safe.length <= 32 && safe === brokerId) return safe;
  const hash = createHash('sha256').update(brokerId).digest('hex').slice(0, 10);
  return `${safe.slice(0, 21)}-${hash}`;
}

/** True when something accepts connections on the unix socket `file` (a live broker). */
export function socketIsLive(file: string, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(file);
    const done = (live: boolean) => {
      clearTimeout(timer);
      s.destroy();
      resolve(live);
    };
    const timer = setTimeout(() => done(true), timeoutMs); // a socket that neither accepts nor refuses: treat as held
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

/** The broker's socket is held by a live broker. */
export class SocketInUseError extends Error {}

interface Route {
  routingId: string;
  secret: Buffer;
  /** CURVE: the copy's own key pair (process copies), allowed while the copy is registered. */
  curve?: { publicKey: string; secretKey: string };
  /** ipc only: the copy's folder and endpoint. */
  dir?: string;
  endpoint?: string;
}

export class LinkServer implements LinkSender {
  readonly heartbeatMs: number;
  private router?: zmq.Router;
  private readonly peers = new Map<string, LinkPeer>();
  private readonly routes = new Map<string, Route>();
  /** routing id -> copy id, for copies registered here. */
  private readonly byRoutingId = new Map<string, string>();
  /** Copies that presented their secret in READY (or were adopted). */
  private readonly authenticated = new Set<string>();
  private readonly queue: Outgoing[] = [];
  private wake?: () => void;
  private closed = false;
  private heartbeat?: NodeJS.Timeout;
  private boundEndpoint?: string;
  private loops: Promise<void>[] = [];
  /** Routing ids we already told to go away (bounded). */
  private readonly toldOff = new Set<string>();
  private readonly transport: 'ipc' | 'tcp';
  /** The broker's socket folder. */
  readonly socketDir: string;
  private readonly socketName: string;
  private key?: Buffer;
  /** bind/unbind calls, one at a time (zeromq refuses concurrent ones). */
  private binds: Promise<unknown> = Promise.resolve();
  /** CURVE client keys allowed to connect (a key may be allowed more than once). */
  private readonly clientKeys = new Map<string, number>();
  private unzap?: () => void;
  /** READYs from routing ids not registered yet (holdUnknownReadyMs). */
  private readonly early = new Map<string, { frames: Buffer[]; at: number }>();
  /** Handshake results with CURVE (refusals among them). */
  readonly security = new EventEmitter<LinkSecurityEvents>();

  constructor(private readonly opts: LinkServerOptions = {}) {
    this.heartbeatMs = opts.heartbeatMs ?? 1000;
    this.transport = opts.transport ?? 'ipc';
    const base = path.resolve(opts.socketDir ?? '/tmp/tensorbroker');
    this.socketDir = opts.brokerId ? path.join(base, brokerFolderName(opts.brokerId)) : base;
    this.socketName = opts.socketName ?? 'link.sock';
  }

  /**
   * Claims the broker's socket (refusing when a live broker holds it), binds
   * and starts the loops. Rejects with SocketInUseError when another broker is live.
   */
  async start(): Promise<void> {
    if (this.router) return;
    const curve = this.opts.curve;
    if (curve && this.transport !== 'tcp') throw new Error('CURVE needs the tcp link transport');
    const domain = `tb-link-${randomBytes(6).toString('hex')}`;
    const router = new zmq.Router({
      mandatory: true, linger: 0, sendTimeout: 0, sendHighWaterMark: 10_000,
      ...(curve ? { curveServer: true, curvePublicKey: curve.publicKey, curveSecretKey: curve.secretKey, zapDomain: domain } : {}),
    });
    try {
      if (curve) {
        this.unzap = await zapDomain(domain, (key) => this.clientKeys.has(key));
        // Only with CURVE: a refused handshake is otherwise silent (the monitor costs a socket of its own).
        this.watchHandshakes(router);
      }
      if (this.transport === 'ipc') {
        await fs.mkdir(this.socketDir, { recursive: true, mode: 0o755 });
        // Copies running as another uid (containers) must be able to traverse the folder.
        const st = await fs.stat(this.socketDir);
        if ((st.mode & 0o011) !== 0o011) await fs.chmod(this.socketDir, (st.mode & 0o7777) | 0o011);
        const file = this.socketPath(this.socketDir);
        this.socketPath(path.join(this.socketDir, 'copies', 'x'.repeat(16))); // copies' sockets must fit too
        if (await socketIsLive(file)) {
          throw new SocketInUseError(
            `another live broker holds the link socket ${file}` +
              (this.opts.brokerId ? ` (broker id '${this.opts.brokerId}')` : '') +
              ': give each broker on this host its own --broker-id / TB_BROKER_ID (or --socket-dir), or stop the other broker first',
          );
        }
        // Not connectable: a stale socket of a broker that died; safe to replace.
        await fs.rm(file, { force: true });
        await router.bind(`ipc://${file}`);
        await fs.chmod(file, this.opts.socketMode ?? 0o666);
        this.boundEndpoint = `ipc://${file}`;
        this.key = await this.loadKey(path.join(this.socketDir, 'link.key'));
      } else {
        const host = this.opts.tcpHost ?? '127.0.0.1';
        await router.bind(`tcp://${host}:${this.opts.tcpPort ? this.opts.tcpPort : '*'}`);
        this.boundEndpoint = router.lastEndpoint ?? undefined;
        this.key = randomBytes(32);
      }
    } catch (err) {
      router.close();
      this.unzap?.();
      throw err;
    }
    this.router = router;
    for (const id of this.peers.keys()) this.attach(id);
    this.loops = [this.receiveLoop(router), this.sendLoop(router)];
    this.heartbeat = setInterval(() => this.tick(), this.heartbeatMs);
    this.heartbeat.unref();
    this.opts.logger?.info({ endpoint: this.boundEndpoint }, 'link server bound');
  }

  get endpoint(): string {
    if (!this.boundEndpoint) throw new Error('link server not started');
    return this.opts.advertise ?? this.boundEndpoint;
  }

  /** The broker's CURVE public key copies must be given (undefined without CURVE). */
  get curveServerKey(): string | undefined {
    return this.opts.curve?.publicKey;
  }

  /** READYs held for routing ids not registered yet (holdUnknownReadyMs). */
  get heldReadies(): number {
    return this.early.size;
  }

  /** Lets CURVE clients with this public key (Z85) connect. Returns the function that withdraws it. */
  allowClientKey(publicKey: string): () => void {
    this.clientKeys.set(publicKey, (this.clientKeys.get(publicKey) ?? 0) + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const n = (this.clientKeys.get(publicKey) ?? 1) - 1;
      if (n <= 0) this.clientKeys.delete(publicKey);
      else this.clientKeys.set(publicKey, n);
    };
  }

  /**
   * What a runtime needs to point a copy at this server. With a copy id: that
   * copy's own endpoint (ipc), routing id and secret (the copy must be registered).
   */
  info(copyId?: string): LinkInfo {
    const base: LinkInfo = {
      endpoint: this.endpoint,
      heartbeatMs: this.heartbeatMs,
      ...(this.transport === 'ipc' ? { socketDir: this.socketDir, socketName: this.socketName } : {}),
      ...(this.opts.curve ? { curveServerKey: this.opts.curve.publicKey } : {}),
    };
    if (copyId === undefined) return base;
    const r = this.routes.get(copyId);
    if (!r) throw new Error(`copy ${copyId} is not registered on the link`);
    return {
      ...base,
      ...(r.endpoint ? { endpoint: r.endpoint, socketDir: r.dir, copyDir: path.relative(this.socketDir, r.dir!) } : {}),
      routingId: r.routingId,
      secret: r.secret.toString('hex'),
      ...(r.curve ? { curvePublicKey: r.curve.publicKey, curveSecretKey: r.curve.secretKey } : {}),
    };
  }

  /**
   * Routes a copy's messages to `peer`. Without `route` the routing id and
   * secret are derived here (and given to the copy in its env through info());
   * with it they come from elsewhere: a Kubernetes Deployment's pods share one
   * secret from a Secret and use their pod name as routing id.
   */
  register(copyId: string, peer: LinkPeer, route?: { routingId: string; secret: string }): void {
    if (!COPY_ID.test(copyId)) throw new Error(`bad copy id '${copyId}' (1-64 of A-Z a-z 0-9 _ -)`);
    this.peers.set(copyId, peer);
    if (route) {
      const r: Route = { routingId: route.routingId, secret: Buffer.from(route.secret, 'hex') };
      this.routes.set(copyId, r);
      this.byRoutingId.set(r.routingId, copyId);
      const early = this.early.get(r.routingId);
      if (early) {
        this.early.delete(r.routingId);
        // The READY that came before the broker knew the copy: handle it now.
        queueMicrotask(() => this.dispatch(early.frames));
      }
    } else if (this.key) this.attach(copyId);
  }

  unregister(copyId: string): void {
    this.peers.delete(copyId);
    this.authenticated.delete(copyId);
    const r = this.routes.get(copyId);
    if (!r) return;
    this.routes.delete(copyId);
    this.byRoutingId.delete(r.routingId);
    if (r.curve) this.clientKeys.delete(r.curve.publicKey);
    if (r.endpoint && this.router) {
      const router = this.router;
      const endpoint = r.endpoint;
      this.binds = this.binds
        .then(() => (this.closed ? undefined : router.unbind(endpoint)))
        .catch((err) => this.opts.logger?.debug({ err, copy: copyId }, 'link: unbind failed'))
        .then(() => fs.rm(r.dir!, { recursive: true, force: true }))
        .catch(() => undefined);
    }
  }

  /** Queues a message for a copy. Never throws; delivery failures are logged. */
  send(copyId: string, frames: Buffer[], sent?: () => void): void {
    const r = this.routes.get(copyId);
    if (!r) {
      this.opts.logger?.debug({ copy: copyId }, 'link: message to a copy not on the link dropped');
      sent?.();
      return;
    }
    this.sendTo(r.routingId, frames, sent);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.heartbeat);
    this.wake?.();
    await this.binds.catch(() => undefined);
    this.router?.close();
    this.unzap?.();
    await Promise.allSettled(this.loops);
    if (this.transport === 'ipc' && this.router) {
      // Only the socket this broker bound (it was checked not live before binding).
      await fs.rm(this.socketPath(this.socketDir), { force: true }).catch(() => undefined);
    }
  }

  private socketPath(dir: string): string {
    const file = path.join(dir, this.socketName);
    if (Buffer.byteLength(file) > MAX_SOCKET_PATH) {
      throw new Error(`link socket path ${file} is longer than ${MAX_SOCKET_PATH} bytes (unix socket limit): use a shorter --socket-dir or broker id`);
    }
    return file;
  }

  /** The key copies' routing ids and secrets derive from: kept 0600 in the broker's folder (never in a copy's folder). */
  private async loadKey(file: string): Promise<Buffer> {
    try {
      const k = await fs.readFile(file);
      if (k.length >= 32) return k;
    } catch {
      // none yet
    }
    const k = randomBytes(32);
    await fs.writeFile(file, k, { mode: 0o600 });
    await fs.chmod(file, 0o600);
    return k;
  }

  private derive(what: string, copyId: string): Buffer {
    return createHmac('sha256', this.key!).update(`${what}\0${copyId}`).digest();
  }

  /** Routing id, secret and (ipc) the copy's own socket, bound on the ROUTER. */
  private attach(copyId: string): void {
    if (this.routes.has(copyId)) return;
    const routingId = `${copyId}.${this.derive('route', copyId).subarray(0, 16).toString('hex')}`;
    const route: Route = { routingId, secret: this.derive('secret', copyId) };
    if (this.opts.curve) {
      // Each process copy its own key pair: a copy's key lets only that copy's process connect.
      route.curve = zmq.curveKeyPair();
      this.allowClientKey(route.curve.publicKey);
    }
    if (this.transport === 'ipc') {
      const dir = path.join(this.socketDir, 'copies', copyId);
      const file = this.socketPath(dir);
      // The folder must exist before a container mounting it is created; the socket may follow.
      fss.mkdirSync(dir, { recursive: true, mode: 0o755 });
      fss.chmodSync(dir, 0o755);
      route.dir = dir;
      route.endpoint = `ipc://${file}`;
      const router = this.router!;
      this.binds = this.binds
        .then(async () => {
          if (this.closed || this.routes.get(copyId) !== route) return;
          await router.bind(route.endpoint!);
          await fs.chmod(file, this.opts.socketMode ?? 0o666);
        })
        .catch((err) => this.opts.logger?.error({ err, copy: copyId }, 'link: cannot bind the copy socket'));
    }
    this.routes.set(copyId, route);
    this.byRoutingId.set(routingId, copyId);
  }

  /**
   * Reports handshake results from the socket's monitor (CURVE refusals are
   * otherwise silent). Read with receive(), not the Observer's `.on()`: that
   * one patches the native class once with the first loader's `require`.
   */
  private watchHandshakes(router: zmq.Router): void {
    const results: Record<string, 'ok' | 'auth' | 'protocol' | 'other'> = {
      handshake: 'ok', 'handshake:error:auth': 'auth', 'handshake:error:protocol': 'protocol', 'handshake:error:other': 'other',
    };
    const observer = router.events;
    void (async () => {
      for await (const e of observer) {
        const result = results[e.type];
        if (!result) continue;
        const address = 'address' in e ? String(e.address) : '';
        if (result !== 'ok') this.opts.logger?.warn({ address, result }, 'link: a peer failed the handshake (CURVE key missing or not allowed)');
        this.security.emit('handshake', result, address);
      }
    })().catch(() => undefined); // ends with the socket
  }

  private sendTo(routingId: string, frames: Buffer[], sent?: () => void): void {
    if (this.closed) return sent?.();
    this.queue.push({ msg: [Buffer.from(routingId), ...frames], at: performance.now(), sent });
    this.wake?.();
  }

  private tick(): void {
    const now = Date.now();
    for (const [routingId, e] of this.early) {
      if (now - e.at <= (this.opts.holdUnknownReadyMs ?? 0)) continue;
      this.early.delete(routingId);
      this.refuse(routingId, 'ready', 'unknown copy id', 'link: READY from a routing id that no copy was registered for in time; telling it to shut down');
    }
    const hb = encodeFrames({ case: 'heartbeat', value: create(HeartbeatSchema, { timeMs: BigInt(now) }) });
    for (const [id, peer] of this.peers) {
      if (peer.connected) this.send(id, hb);
      try {
        peer.tick(now);
      } catch (err) {
        this.opts.logger?.error({ err, copy: id }, 'copy tick failed');
      }
    }
  }

  private async sendLoop(router: zmq.Router): Promise<void> {
    while (!this.closed) {
      const item = this.queue.shift();
      if (!item) {
        await new Promise<void>((resolve) => (this.wake = resolve));
        this.wake = undefined;
        continue;
      }
      const msg = item.msg;
      try {
        await router.send(msg);
        if (item.sent) LINK_SEND.since(item.at); // batches only (they carry a callback), not heartbeats
      } catch (err) {
        if (this.closed) return item.sent?.();
        const code = (err as { code?: string }).code;
        if (/blocked by a bind or unbind/.test((err as Error).message)) {
          // A copy's socket is being bound: send this message again once the bind is done.
          this.queue.unshift(item);
          await new Promise((r) => setTimeout(r, 5));
          continue;
        }
        // EHOSTUNREACH: the copy is not (or no longer) connected; EAGAIN: its queue is full.
        this.opts.logger?.warn({ copy: claimedId(msg[0].toString()), code, err: (err as Error).message }, 'link: message to copy not delivered');
      }
      item.sent?.();
    }
    for (const rest of this.queue.splice(0)) rest.sent?.();
  }

  private async receiveLoop(router: zmq.Router): Promise<void> {
    while (!this.closed) {
      let frames: Buffer[];
      try {
        frames = await router.receive();
      } catch (err) {
        if (this.closed) return;
        // A copy's socket is bound while a receive waits ("Socket is blocked by a bind or unbind
        // operation"): retrying at once would spin the event loop the bind needs to finish.
        this.opts.logger?.debug({ err }, 'link: receive interrupted; retrying');
        await new Promise((r) => setTimeout(r, 5));
        continue;
      }
      try {
        this.dispatch(frames);
      } catch (err) {
        this.opts.logger?.error({ err }, 'link: message dropped');
      }
    }
  }

  private dispatch(frames: Buffer[]): void {
    const log = this.opts.logger;
    const routingId = frames[0].toString();
    const copyId = this.byRoutingId.get(routingId);
    const peer = copyId !== undefined ? this.peers.get(copyId) : undefined;
    let msg: DecodedMessage;
    try {
      msg = decodeFrames(frames.slice(1));
    } catch (err) {
      log?.warn({ copy: copyId ?? claimedId(routingId), err: err instanceof LinkDecodeError ? err.message : String(err) }, 'link: malformed message ignored');
      return;
    }
    const kind = msg.envelope.kind;
    if (!peer || copyId === undefined) {
      if (this.opts.holdUnknownReadyMs) {
        if (kind.case === 'ready' && (this.early.has(routingId) || this.early.size < 1000)) {
          this.early.set(routingId, { frames, at: this.early.get(routingId)?.at ?? Date.now() });
          return;
        }
        if (this.early.has(routingId)) return; // its heartbeats while it waits
      }
      this.refuse(routingId, kind.case, 'unknown copy id', 'link: message from a routing id no copy was given (an SDK older than TB_ROUTING_ID, a leftover copy, or an impersonation attempt); telling it to shut down');
      return;
    }
    if (kind.case === 'ready') {
      if (!this.secretMatches(copyId, kind.value.secret)) {
        this.refuse(routingId, kind.case, 'copy secret missing or wrong', "link: READY without the copy's secret (TB_COPY_SECRET) refused");
        return;
      }
      this.authenticated.add(copyId);
    } else if (!this.authenticated.has(copyId)) {
      if (!peer.adopted) {
        // Nothing counts from a copy before its READY with the secret.
        log?.debug({ copy: copyId, kind: kind.case }, 'link: message before READY ignored');
        return;
      }
      this.authenticated.add(copyId);
    }
    try {
      peer.handle(msg);
    } catch (err) {
      log?.error({ copy: copyId, err }, 'link: error handling message from copy');
    }
  }

  private secretMatches(copyId: string, given: string): boolean {
    const want = this.routes.get(copyId)?.secret;
    if (!want || !/^[0-9a-f]+$/i.test(given)) return false;
    const got = Buffer.from(given, 'hex');
    return got.length === want.length && timingSafeEqual(got, want);
  }

  /**
   * Tells a sender that may not speak for a copy to go away, once per routing id (a
   * flood of messages gets no flood of answers or log lines; the token is never logged).
   */
  private refuse(routingId: string, kind: string | undefined, reason: string, message: string): void {
    if (kind === 'shutdown' || this.toldOff.has(routingId)) return;
    this.opts.logger?.warn({ claimed: claimedId(routingId), kind, reason }, message);
    if (this.toldOff.size > 1000) this.toldOff.clear();
    this.toldOff.add(routingId);
    this.sendTo(routingId, encodeFrames({ case: 'shutdown', value: create(ShutdownSchema, { graceMs: 0, reason }) }));
  }
}

/** The copy id part of a routing id, for logs (the token after the dot is never logged). */
function claimedId(routingId: string): string {
  const id = routingId.split('.')[0];
  return id.length > 64 ? `${id.slice(0, 64)}…` : id;
}
