/**
 * The broker's end of the link: one ZeroMQ ROUTER that every model copy's
 * DEALER connects to, with its copy id as routing id. One send queue and one
 * receive loop (zeromq allows one pending send and one pending receive per socket).
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import * as zmq from 'zeromq';
import type { Logger } from 'pino';
import { decodeFrames, encodeFrames, LinkDecodeError, type DecodedMessage } from '../proto/link';
import { create } from '@bufbuild/protobuf';
import { HeartbeatSchema, ShutdownSchema } from '../proto/link';
import type { LinkInfo } from './runtime';

/** What the link server routes a copy's messages to. */
export interface LinkPeer {
  /** A decoded message from the copy. May throw: the error is logged. */
  handle(msg: DecodedMessage): void;
  /** Called every heartbeat interval (after the broker's heartbeat was queued). */
  tick(now: number): void;
  /** True once the copy was heard from: broker heartbeats go only to those. */
  readonly connected: boolean;
}

/** The link as a copy connection sees it. */
export interface LinkSender {
  send(copyId: string, frames: Buffer[]): void;
}

export interface LinkServerOptions {
  /** 'ipc' (default): a socket file in socketDir. 'tcp': 127.0.0.1 on tcpPort (0 = any free port). */
  transport?: 'ipc' | 'tcp';
  /** Directory of the ipc socket (bind-mounted into containers). Default /tmp/tensorbroker. */
  socketDir?: string;
  /** Socket file name (default link.sock). */
  socketName?: string;
  /** File mode of the socket, so copies running as other users can connect (default 0o666). */
  socketMode?: number;
  tcpHost?: string;
  tcpPort?: number;
  /** Broker heartbeat interval (default 1000 ms). */
  heartbeatMs?: number;
  logger?: Logger;
}

export class LinkServer implements LinkSender {
  readonly heartbeatMs: number;
  private router?: zmq.Router;
  private readonly peers = new Map<string, LinkPeer>();
  private readonly queue: Buffer[][] = [];
  private wake?: () => void;
  private closed = false;
  private heartbeat?: NodeJS.Timeout;
  private boundEndpoint?: string;
  private loops: Promise<void>[] = [];
  /** Unknown ids we already told to go away (bounded). */
  private readonly toldOff = new Set<string>();
  private readonly transport: 'ipc' | 'tcp';
  private readonly socketDir: string;
  private readonly socketName: string;

  constructor(private readonly opts: LinkServerOptions = {}) {
    this.heartbeatMs = opts.heartbeatMs ?? 1000;
    this.transport = opts.transport ?? 'ipc';
    this.socketDir = path.resolve(opts.socketDir ?? '/tmp/tensorbroker');
    this.socketName = opts.socketName ?? 'link.sock';
  }

  /** Binds and starts the loops. */
  async start(): Promise<void> {
    if (this.router) return;
    const router = new zmq.Router({ mandatory: true, linger: 0, sendTimeout: 0, sendHighWaterMark: 10_000 });
    if (this.transport === 'ipc') {
      await fs.mkdir(this.socketDir, { recursive: true, mode: 0o755 });
      // Copies running as another uid (containers) must be able to traverse the directory.
      const st = await fs.stat(this.socketDir);
      if ((st.mode & 0o011) !== 0o011) await fs.chmod(this.socketDir, (st.mode & 0o7777) | 0o011);
      const file = path.join(this.socketDir, this.socketName);
      await fs.rm(file, { force: true });
      await router.bind(`ipc://${file}`);
      await fs.chmod(file, this.opts.socketMode ?? 0o666);
      this.boundEndpoint = `ipc://${file}`;
    } else {
      const host = this.opts.tcpHost ?? '127.0.0.1';
      await router.bind(`tcp://${host}:${this.opts.tcpPort ? this.opts.tcpPort : '*'}`);
      this.boundEndpoint = router.lastEndpoint ?? undefined;
    }
    this.router = router;
    this.loops = [this.receiveLoop(router), this.sendLoop(router)];
    this.heartbeat = setInterval(() => this.tick(), this.heartbeatMs);
    this.heartbeat.unref();
    this.opts.logger?.info({ endpoint: this.boundEndpoint }, 'link server bound');
  }

  get endpoint(): string {
    if (!this.boundEndpoint) throw new Error('link server not started');
    return this.boundEndpoint;
  }

  /** What a runtime needs to point a copy at this server. */
  info(): LinkInfo {
    return {
      endpoint: this.endpoint,
      heartbeatMs: this.heartbeatMs,
      ...(this.transport === 'ipc' ? { socketDir: this.socketDir, socketName: this.socketName } : {}),
    };
  }

  register(copyId: string, peer: LinkPeer): void {
    this.peers.set(copyId, peer);
    this.toldOff.delete(copyId);
  }

  unregister(copyId: string): void {
    this.peers.delete(copyId);
  }

  /** Queues a message for a copy. Never throws; delivery failures are logged. */
  send(copyId: string, frames: Buffer[]): void {
    if (this.closed) return;
    this.queue.push([Buffer.from(copyId), ...frames]);
    this.wake?.();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.heartbeat);
    this.wake?.();
    this.router?.close();
    await Promise.allSettled(this.loops);
    if (this.transport === 'ipc') {
      await fs.rm(path.join(this.socketDir, this.socketName), { force: true }).catch(() => undefined);
    }
  }

  private tick(): void {
    const now = Date.now();
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
      const msg = this.queue.shift();
      if (!msg) {
        await new Promise<void>((resolve) => (this.wake = resolve));
        this.wake = undefined;
        continue;
      }
      try {
        await router.send(msg);
      } catch (err) {
        if (this.closed) return;
        const code = (err as { code?: string }).code;
        // EHOSTUNREACH: the copy is not (or no longer) connected; EAGAIN: its queue is full.
        this.opts.logger?.warn({ copy: msg[0].toString(), code, err: (err as Error).message }, 'link: message to copy not delivered');
      }
    }
  }

  private async receiveLoop(router: zmq.Router): Promise<void> {
    while (!this.closed) {
      let frames: Buffer[];
      try {
        frames = await router.receive();
      } catch (err) {
        if (this.closed) return;
        this.opts.logger?.error({ err }, 'link: receive failed');
        continue;
      }
      this.dispatch(frames);
    }
  }

  private dispatch(frames: Buffer[]): void {
    const log = this.opts.logger;
    const copyId = frames[0].toString();
    const peer = this.peers.get(copyId);
    let msg: DecodedMessage;
    try {
      msg = decodeFrames(frames.slice(1));
    } catch (err) {
      log?.warn({ copy: copyId, err: err instanceof LinkDecodeError ? err.message : String(err) }, 'link: malformed message ignored');
      return;
    }
    if (!peer) {
      if (msg.envelope.kind.case === 'shutdown') return;
      if (!this.toldOff.has(copyId)) {
        log?.warn({ copy: copyId, kind: msg.envelope.kind.case }, 'link: message from unknown copy; telling it to shut down');
        if (this.toldOff.size > 1000) this.toldOff.clear();
        this.toldOff.add(copyId);
      }
      this.send(copyId, encodeFrames({ case: 'shutdown', value: create(ShutdownSchema, { graceMs: 0, reason: 'unknown copy id' }) }));
      return;
    }
    try {
      peer.handle(msg);
    } catch (err) {
      log?.error({ copy: copyId, err }, 'link: error handling message from copy');
    }
  }
}
