/**
 * The ZMTP codec (bridges/zmq/zmtp.ts) without sockets: one client byte
 * stream (greeting, READY, messages with short and long frames, a PING, a
 * message over the limit) fed whole, split at every byte boundary, byte by
 * byte and at random boundaries must give the same events and the same
 * bytes back; plus the handshake refusals and the no-allocation rule.
 */
import fc from 'fast-check';
import {
  GREETING_BYTES, ZmtpDecoder, ZmtpServerSession, command, encodeMessage, parseCommand, parseGreeting, parseProperties, ping, ready,
  type DecoderLimits,
} from '../../bridges/zmq/zmtp';

const LIMITS: DecoderLimits = { maxMessageBytes: 4096, maxFrames: 8 };

/** A client greeting as libzmq 4.3 sends it (padding = routing-id size + 1, version 3.1). */
function clientGreeting(minor = 1, mechanism = 'NULL'): Buffer {
  const g = Buffer.alloc(GREETING_BYTES);
  g[0] = 0xff;
  g[8] = 1;
  g[9] = 0x7f;
  g[10] = 3;
  g[11] = minor;
  g.write(mechanism, 12, 'latin1');
  return g;
}

const flat = (chunks: Buffer[]) => Buffer.concat(chunks);
const msg = (...frames: Buffer[]) => flat(encodeMessage(frames));
const bytes = (n: number, fill: number) => Buffer.alloc(n, fill);

/** What a session did, comparable across ways of feeding it. */
interface Record {
  written: Buffer[];
  events: string[];
  closed?: string;
}

function run(chunks: Buffer[], limits = LIMITS): Record {
  const rec: Record = { written: [], events: [] };
  const s = new ZmtpServerSession(limits, {
    write: (c) => rec.written.push(...c.map((b) => Buffer.from(b))),
    ready: (p) => rec.events.push(`ready ${p.socketType} 3.${p.minor} id=${p.identity.toString('hex')}`),
    message: (frames) => rec.events.push(`message ${frames.map((f) => `${f.length}:${f.toString('hex').slice(0, 16)}`).join(',')}`),
    oversized: (leading, frames, total) => rec.events.push(`oversized ${leading.map((f) => f.length).join(',')} frames=${frames} bytes=${total}`),
    close: (reason) => (rec.closed = reason),
  });
  s.start();
  for (const c of chunks) s.feed(c);
  return rec;
}

const stream = flat([
  clientGreeting(),
  ready({ 'Socket-Type': 'DEALER', Identity: '' }),
  msg(Buffer.from('header'), bytes(300, 1), bytes(0, 0)), // short, long and empty frames
  ping(0, Buffer.from('ctx-1')),
  msg(bytes(3000, 2), bytes(3000, 3), bytes(64, 4)), // 6064 bytes > 4096: skipped
  msg(bytes(0, 0), Buffer.from('after')), // a REQ-style delimiter first
  msg(...Array.from({ length: 10 }, (_, i) => bytes(1, i))), // 10 frames > 8
  msg(bytes(4096, 5)), // exactly the limit
]);

/** The events of `stream`, however it is split. */
const EXPECTED = [
  'ready DEALER 3.1 id=',
  `message 6:${Buffer.from('header').toString('hex')},300:0101010101010101,0:`,
  'oversized 3000 frames=3 bytes=6064',
  `message 0:,5:${Buffer.from('after').toString('hex')}`,
  'oversized 1,1,1 frames=10 bytes=10',
  'message 4096:0505050505050505',
];

