/**
 * The ZeroMQ client bridge end to end: real Redis, the broker in-process, real
 * model processes, the bridge on a free port, and the Node ZmqClient (plus raw
 * zeromq sockets for malformed messages).
 */
import { create, toBinary } from '@bufbuild/protobuf';
import pino from 'pino';
import { Dealer, Request } from 'zeromq';
import { startZmqBridge, type ZmqBridge } from '../../bridges/zmq/server';
import type { Tensor } from '../../proto/tensor';
import { InferReplySchema, InferRequestSchema, decodeHeader, parametersToProto, toMeta, type InferReply } from '../../proto/client';
import { ZmqClient, ZmqClientError } from '../../sdk/node';
import { row, simpleModel, sleepyModel, startTestBroker, waitFor, waitReady, type TestBroker } from '../helpers/broker';


const MAX_BYTES = 256 * 1024;

const int32 = (name: string, rows: number[][]): Tensor => ({
  name, datatype: 'INT32', shape: [rows.length, rows[0].length], data: Buffer.from(new Int32Array(rows.flat()).buffer),
});
const fp32 = (name: string, rows: number[][]): Tensor => ({
  name, datatype: 'FP32', shape: [rows.length, rows[0].length], data: Buffer.from(new Float32Array(rows.flat()).buffer),
});
const ints = (t: Tensor) => Array.from(new Int32Array(t.data.buffer.slice(t.data.byteOffset, t.data.byteOffset + t.data.byteLength)));
const floats = (t: Tensor) => Array.from(new Float32Array(t.data.buffer.slice(t.data.byteOffset, t.data.byteOffset + t.data.byteLength)));
const out = (outputs: Tensor[], name: string) => outputs.find((o) => o.name === name)!;

/** The rejection's code, or 'OK'. */
async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'OK';
  } catch (e) {
    expect(e).toBeInstanceOf(ZmqClientError);
    return (e as ZmqClientError).code;
  }
}

