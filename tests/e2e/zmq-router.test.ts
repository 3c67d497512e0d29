/**
 * The bridge's own ZMTP ROUTER (bridges/zmq/zmtp-router.ts) at the socket:
 * heartbeats (a client that stops answering without closing TCP is dropped,
 * and its requests are cancelled; one that answers PINGs stays), the
 * connection bound, libzmq REQ and ROUTER peers, and a refused socket type.
 * Raw clients speak ZMTP through zmtp.ts's own codec; the others are libzmq.
 */
import net from 'node:net';
import { create, toBinary } from '@bufbuild/protobuf';
import pino from 'pino';
import { Request, Router } from 'zeromq';
import { startZmqBridge, type ZmqBridge } from '../../bridges/zmq/server';
import { ZmtpDecoder, command, encodeMessage, pong, ready, type DecoderEvents } from '../../bridges/zmq/zmtp';
import { InferReplySchema, InferRequestSchema, decodeHeader, toMeta } from '../../proto/client';
import { modelMain, row, simpleModel, sleepyModel, startTestBroker, waitFor, waitReady, type TestBroker } from '../helpers/broker';

const HEARTBEAT_MS = 100;
const TIMEOUT_MS = 600;

/** libzmq 4.3's greeting (version 3.1, NULL). */
function clientGreeting(): Buffer {
  const g = Buffer.alloc(64);
  g[0] = 0xff;
  g[8] = 1;
  g[9] = 0x7f;
  g[10] = 3;
  g[11] = 1;
  g.write('NULL', 12, 'latin1');
  return g;
}

/** A raw ZMTP client: what it received (commands, messages) and whether the server closed it. */
class RawClient {
  readonly socket: net.Socket;
  readonly commands: string[] = [];
  readonly messages: Buffer[][] = [];
  closed = false;
  answerPings = false;

  constructor(port: number, socketType = 'DEALER') {
    const events: DecoderEvents = {
      greeting: () => undefined,
      command: (name, data) => {
        this.commands.push(name);
        if (name === 'PING' && this.answerPings) this.socket.write(pong(data.subarray(2)));
      },
      message: (frames) => this.messages.push(frames),
      oversized: () => undefined,
    };
    const decoder = new ZmtpDecoder({ maxMessageBytes: 1 << 24, maxFrames: 100 }, events);
    this.socket = net.connect(port, '127.0.0.1');
    this.socket.on('data', (c) => decoder.feed(c));
    this.socket.on('error', () => undefined);
    this.socket.on('close', () => (this.closed = true));
    this.socket.write(Buffer.concat([clientGreeting(), ready({ 'Socket-Type': socketType, Identity: '' })]));
  }

  send(frames: Buffer[]): void {
    for (const c of encodeMessage(frames)) this.socket.write(c);
  }
}

const simpleMetas = [
  toMeta({ name: 'INPUT0', datatype: 'INT32', shape: [1, 16], data: Buffer.alloc(0) }),
  toMeta({ name: 'INPUT1', datatype: 'INT32', shape: [1, 16], data: Buffer.alloc(0) }),
];
const x16 = () => Buffer.from(new Int32Array(row(16)).buffer);
const simpleRequest = (id: string) => [Buffer.from(toBinary(InferRequestSchema, create(InferRequestSchema, { id, model: 'simple', inputs: simpleMetas }))), x16(), x16()];
const sleepyRequest = (id: string) => [
  Buffer.from(toBinary(InferRequestSchema, create(InferRequestSchema, { id, model: 'sleepy', inputs: [toMeta({ name: 'INPUT0', datatype: 'FP32', shape: [1, 1], data: Buffer.alloc(0) })] }))),
  Buffer.from(new Float32Array([1]).buffer),
];
/** A raw client past its handshake; connects again while the server is still at maxConnections (it sees closes a moment after the client). */
async function connected(port: number, answerPings = true): Promise<RawClient> {
  let c = new RawClient(port);
  c.answerPings = answerPings;
  await waitFor(() => {
    if (c.commands.includes('READY')) return true;
    if (c.closed) {
      c = new RawClient(port);
      c.answerPings = answerPings;
    }
    return false;
  }, 5000, 'a connection accepted');
  return c;
}
const replyOf = (frames: Buffer[]) => decodeHeader(InferReplySchema, frames[0]);

