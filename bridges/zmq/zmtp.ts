/**
 * ZMTP 3.0 / 3.1 (RFC 23, RFC 37), the server side of the NULL mechanism, as a
 * pure incremental codec: bytes in (split anywhere), events and bytes out. No
 * sockets here; zmtp-router.ts puts it on node:net.
 *
 * Why our own: libzmq applies ZMQ_MAXMSGSIZE per frame and assembles a whole
 * multipart message before a socket is readable, so a message's total size can
 * only be refused after it was received. Here each frame header is checked
 * against what is left of the message's allowance before anything is
 * allocated; a message over it is skipped to its end (counted, not stored)
 * and reported, so the bridge can answer it.
 */

/** Greeting: signature (10) + version (2) + mechanism (20) + as-server (1) + filler (31). */
export const GREETING_BYTES = 64;
const FLAG_MORE = 0x01;
const FLAG_LONG = 0x02;
const FLAG_COMMAND = 0x04;
/** Commands (READY, PING, ...) are small; a bigger one is a protocol error, refused before allocation. */
export const MAX_COMMAND_BYTES = 64 * 1024;
/** Leading frames of a refused message kept for the reply (REQ delimiter, key frame, header), if small. */
const KEPT_FRAMES = 3;
const KEPT_FRAME_BYTES = 64 * 1024;
/** Peer socket types a ROUTER talks to (RFC 28). */
export const ROUTER_PEERS = new Set(['DEALER', 'REQ', 'ROUTER']);

export class ZmtpError extends Error {}

const EMPTY = Buffer.alloc(0);

/** Our greeting: ZMTP 3.1, NULL, as-server 0. The padding says "1" as libzmq's does (an empty ZMTP 1.0 identity). */
export function greeting(): Buffer {
  const g = Buffer.alloc(GREETING_BYTES);
  g[0] = 0xff;
  g[8] = 0x01;
  g[9] = 0x7f;
  g[10] = 3;
  g[11] = 1;
  g.write('NULL', 12, 'latin1');
  return g;
}

/** The 2- or 9-byte header of a frame of `size` bytes. */
export function frameHeader(size: number, flags: number): Buffer {
  if (size <= 255) {
    const h = Buffer.allocUnsafe(2);
    h[0] = flags;
    h[1] = size;
    return h;
  }
  const h = Buffer.allocUnsafe(9);
  h[0] = flags | FLAG_LONG;
  h.writeBigUInt64BE(BigInt(size), 1);
  return h;
}

/** A command frame: name-size, name, data. */
export function command(name: string, data: Buffer = Buffer.alloc(0)): Buffer {
  const body = Buffer.concat([Buffer.from([name.length]), Buffer.from(name, 'latin1'), data]);
  return Buffer.concat([frameHeader(body.length, FLAG_COMMAND), body]);
}

/** READY with properties (name: value). */
export function ready(props: Record<string, string>): Buffer {
  const parts: Buffer[] = [];
  for (const [k, v] of Object.entries(props)) {
    const value = Buffer.from(v, 'utf8');
    const len = Buffer.allocUnsafe(4);
    len.writeUInt32BE(value.length, 0);
    parts.push(Buffer.from([k.length]), Buffer.from(k, 'latin1'), len, value);
  }
  return command('READY', Buffer.concat(parts));
}

/** ERROR with a reason (at most 255 bytes). */
export function errorCommand(reason: string): Buffer {
  const r = Buffer.from(reason, 'utf8').subarray(0, 255);
  return command('ERROR', Buffer.concat([Buffer.from([r.length]), r]));
}

/** PING: TTL in tenths of a second (0 = none), then up to 16 bytes of context. */
export function ping(ttlDeciseconds = 0, context: Buffer = Buffer.alloc(0)): Buffer {
  const ttl = Buffer.allocUnsafe(2);
  ttl.writeUInt16BE(ttlDeciseconds, 0);
  return command('PING', Buffer.concat([ttl, context.subarray(0, 16)]));
}

export function pong(context: Buffer): Buffer {
  return command('PONG', context.subarray(0, 16));
}

/**
 * A message's frames for a socket write: headers are concatenated with the
 * small frames that follow them; big frames stay as they are (no copy).
 */
