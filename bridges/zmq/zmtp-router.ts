/**
 * A ZeroMQ ROUTER on node:net, speaking ZMTP 3.x (zmtp.ts): real libzmq
 * DEALER / REQ / ROUTER clients connect to it unchanged. One connection = one
 * peer, with a routing id of ours. What it adds over libzmq's ROUTER:
 * messages bounded as a whole before they are received (zmtp.ts), a client's
 * TCP close seen at once, replies bounded in bytes per client (its socket's
 * write buffer), heartbeats for peers that vanished silently, and a bound on
 * connections.
 */
import net from 'node:net';
import type { Logger } from 'pino';
import { ZmtpServerSession, encodeMessage, type DecoderLimits } from './zmtp';

export interface ZmtpConnection {
  /** Our routing id for this peer (never reused). */
  readonly id: string;
  readonly remote: string;
  /** Bytes written but not yet taken by the kernel. */
  pendingBytes(): number;
  /** Queues a whole message; false if the connection is gone. */
  send(frames: readonly Buffer[]): boolean;
  readonly closed: boolean;
}

export interface ZmtpRouterOptions {
  host: string;
  port: number;
  limits: DecoderLimits;
  logger: Logger;
  /** Connections at once; more are refused at accept (default 1024). */
  maxConnections?: number;
  /** Pending reply bytes past which a connection's reading is paused until its socket drains. */
  pauseAboveBytes: number;
  /** A PING to a ZMTP 3.1 peer silent for this long (default 5000 ms). */
  heartbeatIntervalMs?: number;
  /** A 3.1 peer silent for this long is dropped (default 15000 ms); so is a handshake not done in this time. */
  heartbeatTimeoutMs?: number;
  onMessage(conn: ZmtpConnection, frames: Buffer[]): void;
  onOversized(conn: ZmtpConnection, leading: Buffer[], frames: number, bytes: number): void;
  /** The peer is gone (TCP closed, protocol error or heartbeat timeout): nothing more can reach it. */
  onGone(conn: ZmtpConnection, reason: string): void;
}

/** The bridge answers every error it expects; this keeps an unexpected one from ending the process. */
function guard(log: Logger, client: string, f: () => void): void {
  try {
    f();
  } catch (err) {
    log.error({ err, client }, 'zmq: unexpected error handling a message');
  }
}

class Connection implements ZmtpConnection {
  readonly session: ZmtpServerSession;
  lastHeard = Date.now();
  readonly since = Date.now();
  closed = false;
  paused = false;
  private corked = false;
  reason = 'closed by the peer';

  constructor(readonly id: string, readonly remote: string, readonly socket: net.Socket, private readonly r: ZmtpRouterOptions, private readonly log: Logger, reusedChunks: boolean) {
    this.session = new ZmtpServerSession(r.limits, {
      write: (chunks) => this.write(chunks),
      ready: (p) => log.debug({ client: id, remote, socketType: p.socketType, zmtp: `3.${p.minor}` }, 'zmq: client connected'),
      message: (frames) => guard(log, id, () => r.onMessage(this, frames)),
      oversized: (leading, frames, bytes) => guard(log, id, () => r.onOversized(this, leading, frames, bytes)),
      close: (reason) => {
        this.reason = reason;
        log.debug({ client: id, remote, reason }, 'zmq: connection ended');
        socket.end();
        setTimeout(() => socket.destroy(), 1000).unref(); // a peer that does not read our ERROR
      },
    }, reusedChunks);
  }

  pendingBytes(): number {
    return this.closed ? 0 : this.socket.writableLength;
  }

  send(frames: readonly Buffer[]): boolean {
    if (this.closed || !this.session.isReady) return false;
    this.write(encodeMessage(frames));
    if (!this.paused && this.socket.writableLength > this.r.pauseAboveBytes && this.socket.writableNeedDrain) {
      // It does not read: stop reading it too, until its socket drains ('drain' follows writableNeedDrain).
      this.paused = true;
      this.socket.pause();
      this.log.debug({ client: this.id, pendingBytes: this.socket.writableLength }, 'zmq: client not read until its replies drain');
    }
    return true;
  }

  /** Writes in one batch per tick (cork, then writev on uncork). */
  private write(chunks: Buffer[]): void {
    if (this.closed) return;
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(() => {
        this.corked = false;
        this.socket.uncork();
      });
    }
    for (const c of chunks) this.socket.write(c);
  }
}

/**
 * One read buffer for every connection: each read is decoded (and what is
 * kept copied out) before the next read of any socket, so nothing per read is
 * allocated. Node's own reads allocate a chunk per read and leave it to the
 * garbage collector: with them, tests/e2e/zmq-attack.test.ts (480 MiB of
 * skipped messages) measured a peak RSS growth of 170 MiB; with this, 24 MiB.
 */
const READ_BUFFER = Buffer.allocUnsafe(64 * 1024);

/**
 * The accepted socket's handle, moved to a socket that reads into READ_BUFFER
 * (net.Socket's documented `onread` option; net.Server has no such option, and
 * `_handle` is how net.Server itself hands a handle to a Socket). Undefined if
 * this Node has no `_handle` there: the caller then reads with 'data' events.
 */