describe('ZeroMQ bridge: its ZMTP ROUTER', () => {
  let b: TestBroker;
  let bridge: ZmqBridge;
  const logLines: string[] = [];

  beforeAll(async () => {
    b = await startTestBroker({ models: { simple: simpleModel(), sleepy: sleepyModel(1000), identity: { command: ['node', modelMain('identity')], batch_size: 1 } } });
    await Promise.all(['simple', 'sleepy', 'identity'].map((m) => waitReady(b, m)));
    const logger = pino({ level: 'debug' }, { write: (line: string) => void logLines.push(line) });
    bridge = await startZmqBridge({
      broker: b.running.broker, host: '127.0.0.1', port: 0, maxMessageBytes: 1 << 20, logger,
      heartbeatIntervalMs: HEARTBEAT_MS, heartbeatTimeoutMs: TIMEOUT_MS, maxConnections: 4,
    });
  });
  afterAll(async () => {
    await bridge?.close();
    await b?.stop();
  });

  test('maxConnections: a connection beyond it is closed at once; one is accepted again when another leaves', async () => {
    // First in this file: no other connection is open.
    const clients = Array.from({ length: 4 }, () => new RawClient(bridge.port));
    for (const c of clients) c.answerPings = true;
    await waitFor(() => clients.every((c) => c.commands.includes('READY')), 5000, 'four handshakes');
    const fifth = new RawClient(bridge.port);
    await waitFor(() => fifth.closed, 5000, 'the fifth closed');
    expect(fifth.commands).toEqual([]);
    expect(logLines.some((l) => l.includes('too many connections'))).toBe(true);
    clients[0].socket.destroy();
    const accepted = await connected(bridge.port);
    accepted.send(simpleRequest('again'));
    await waitFor(() => accepted.messages.length === 1, 5000, 'the reply');
    expect(replyOf(accepted.messages[0]).status!.code).toBe('OK');
    for (const c of [...clients, accepted]) c.socket.destroy();
  });

  test('a raw ZMTP 3.1 client is served', async () => {
    const c = await connected(bridge.port);
    c.send(simpleRequest('raw-1'));
    await waitFor(() => c.messages.length === 1, 5000, 'the reply');
    expect(replyOf(c.messages[0])).toMatchObject({ id: 'raw-1', status: { code: 'OK' } });
    expect(c.commands[0]).toBe('READY');
    c.socket.destroy();
  });

  test('a client that goes silent without closing TCP: PINGed, dropped after the timeout, its requests cancelled', async () => {
    const c = await connected(bridge.port, false);
    c.send(sleepyRequest('s-1'));
    c.send(sleepyRequest('s-2'));
    await waitFor(() => b.running.broker.load().some((l) => l.model === 'sleepy' && l.queued + l.running === 2), 5000, 'two requests at sleepy');
    // From here on it answers nothing (its kernel still ACKs: the TCP connection stays up).
    await waitFor(() => c.closed, 10_000, 'the server to drop the silent client');
    expect(c.commands.filter((n) => n === 'PING').length).toBeGreaterThan(0);
    const line = logLines.map((l) => JSON.parse(l)).find((l) => String(l.msg).includes('client disconnected') && String(l.reason).includes('heartbeat timeout'));
    expect(line).toMatchObject({ cancelled: 2 });
    await waitFor(() => b.running.broker.load().some((l) => l.model === 'sleepy' && l.queued + l.running === 0), 10_000, 'sleepy idle');
  });

  test('a client that answers PINGs stays connected past the timeout and is served', async () => {
    const c = await connected(bridge.port);
    const t0 = Date.now();
    // PINGs come only after HEARTBEAT_MS of silence; this many of them span more than the timeout.
    await waitFor(() => c.commands.filter((n) => n === 'PING').length >= Math.ceil((2 * TIMEOUT_MS) / HEARTBEAT_MS), 20_000, 'PINGs');
    expect(Date.now() - t0).toBeGreaterThan(TIMEOUT_MS);
    expect(c.closed).toBe(false);
    c.send(simpleRequest('alive'));
    await waitFor(() => c.messages.length === 1, 5000, 'the reply');
    expect(replyOf(c.messages[0])).toMatchObject({ id: 'alive', status: { code: 'OK' } });
    c.socket.destroy();
  });

  test('a connection that never finishes its handshake is closed after the timeout', async () => {
    let closed = false;
    let got = 0;
    const connect = () => {
      const s = net.connect(bridge.port, '127.0.0.1');
      s.on('error', () => undefined);
      s.on('data', (d) => (got += d.length));
      s.on('close', () => (closed = true));
      s.write(Buffer.from([0xff, 0, 0])); // the start of a greeting, then nothing
    };
    connect();
    await waitFor(() => {
      if (closed && got === 0) { // refused at maxConnections: again
        closed = false;
        connect();
      }
      return closed;
    }, 10_000, 'the half-greeted connection closed');
    expect(got).toBeGreaterThanOrEqual(64); // our greeting came at once
    expect(logLines.some((l) => l.includes('handshake not done in time'))).toBe(true);
  });

  test('a PUB peer is refused with ERROR and closed', async () => {
    let c = new RawClient(bridge.port, 'PUB');
    await waitFor(() => {
      if (c.closed && c.commands.length === 0) c = new RawClient(bridge.port, 'PUB'); // refused at maxConnections: again
      return c.closed && c.commands.length > 0;
    }, 5000, 'the PUB peer closed');
    expect(c.commands).toEqual(['ERROR']);
  });

  test('an unknown command after the handshake is ignored; a command frame over 64 KiB ends the connection', async () => {
    const c = await connected(bridge.port);
    c.socket.write(command('HELLO-THERE', Buffer.from('x')));
    c.send(simpleRequest('after-cmd'));
    await waitFor(() => c.messages.length === 1, 5000, 'the reply');
    c.socket.write(Buffer.from([0x06, 0, 0, 0, 0, 0, 0x02, 0, 0])); // a command of 128 KiB announced
    await waitFor(() => c.closed, 5000, 'closed');
    expect(c.commands.at(-1)).toBe('ERROR');
  });

  test('a client that does not read: past clientQueueBytes its connection is not read; once it reads, every request is answered', async () => {
    const BUDGET = 256 * 1024;
    const small = await startZmqBridge({
      broker: b.running.broker, host: '127.0.0.1', port: 0, maxMessageBytes: 16 << 20, clientQueueBytes: BUDGET,
      logger: pino({ level: 'debug' }, { write: (line: string) => void logLines.push(line) }),
    });
    try {
      const c = await connected(small.port);
      c.socket.pause(); // reads nothing from here on
      const big = Buffer.alloc(8 << 20, 1);
      const h = Buffer.from(toBinary(InferRequestSchema, create(InferRequestSchema, {
        id: 'big', model: 'identity', outputs: ['OUT_UINT8'], inputs: [toMeta({ name: 'IN_UINT8', datatype: 'UINT8', shape: [1, big.length], data: Buffer.alloc(0) })],
      })));
      c.send([h, big]);
      // The 8 MiB reply is more than the kernel's buffers take while nobody reads.
      await waitFor(() => small.backlogBytes() > BUDGET, 20_000, 'replies waiting past the budget');
      await waitFor(() => logLines.some((l) => l.includes('not read until its replies drain')), 5000, 'reading paused');
      for (const id of ['p-1', 'p-2', 'p-3']) c.send(simpleRequest(id));
      c.socket.resume();
      await waitFor(() => c.messages.length === 4, 20_000, 'four replies');
      const replies = c.messages.map(replyOf);
      expect(replies.map((r) => r.id)).toEqual(['big', 'p-1', 'p-2', 'p-3']);
      expect(replies.every((r) => r.status!.code === 'OK' || r.status!.code === 'RESOURCE_EXHAUSTED')).toBe(true);
      expect(c.messages[0][1].equals(big)).toBe(true);
      expect(logLines.some((l) => l.includes('client read again'))).toBe(true);
      c.socket.destroy();
    } finally {
      await small.close();
    }
  });

  test('libzmq REQ and ROUTER clients are served', async () => {
    const req = new Request({ linger: 0, receiveTimeout: 5000 });
    req.connect(bridge.endpoint);
    const router = new Router({ linger: 0, receiveTimeout: 5000, mandatory: true });
    router.connect(bridge.endpoint, { routingId: 'broker' });
    try {
      await req.send(simpleRequest('via-req'));
      expect(replyOf(await req.receive())).toMatchObject({ id: 'via-req', status: { code: 'OK' } });
      // A ROUTER addresses the bridge by the id it gave the connection; wait until it is connected.
      for (;;) {
        try {
          await router.send([Buffer.from('broker'), ...simpleRequest('via-router')]);
          break;
        } catch (e) {
          if ((e as { code?: string }).code !== 'EHOSTUNREACH') throw e;
          await new Promise((r) => setImmediate(r));
        }
      }
      const [from, ...rest] = await router.receive();
      expect(from.toString()).toBe('broker');
      expect(replyOf(rest)).toMatchObject({ id: 'via-router', status: { code: 'OK' } });
    } finally {
      req.close();
      router.close();
    }
  });
});