export function encodeMessage(frames: readonly Buffer[], copyBelow = 4096): Buffer[] {
  const out: Buffer[] = [];
  let small: Buffer[] = [];
  const flush = () => {
    if (small.length === 1) out.push(small[0]);
    else if (small.length > 1) out.push(Buffer.concat(small));
    small = [];
  };
  for (let i = 0; i < frames.length; i++) {
    const f = frames[i];
    small.push(frameHeader(f.length, i < frames.length - 1 ? FLAG_MORE : 0));
    if (f.length < copyBelow) {
      if (f.length > 0) small.push(f);
    } else {
      flush();
      out.push(f);
    }
  }
  flush();
  return out;
}

export interface Greeting {
  major: number;
  minor: number;
  mechanism: string;
  asServer: boolean;
}

export function parseGreeting(g: Buffer): Greeting {
  if (g[0] !== 0xff || g[9] !== 0x7f) throw new ZmtpError('not a ZMTP 3 peer (bad signature)');
  const mech = g.subarray(12, 32);
  const end = mech.indexOf(0);
  return { major: g[10], minor: g[11], mechanism: mech.subarray(0, end < 0 ? 20 : end).toString('latin1'), asServer: g[32] === 1 };
}

/** A command frame's body → name and data. */
export function parseCommand(body: Buffer): { name: string; data: Buffer } {
  if (body.length < 1 || body.length < 1 + body[0]) throw new ZmtpError('malformed command');
  return { name: body.subarray(1, 1 + body[0]).toString('latin1'), data: body.subarray(1 + body[0]) };
}

/** READY / metadata properties; names are case-insensitive (lower-cased here). */
export function parseProperties(data: Buffer): Map<string, Buffer> {
  const props = new Map<string, Buffer>();
  let p = 0;
  while (p < data.length) {
    const n = data[p++];
    if (n === 0 || p + n + 4 > data.length) throw new ZmtpError('malformed property');
    const name = data.subarray(p, p + n).toString('latin1').toLowerCase();
    p += n;
    const len = data.readUInt32BE(p);
    p += 4;
    if (p + len > data.length) throw new ZmtpError('malformed property value');
    props.set(name, data.subarray(p, p + len));
    p += len;
  }
  return props;
}

export interface DecoderLimits {
  /** Largest message, all frames together. */
  maxMessageBytes: number;
  /** Most frames in one message. */
  maxFrames: number;
}

export interface DecoderEvents {
  greeting(g: Greeting): void;
  command(name: string, data: Buffer): void;
  message(frames: Buffer[]): void;
  /** A message over a limit, skipped: its first frames (those received whole before it went over), its frame count and total size. */
  oversized(leading: Buffer[], frames: number, bytes: number): void;
}

const enum State { Greeting, Flags, Size, Body }

/**
 * Incremental ZMTP decoder: greeting, then frames. Feed it chunks as they
 * arrive; it calls `events` synchronously and throws ZmtpError on a protocol
 * violation (the connection is then unusable). Frame bodies that lie in one
 * chunk are slices of it (no copy) when they are a good part of it; others are
 * copied once into a buffer allocated after the size check.
 */
export class ZmtpDecoder {
  private state = State.Greeting;
  private readonly head = Buffer.alloc(GREETING_BYTES);
  private have = 0;
  private flags = 0;
  private need = 0;
  /** The frame being received: its size, bytes so far, and its buffer once one is needed. */
  private size = 0;
  private filled = 0;
  private body?: Buffer;
  private skipping = false;
  private frames: Buffer[] = [];
  private msgBytes = 0;
  private msgFrames = 0;
  private discarding = false;

  /**
   * `reusedChunks`: the caller reuses the chunk's memory after feed() returns (a
   * socket reading into one buffer), so every frame is copied out, never a view.
   */
  constructor(private readonly limits: DecoderLimits, private readonly events: DecoderEvents, private readonly reusedChunks = false) {}