function adopt(accepted: net.Socket, feed: (chunk: Buffer) => void): net.Socket | undefined {
  const holder = accepted as unknown as { _handle?: unknown };
  const handle = holder._handle;
  if (!handle) return undefined;
  const s = new net.Socket({
    handle, readable: true, writable: true,
    onread: { buffer: READ_BUFFER, callback: (n: number, buf: Uint8Array) => void feed((buf as Buffer).subarray(0, n)) },
  } as net.SocketConstructorOpts);
  holder._handle = null;
  accepted.destroy(); // the empty shell: releases net.Server's count for it
  return s;
}

export class ZmtpRouter {
  private readonly server: net.Server;
  private readonly conns = new Map<string, Connection>();
  private readonly log: Logger;
  private timer?: NodeJS.Timeout;
  private next = 0;
  private refusedAt = 0;
  private readonly maxConnections: number;
  port = 0;

  constructor(private readonly o: ZmtpRouterOptions) {
    this.log = o.logger;
    // Paused at accept: the socket is moved to one that reads into READ_BUFFER (adopt()) before any byte is read.
    this.server = net.createServer({ pauseOnConnect: true }, (s) => this.accept(s));
    this.maxConnections = o.maxConnections ?? 1024;
  }

  listen(): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen({ host: this.o.host, port: this.o.port }, () => {
        this.server.off('error', reject);
        this.port = (this.server.address() as net.AddressInfo).port;
        const every = this.o.heartbeatIntervalMs ?? 5000;
        this.timer = setInterval(() => this.heartbeat(), Math.max(10, Math.min(every, this.o.heartbeatTimeoutMs ?? 15_000) / 2));
        this.timer.unref();
        resolve(this.port);
      });
    });
  }

  /** Pending reply bytes over all connections. */
  pendingBytes(): number {
    let n = 0;
    for (const c of this.conns.values()) n += c.pendingBytes();
    return n;
  }

  get connections(): number {
    return this.conns.size;
  }

  /** Stops accepting, flushes what each connection has pending (up to `lingerMs`), then closes them. */
  async close(lingerMs: number): Promise<void> {
    clearInterval(this.timer);
    const closedServer = new Promise<void>((r) => this.server.close(() => r()));
    const all = [...this.conns.values()].map((c) => new Promise<void>((r) => {
      if (c.closed) return r();
      c.socket.once('close', () => r());
      c.reason = 'the bridge closed';
      c.socket.end();
    }));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(all), new Promise<void>((r) => (timer = setTimeout(r, lingerMs)))]);
    clearTimeout(timer);
    for (const c of this.conns.values()) c.socket.destroy();
    await closedServer;
  }

  private accept(accepted: net.Socket): void {
    if (this.conns.size >= this.maxConnections) {
      // Logged at most once a second: a flood must not flood the log.
      if (Date.now() - this.refusedAt > 1000) {
        this.refusedAt = Date.now();
        this.log.warn({ remote: accepted.remoteAddress, maxConnections: this.maxConnections }, 'zmq: connection refused: too many connections');
      }
      accepted.destroy();
      return;
    }
    const id = `c${(++this.next).toString(36)}`;
    const remote = `${accepted.remoteAddress}:${accepted.remotePort}`;
    const onread = (chunk: Buffer) => {
      c.lastHeard = Date.now();
      try {
        c.session.feed(chunk);
      } catch (err) {
        // Not a protocol error (those are answered with ERROR): a bug. That connection ends, the process does not.
        this.log.error({ err, client: id }, 'zmq: unexpected error decoding a connection');
        c.reason = 'internal error';
        c.socket.destroy();
      }
    };
    const adopted = adopt(accepted, onread);
    const s = adopted ?? accepted;
    const c = new Connection(id, remote, s, this.o, this.log, adopted !== undefined);
    this.conns.set(id, c);
    s.setNoDelay(true);
    s.setKeepAlive(true, 10_000); // ZMTP 3.0 peers have no heartbeat: the kernel's probes find the dead ones
    if (!adopted) {
      s.on('data', onread);
      s.resume();
    }
    s.on('drain', () => {
      if (c.paused) {
        c.paused = false;
        s.resume();
        this.log.debug({ client: id }, 'zmq: client read again');
      }
    });
    s.on('error', (err) => {
      c.reason = (err as NodeJS.ErrnoException).code ?? err.message;
      this.log.debug({ client: id, remote, err: { message: err.message } }, 'zmq: connection error');
    });
    s.on('close', () => {
      c.closed = true;
      this.conns.delete(id);
      this.o.onGone(c, c.reason);
    });
    c.session.start();
  }

  private heartbeat(): void {
    const now = Date.now();
    const every = this.o.heartbeatIntervalMs ?? 5000;
    const timeout = this.o.heartbeatTimeoutMs ?? 15_000;
    for (const c of this.conns.values()) {
      if (c.closed) continue;
      if (!c.session.isReady) {
        if (now - c.since > timeout) this.drop(c, 'handshake not done in time');
        continue;
      }
      // A paused connection is not read, so its PONGs are not seen: the kernel's keepalive watches it.
      if (!c.session.heartbeats || c.paused) continue;
      const silent = now - c.lastHeard;
      if (silent > timeout) this.drop(c, `no traffic for ${silent} ms (heartbeat timeout)`);
      else if (silent >= every) c.session.ping();
    }
  }

  private drop(c: Connection, reason: string): void {
    c.reason = reason;
    this.log.info({ client: c.id, remote: c.remote, reason }, 'zmq: connection dropped');
    c.socket.destroy();
  }
}