describe('ZeroMQ bridge, process runtime', () => {
  let b: TestBroker;
  let bridge: ZmqBridge;
  let client: ZmqClient;
  const logLines: string[] = [];

  beforeAll(async () => {
    b = await startTestBroker({
      models: {
        simple: simpleModel(),
        failing: simpleModel({ env: { SIMPLE_FAIL_ON: '999' } }),
        slow: sleepyModel(400, { queue_capacity: 1 }),
        sleepy: sleepyModel(300),
      },
    });
    await Promise.all(['simple', 'failing', 'slow', 'sleepy'].map((m) => waitReady(b, m)));
    const logger = pino({ level: 'debug' }, { write: (line: string) => void logLines.push(line) });
    bridge = await startZmqBridge({ broker: b.running.broker, host: '127.0.0.1', port: 0, maxMessageBytes: MAX_BYTES, logger });
    client = new ZmqClient(bridge.endpoint, { window: 16 });
  });
  afterAll(async () => {
    await client?.close();
    await bridge?.close();
    await b?.stop();
  });

  test('binds a free port and reports it', () => {
    expect(bridge.port).toBeGreaterThan(0);
    expect(bridge.endpoint).toBe(`tcp://127.0.0.1:${bridge.port}`);
  });

  test('simple: sums and differences, id and version echoed, requested outputs only', async () => {
    const a = [row(16), row(16, 100)];
    const c = [row(16, 1), row(16, 2)];
    const r = await client.infer('simple', [int32('INPUT0', a), int32('INPUT1', c)], { id: 'req-1' });
    expect(r).toMatchObject({ id: 'req-1', model: 'simple', version: '1' });
    expect(out(r.outputs, 'OUTPUT0')).toMatchObject({ datatype: 'INT32', shape: [2, 16] });
    expect(ints(out(r.outputs, 'OUTPUT0'))).toEqual(a.flat().map((v, i) => v + c.flat()[i]));
    expect(ints(out(r.outputs, 'OUTPUT1'))).toEqual(a.flat().map((v, i) => v - c.flat()[i]));

    const only = await client.infer('simple', [int32('INPUT0', [row(16)]), int32('INPUT1', [row(16)])], { outputs: ['OUTPUT1'], version: '1' });
    expect(only.outputs.map((o) => o.name)).toEqual(['OUTPUT1']);
    expect(ints(only.outputs[0])).toEqual(new Array(16).fill(0));
    expect(only.id).not.toBe('');
  });

  test('200 pipelined requests with window 16: every one answered with its own rows', async () => {
    const w = new ZmqClient(bridge.endpoint, { window: 16 });
    try {
      let maxInFlight = 0;
      const promises = Array.from({ length: 200 }, (_, i) => {
        const p = w.infer('simple', [int32('INPUT0', [row(16, i)]), int32('INPUT1', [row(16, 1000)])], { id: `p-${i}` });
        maxInFlight = Math.max(maxInFlight, w.inFlight);
        return p;
      });
      expect(w.inFlight).toBe(16);
      expect(w.queued).toBe(184);
      const sampler = setInterval(() => (maxInFlight = Math.max(maxInFlight, w.inFlight)), 1);
      const results = await Promise.all(promises);
      clearInterval(sampler);
      expect(maxInFlight).toBeLessThanOrEqual(16);
      results.forEach((r, i) => {
        expect(r.id).toBe(`p-${i}`);
        expect(ints(out(r.outputs, 'OUTPUT0'))).toEqual(row(16, i).map((v, k) => v + 1000 + k));
        expect(ints(out(r.outputs, 'OUTPUT1'))).toEqual(row(16, i).map((v, k) => v - 1000 - k));
      });
      expect(w.inFlight).toBe(0);
    } finally {
      await w.close();
    }
  });

  test('INVALID_ARGUMENT: wrong datatype, shape/data byte mismatch, unknown input, bad parameter, duplicate id', async () => {
    const good1 = int32('INPUT1', [row(16)]);
    expect(await codeOf(client.infer('simple', [fp32('INPUT0', [row(16)]), good1]))).toBe('INVALID_ARGUMENT');
    const short: Tensor = { name: 'INPUT0', datatype: 'INT32', shape: [1, 16], data: Buffer.alloc(60) };
    const err = await client.infer('simple', [short, good1]).catch((e: ZmqClientError) => e);
    expect(err).toBeInstanceOf(ZmqClientError);
    expect((err as ZmqClientError).code).toBe('INVALID_ARGUMENT');
    expect((err as ZmqClientError).message).toContain('64 bytes');
    expect(await codeOf(client.infer('simple', [int32('INPUT0', [row(16)]), good1, int32('INPUT9', [row(16)])]))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(client.infer('simple', [int32('INPUT0', [row(16)]), good1], { parameters: { timeout: 'soon' } }))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(client.infer('simple', [int32('INPUT0', [row(16)]), good1], { outputs: ['NOPE'] }))).toBe('INVALID_ARGUMENT');
    const slow = client.infer('sleepy', [fp32('INPUT0', [[1]])], { id: 'dup' });
    expect(await codeOf(client.infer('sleepy', [fp32('INPUT0', [[1]])], { id: 'dup' }))).toBe('INVALID_ARGUMENT');
    await slow;
  });

  test('NOT_FOUND: unknown model or version', async () => {
    const inputs = [int32('INPUT0', [row(16)]), int32('INPUT1', [row(16)])];
    const err = await client.infer('nope', inputs, { id: 'nf' }).catch((e: ZmqClientError) => e);
    expect(err).toMatchObject({ code: 'NOT_FOUND' });
    expect((err as Error).message).toContain("'nope'");
    expect(await codeOf(client.infer('simple', inputs, { version: '7' }))).toBe('NOT_FOUND');
  });

  test('RESOURCE_EXHAUSTED: queue full (queue_capacity 1), with a retry hint', async () => {
    const results = await Promise.allSettled(Array.from({ length: 5 }, () => client.infer('slow', [fp32('INPUT0', [[1, 2]])])));
    const codes = results.map((r) => (r.status === 'fulfilled' ? 'OK' : (r.reason as ZmqClientError).code));
    expect(codes).toContain('OK');
    expect(codes).toContain('RESOURCE_EXHAUSTED');
    expect(codes.every((c) => c === 'OK' || c === 'RESOURCE_EXHAUSTED')).toBe(true);
    const rejected = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    expect((rejected.reason as ZmqClientError).retryAfterMs).toBeGreaterThan(0);
    const ok = results.find((r) => r.status === 'fulfilled') as PromiseFulfilledResult<{ outputs: Tensor[] }>;
    expect(floats(ok.value.outputs[0])).toEqual([1, 2]);
  });

  test('DEADLINE_EXCEEDED: timeout parameter (µs) on a slow model; and the client-side timeoutMs', async () => {
    expect(await codeOf(client.infer('sleepy', [fp32('INPUT0', [[1]])], { parameters: { timeout: 50_000 } }))).toBe('DEADLINE_EXCEEDED');
    expect(await codeOf(client.infer('sleepy', [fp32('INPUT0', [[1]])], { timeoutMs: 60 }))).toBe('DEADLINE_EXCEEDED');
    // priority is accepted as a parameter
    const r = await client.infer('sleepy', [fp32('INPUT0', [[3.5]])], { parameters: { priority: 1 } });
    expect(floats(r.outputs[0])).toEqual([3.5]);
  });

  test("INTERNAL: the model's own error; other rows of the batch still succeed", async () => {
    const [bad, good] = await Promise.allSettled([
      client.infer('failing', [int32('INPUT0', [row(16, 999)]), int32('INPUT1', [row(16)])]),
      client.infer('failing', [int32('INPUT0', [row(16)]), int32('INPUT1', [row(16)])]),
    ]);
    expect(bad.status).toBe('rejected');
    expect((bad as PromiseRejectedResult).reason).toMatchObject({ code: 'INTERNAL' });
    expect(good.status).toBe('fulfilled');
  });

  describe('malformed messages from a raw DEALER', () => {
    let raw: Dealer;
    beforeAll(() => {
      raw = new Dealer({ linger: 0, receiveTimeout: 5000 });
      raw.connect(bridge.endpoint);
    });
    afterAll(() => raw.close());

    const header = (fields: Record<string, unknown>) => Buffer.from(toBinary(InferRequestSchema, create(InferRequestSchema, fields)));
    const simpleMetas = [toMeta(int32('INPUT0', [row(16)])), toMeta(int32('INPUT1', [row(16)]))];
    const frame64 = () => Buffer.from(new Int32Array(row(16)).buffer);
    async function exchange(frames: Buffer[]): Promise<{ reply: InferReply; frames: Buffer[] }> {
      await raw.send(frames);
      const [head, ...rest] = await raw.receive();
      return { reply: decodeHeader(InferReplySchema, head), frames: rest };
    }
    async function stillServing() {
      const r = await client.infer('simple', [int32('INPUT0', [row(16, 5)]), int32('INPUT1', [row(16)])]);
      expect(ints(out(r.outputs, 'OUTPUT0'))).toEqual(row(16, 5).map((v, k) => v + k));
    }

    test('a raw request works and shows the wire format', async () => {
      const { reply, frames } = await exchange([header({ id: 'raw-1', model: 'simple', inputs: simpleMetas }), frame64(), frame64()]);
      expect(reply).toMatchObject({ id: 'raw-1', model: 'simple', version: '1', status: { code: 'OK' } });
      expect(reply.outputs.map((o) => [o.name, o.datatype, o.shape.map(Number)])).toEqual([
        ['OUTPUT0', 'INT32', [1, 16]], ['OUTPUT1', 'INT32', [1, 16]],
      ]);
      expect(frames.map((f) => f.length)).toEqual([64, 64]);
    });

    test('garbage header: INVALID_ARGUMENT, with the id when it can be read', async () => {
      const garbage = await exchange([Buffer.from([0xff, 0xff, 0xff, 0x07, 0x01])]);
      expect(garbage.reply).toMatchObject({ id: '', status: { code: 'INVALID_ARGUMENT' } });
      expect(garbage.frames).toEqual([]);
      const truncated = Buffer.concat([header({ id: 'g-1', model: 'simple' }), Buffer.from([0x22, 0x7f, 0x01])]);
      expect((await exchange([truncated, frame64()])).reply).toMatchObject({ id: 'g-1', status: { code: 'INVALID_ARGUMENT' } });
      await stillServing();
    });

    test('missing frames, extra frames, unknown datatype, bad dimension, empty header: INVALID_ARGUMENT with the id', async () => {
      const missing = await exchange([header({ id: 'm-1', model: 'simple', inputs: simpleMetas }), frame64()]);
      expect(missing.reply).toMatchObject({ id: 'm-1', model: 'simple', status: { code: 'INVALID_ARGUMENT' } });
      expect(missing.reply.status!.message).toContain('2 tensors but 1 tensor frames');
      const extra = await exchange([header({ id: 'm-2', model: 'simple', inputs: simpleMetas }), frame64(), frame64(), frame64()]);
      expect(extra.reply).toMatchObject({ id: 'm-2', status: { code: 'INVALID_ARGUMENT' } });
      const dtMetas = [{ ...simpleMetas[0], datatype: 'INT33' }, simpleMetas[1]];
      const dt = await exchange([header({ id: 'm-3', model: 'simple', inputs: dtMetas }), frame64(), frame64()]);
      expect(dt.reply).toMatchObject({ id: 'm-3', status: { code: 'INVALID_ARGUMENT' } });
      expect(dt.reply.status!.message).toContain('INT33');
      const dimMetas = [{ ...simpleMetas[0], shape: [-1n, 16n] }, simpleMetas[1]];
      expect((await exchange([header({ id: 'm-4', model: 'simple', inputs: dimMetas }), frame64(), frame64()])).reply.status!.code).toBe('INVALID_ARGUMENT');
      const empty = await exchange([Buffer.alloc(0)]);
      expect(empty.reply).toMatchObject({ status: { code: 'INVALID_ARGUMENT', message: 'the request names no model' } });
      expect(empty.reply.id).not.toBe('');
      const noInputs = await exchange([header({ id: 'm-5', model: 'simple' })]);
      expect(noInputs.reply).toMatchObject({ id: 'm-5', status: { code: 'INVALID_ARGUMENT' } });
      await stillServing();
    });

    test('sequence fields on a stateless model: INVALID_ARGUMENT, as on every bridge', async () => {
      const seq = await exchange([header({ id: 's-1', model: 'simple', inputs: simpleMetas, sourceId: 'cam-1', start: true }), frame64(), frame64()]);
      expect(seq.reply).toMatchObject({ id: 's-1', status: { code: 'INVALID_ARGUMENT' } });
      expect(seq.reply.status!.message).toContain('stateless');
      const noSource = await exchange([header({ id: 's-2', model: 'simple', inputs: simpleMetas, start: true }), frame64(), frame64()]);
      expect(noSource.reply).toMatchObject({ id: 's-2', status: { code: 'INVALID_ARGUMENT' } });
    });

    test('parameters travel as KServe InferParameter values', async () => {
      const h = header({ id: 'pa-1', model: 'sleepy', inputs: [toMeta(fp32('INPUT0', [[1]]))], parameters: parametersToProto({ timeout: 20_000n, custom: 'x', flag: true, ratio: 0.5 }) });
      const r = await exchange([h, Buffer.from(new Float32Array([1]).buffer)]);
      expect(r.reply).toMatchObject({ id: 'pa-1', status: { code: 'DEADLINE_EXCEEDED' } });
    });

    test('over maxMessageBytes in total: INVALID_ARGUMENT with the id', async () => {
      const big = Buffer.alloc(MAX_BYTES / 2);
      const r = await exchange([header({ id: 'big-1', model: 'simple', inputs: simpleMetas }), big, big]);
      expect(r.reply).toMatchObject({ id: 'big-1', status: { code: 'INVALID_ARGUMENT' } });
      expect(r.reply.status!.message).toContain(`limit is ${MAX_BYTES}`);
      await stillServing();
    });

    test('one frame over maxMessageBytes: INVALID_ARGUMENT with the id, and the same connection is served after', async () => {
      // Before the bridge had its own ROUTER, libzmq (ZMQ_MAXMSGSIZE) dropped the connection and there was no reply.
      const huge = new Dealer({ linger: 0, receiveTimeout: 5000 });
      huge.connect(bridge.endpoint);
      try {
        const h = header({ id: 'huge', model: 'simple', inputs: simpleMetas });
        await huge.send([h, Buffer.alloc(MAX_BYTES + 1), frame64()]);
        const r = decodeHeader(InferReplySchema, (await huge.receive())[0]);
        expect(r).toMatchObject({ id: 'huge', status: { code: 'INVALID_ARGUMENT' } });
        expect(r.status!.message).toContain(`${h.length + MAX_BYTES + 1 + 64} bytes; the limit is ${MAX_BYTES}`);
        await huge.send([header({ id: 'after-huge', model: 'simple', inputs: simpleMetas }), frame64(), frame64()]);
        expect(decodeHeader(InferReplySchema, (await huge.receive())[0])).toMatchObject({ id: 'after-huge', status: { code: 'OK' } });
      } finally {
        huge.close();
      }
      await stillServing();
    });

    test('a REQ socket (with its empty delimiter frame) gets its reply too', async () => {
      const req = new Request({ linger: 0, receiveTimeout: 5000 });
      req.connect(bridge.endpoint);
      try {
        await req.send([header({ id: 'req-sock', model: 'simple', inputs: simpleMetas }), frame64(), frame64()]);
        const [head, o0] = await req.receive();
        expect(decodeHeader(InferReplySchema, head)).toMatchObject({ id: 'req-sock', status: { code: 'OK' } });
        expect(ints({ name: 'x', datatype: 'INT32', shape: [16], data: o0 })).toEqual(row(16).map((v) => v * 2));
      } finally {
        req.close();
      }
    });
  });

  test('a client that disconnects: seen at its TCP close, logged, and its requests at the broker are cancelled', async () => {
    const gone = new Dealer({ linger: 0 });
    gone.connect(bridge.endpoint);
    const h = (id: string) => Buffer.from(toBinary(InferRequestSchema, create(InferRequestSchema, { id, model: 'sleepy', inputs: [toMeta(fp32('INPUT0', [[1]]))] })));
    const x = Buffer.from(new Float32Array([1]).buffer);
    for (const id of ['d-1', 'd-2', 'd-3']) await gone.send([h(id), x]);
    await waitFor(() => b.running.broker.load().some((l) => l.model === 'sleepy' && l.queued + l.running === 3), 5000, 'three requests at sleepy');
    gone.close();
    await waitFor(() => logLines.some((l) => l.includes('client disconnected')), 5000, 'the disconnect log line');
    const line = JSON.parse(logLines.find((l) => l.includes('client disconnected'))!);
    // All three: the close is seen at once (before, libzmq's ROUTER only told when the first reply failed, so 2 were left).
    expect(line.cancelled).toBe(3);
    await waitFor(() => b.running.broker.load().some((l) => l.model === 'sleepy' && l.queued + l.running === 0), 5000, 'sleepy idle');
    await stillServingFor(client);
  });

  test('close() answers the requests in flight, then stops', async () => {
    const c2 = new ZmqClient(bridge.endpoint, { timeoutMs: 3000 });
    const p = c2.infer('sleepy', [fp32('INPUT0', [[7]])]);
    await waitFor(() => b.running.broker.load().some((l) => l.model === 'sleepy' && l.running + l.queued === 1), 5000, 'request at sleepy');
    await bridge.close();
    expect(floats((await p).outputs[0])).toEqual([7]);
    expect(await codeOf(c2.infer('simple', [int32('INPUT0', [row(16)]), int32('INPUT1', [row(16)])], { timeoutMs: 300 }))).toBe('DEADLINE_EXCEEDED');
    await c2.close();
  });
});

async function stillServingFor(client: ZmqClient) {
  const r = await client.infer('simple', [int32('INPUT0', [row(16, 9)]), int32('INPUT1', [row(16)])]);
  expect(ints(out(r.outputs, 'OUTPUT0'))).toEqual(row(16, 9).map((v, k) => v + k));
}