  feed(chunk: Buffer): void {
    let pos = 0;
    const n = chunk.length;
    while (pos < n) {
      switch (this.state) {
        case State.Greeting: {
          const take = Math.min(GREETING_BYTES - this.have, n - pos);
          chunk.copy(this.head, this.have, pos, pos + take);
          this.have += take;
          pos += take;
          // Refuse a non-ZMTP peer at its first byte, before waiting for 64.
          if (this.head[0] !== 0xff) throw new ZmtpError('not a ZMTP 3 peer (bad signature)');
          if (this.have > 10 && this.head[10] < 3) throw new ZmtpError(`ZMTP revision ${this.head[10]} is older than 3.0: not supported`);
          if (this.have === GREETING_BYTES) {
            this.state = State.Flags;
            this.have = 0;
            this.events.greeting(parseGreeting(this.head));
          }
          break;
        }
        case State.Flags:
          this.flags = chunk[pos++];
          this.need = this.flags & FLAG_LONG ? 8 : 1;
          this.have = 0;
          this.state = State.Size;
          break;
        case State.Size: {
          if (this.need === 1) {
            this.startBody(chunk[pos++]);
            break;
          }
          const take = Math.min(8 - this.have, n - pos);
          chunk.copy(this.head, this.have, pos, pos + take);
          this.have += take;
          pos += take;
          if (this.have === 8) {
            const hi = this.head.readUInt32BE(0);
            if (hi > 0x1fffff) throw new ZmtpError('frame size beyond 2^53 bytes');
            this.startBody(hi * 2 ** 32 + this.head.readUInt32BE(4));
          }
          break;
        }
        case State.Body: {
          if (this.skipping) {
            // A message over its limit: count its bytes, do not keep them.
            const take = Math.min(this.size - this.filled, n - pos);
            this.filled += take;
            pos += take;
            if (this.filled === this.size) this.endFrame(undefined);
            break;
          }
          const size = this.size;
          if (this.body === undefined) {
            if (!this.reusedChunks && n - pos >= size && size * 8 >= n) {
              // Whole in this chunk and a good part of it: a view, no copy.
              const view = chunk.subarray(pos, pos + size);
              pos += size;
              this.endFrame(view);
              break;
            }
            // Allocated only now, and only for a size already checked against the limits (startBody).
            this.body = Buffer.allocUnsafe(size);
          }
          const take = Math.min(size - this.filled, n - pos);
          chunk.copy(this.body, this.filled, pos, pos + take);
          this.filled += take;
          pos += take;
          if (this.filled === size) {
            const b = this.body;
            this.body = undefined;
            this.endFrame(b);
          }
          break;
        }
      }
    }
  }

  private startBody(size: number): void {
    this.state = State.Body;
    this.size = size;
    this.filled = 0;
    this.body = undefined;
    this.skipping = false;
    if (this.flags & FLAG_COMMAND) {
      if (size > MAX_COMMAND_BYTES) throw new ZmtpError(`command frame of ${size} bytes`);
    } else {
      this.msgFrames++;
      this.msgBytes += size;
      if (!this.discarding && (this.msgBytes > this.limits.maxMessageBytes || this.msgFrames > this.limits.maxFrames)) {
        // Over the allowance: this frame is never allocated; the rest of the message is skipped.
        this.discarding = true;
        let keep = 0;
        while (keep < Math.min(this.frames.length, KEPT_FRAMES) && this.frames[keep].length <= KEPT_FRAME_BYTES) keep++;
        this.frames.length = keep;
      }
      this.skipping = this.discarding;
    }
    if (size === 0) this.endFrame(this.skipping ? undefined : EMPTY);
  }

  private endFrame(body: Buffer | undefined): void {
    this.state = State.Flags;
    const flags = this.flags;
    if (flags & FLAG_COMMAND) {
      const c = parseCommand(body!);
      this.events.command(c.name, c.data);
      return;
    }
    if (body !== undefined) this.frames.push(body);
    if (flags & FLAG_MORE) return;
    const frames = this.frames;
    const count = this.msgFrames;
    const bytes = this.msgBytes;
    const over = this.discarding;
    this.frames = [];
    this.msgFrames = 0;
    this.msgBytes = 0;
    this.discarding = false;
    if (over) this.events.oversized(frames, count, bytes);
    else this.events.message(frames);
  }
}