describe('ZMTP decoder and server session', () => {
  const whole = run([stream]);

  test('the whole stream: handshake, messages, PONG with the context, oversized messages counted and skipped', () => {
    expect(whole.closed).toBeUndefined();
    expect(whole.events).toEqual(EXPECTED);
    const out = flat(whole.written);
    const g = parseGreeting(out.subarray(0, GREETING_BYTES));
    expect(g).toEqual({ major: 3, minor: 1, mechanism: 'NULL', asServer: false });
    // After the greeting: our READY (Socket-Type ROUTER), then PONG "ctx-1".
    const frames = decodeCommands(out.subarray(GREETING_BYTES));
    expect(frames.map((f) => f.name)).toEqual(['READY', 'PONG']);
    expect(parseProperties(frames[0].data).get('socket-type')!.toString()).toBe('ROUTER');
    expect(frames[1].data.toString()).toBe('ctx-1');
  });

  test('split into two at every byte boundary: the same events and bytes', () => {
    for (let i = 1; i < stream.length; i++) {
      const r = run([stream.subarray(0, i), stream.subarray(i)]);
      expect(r.events).toEqual(EXPECTED);
      expect(flat(r.written)).toEqual(flat(whole.written));
    }
  });

  test('byte by byte: the same events', () => {
    const r = run(Array.from(stream, (b) => Buffer.from([b])));
    expect(r.events).toEqual(EXPECTED);
    expect(flat(r.written)).toEqual(flat(whole.written));
  });

  test('random boundaries (fast-check): the same events', () => {
    fc.assert(fc.property(fc.array(fc.nat({ max: stream.length }), { maxLength: 40 }), (cuts) => {
      const at = [...new Set(cuts)].sort((a, b) => a - b);
      const chunks: Buffer[] = [];
      let prev = 0;
      for (const c of [...at, stream.length]) {
        chunks.push(stream.subarray(prev, c));
        prev = c;
      }
      const r = run(chunks);
      expect(r.events).toEqual(EXPECTED);
    }), { numRuns: 300 });
  });

  test('frames are views of the chunk when they are a good part of it, copies otherwise; contents the same', () => {
    const got: Buffer[][] = [];
    const d = new ZmtpDecoder({ maxMessageBytes: 1 << 20, maxFrames: 4 }, {
      greeting: () => undefined, command: () => undefined, oversized: () => undefined, message: (f) => got.push(f),
    });
    d.feed(clientGreeting());
    const big = bytes(50_000, 7);
    const chunk = msg(Buffer.from('h'), big);
    d.feed(chunk);
    expect(got[0][1].buffer).toBe(chunk.buffer); // a view
    expect(got[0][0].buffer).not.toBe(chunk.buffer); // one byte of a 50 KB chunk: copied, so the chunk is not kept
    expect(got[0][1].equals(big)).toBe(true);
  });

  test('a ZMTP 3.0 peer is served without heartbeats', () => {
    const r = run([clientGreeting(0), ready({ 'Socket-Type': 'REQ' }), msg(bytes(0, 0), Buffer.from('x'))]);
    expect(r.events).toEqual(['ready REQ 3.0 id=', 'message 0:,1:78']);
  });

  test.each([
    ['CURVE mechanism', [clientGreeting(1, 'CURVE')], /mechanism "CURVE" is not offered/],
    ['PUB socket type', [clientGreeting(), ready({ 'Socket-Type': 'PUB' })], /invalid socket type "PUB"/],
    ['no socket type', [clientGreeting(), ready({})], /invalid socket type ""/],
    ['a message before READY', [clientGreeting(), msg(Buffer.from('x'))], /before the handshake/],
    ['ZMTP 2.0', [Buffer.from([0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 1, 5])], /revision 1 is older than 3.0/],
    ['not ZMTP (HTTP)', [Buffer.from('GET / HTTP/1.1\r\n\r\n')], /not a ZMTP 3 peer/],
    ['a huge command frame', [clientGreeting(), Buffer.from([0x06, 0, 0, 0, 0, 0x10, 0, 0, 0])], /command frame of/],
    ['a size beyond 2^53', [clientGreeting(), ready({ 'Socket-Type': 'DEALER' }), Buffer.from([0x02, 0xff, 0, 0, 0, 0, 0, 0, 0])], /beyond 2\^53/],
    ['a malformed READY', [clientGreeting(), command('READY', Buffer.from([11, 0x53]))], /malformed property/],
  ])('refused with ERROR and closed: %s', (_what, chunks, reason) => {
    const r = run(chunks as Buffer[]);
    expect(r.closed).toMatch(reason);
    const after = decodeCommands(flat(r.written).subarray(GREETING_BYTES));
    expect(after.at(-1)!.name).toBe('ERROR');
    expect(r.events.filter((e) => e.startsWith('message'))).toEqual([]);
  });

  test('a frame announcing 1 TiB against a 4 KiB limit: skipped as it comes, nothing of that size allocated', () => {
    const r = run([
      clientGreeting(), ready({ 'Socket-Type': 'DEALER' }),
      Buffer.from([0x03, 0, 0, 0x01, 0, 0, 0, 0, 0]), // MORE | LONG, 2^40 bytes
      bytes(1 << 20, 9), // a MiB of it: counted, not kept
    ]);
    expect(r.closed).toBeUndefined();
    expect(r.events).toEqual(['ready DEALER 3.1 id=']); // still inside the message: no answer yet
  });

  test('encodeMessage: headers merged with small frames, big frames passed as they are', () => {
    const big = bytes(10_000, 1);
    const parts = encodeMessage([Buffer.from('abc'), big, Buffer.from('z')]);
    expect(parts).toHaveLength(3);
    expect(parts[1]).toBe(big);
    expect(parts[0]).toEqual(Buffer.from([0x01, 3, 0x61, 0x62, 0x63, 0x03, 0, 0, 0, 0, 0, 0, 0x27, 0x10]));
    expect(parts[2]).toEqual(Buffer.from([0x00, 1, 0x7a]));
  });
});

/** Command frames in a server's output after its greeting. */
function decodeCommands(out: Buffer): { name: string; data: Buffer }[] {
  const cmds: { name: string; data: Buffer }[] = [];
  let p = 0;
  while (p < out.length) {
    const flags = out[p++];
    let size: number;
    if (flags & 2) {
      size = Number(out.readBigUInt64BE(p));
      p += 8;
    } else size = out[p++];
    if (flags & 4) cmds.push(parseCommand(out.subarray(p, p + size)));
    p += size;
  }
  return cmds;
}