/** What the server session asks of its transport. */
export interface SessionIo {
  write(chunks: Buffer[]): void;
  /** The handshake is done; messages may flow. */
  ready(peer: { socketType: string; identity: Buffer; minor: number }): void;
  message(frames: Buffer[]): void;
  oversized(leading: Buffer[], frames: number, bytes: number): void;
  /** The connection must end (after what was written is flushed). */
  close(reason: string): void;
}

/**
 * The server side of one ZMTP connection: greeting, NULL handshake (the
 * peer's READY checked before ours is sent), then messages; PING answered
 * with PONG (its context echoed), ERROR ends the connection.
 */
export class ZmtpServerSession {
  private readonly decoder: ZmtpDecoder;
  private handshaken = false;
  private done = false;
  private minor = 0;

  constructor(limits: DecoderLimits, private readonly io: SessionIo, reusedChunks = false) {
    this.decoder = new ZmtpDecoder(limits, {
      greeting: (g) => this.onGreeting(g),
      command: (name, data) => this.onCommand(name, data),
      message: (frames) => {
        if (!this.handshaken) throw new ZmtpError('a message before the handshake');
        io.message(frames);
      },
      oversized: (leading, frames, bytes) => {
        if (!this.handshaken) throw new ZmtpError('a message before the handshake');
        io.oversized(leading, frames, bytes);
      },
    }, reusedChunks);
  }

  /** Bytes to send as soon as the connection exists (the peer waits for our signature). */
  start(): void {
    this.io.write([greeting()]);
  }

  /** The peer speaks ZMTP 3.1 (PING / PONG). Known after its greeting. */
  get heartbeats(): boolean {
    return this.minor >= 1;
  }

  get isReady(): boolean {
    return this.handshaken;
  }

  feed(chunk: Buffer): void {
    if (this.done) return;
    try {
      this.decoder.feed(chunk);
    } catch (err) {
      if (!(err instanceof ZmtpError)) throw err;
      this.fail(err.message);
    }
  }

  /** A PING from us (a heartbeat), for 3.1 peers after the handshake. */
  ping(): void {
    if (this.handshaken && this.heartbeats && !this.done) this.io.write([ping()]);
  }

  private fail(reason: string): void {
    if (this.done) return;
    this.done = true;
    this.io.write([errorCommand(reason)]);
    this.io.close(reason);
  }

  private onGreeting(g: Greeting): void {
    // 3.0 framing is the same; a later minor (or major) talks 3.1 to us, as libzmq does.
    this.minor = g.major > 3 ? 1 : g.minor;
    if (g.mechanism !== 'NULL') throw new ZmtpError(`mechanism ${JSON.stringify(g.mechanism)} is not offered: NULL only`);
  }

  private onCommand(name: string, data: Buffer): void {
    if (!this.handshaken) {
      if (name === 'ERROR') return this.end(`the peer refused the handshake: ${data.subarray(1, 1 + (data[0] ?? 0)).toString('utf8')}`);
      if (name !== 'READY') throw new ZmtpError(`expected READY, got ${JSON.stringify(name)}`);
      const props = parseProperties(data);
      const socketType = props.get('socket-type')?.toString('latin1') ?? '';
      if (!ROUTER_PEERS.has(socketType)) throw new ZmtpError(`invalid socket type ${JSON.stringify(socketType)} for a ROUTER (DEALER, REQ or ROUTER)`);
      this.handshaken = true;
      this.io.write([ready({ 'Socket-Type': 'ROUTER' })]);
      this.io.ready({ socketType, identity: props.get('identity') ?? EMPTY, minor: this.minor });
      return;
    }
    switch (name) {
      case 'PING':
        if (data.length < 2) throw new ZmtpError('malformed PING');
        this.io.write([pong(data.subarray(2))]);
        return;
      case 'ERROR':
        return this.end('the peer sent ERROR');
      case 'READY':
        throw new ZmtpError('a second READY');
      default:
        return; // PONG, SUBSCRIBE, CANCEL and unknown commands: nothing to do for a ROUTER
    }
  }

  private end(reason: string): void {
    if (this.done) return;
    this.done = true;
    this.io.close(reason);
  }
}
