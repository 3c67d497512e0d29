/**
 * Broker.infer() with a ClusterLink (core/cluster.ts), against a fake sequence
 * directory and a fake forwarder (the real ones are tested end to end in
 * tests/e2e/several-brokers.test.ts): what is asked of the directory, what is
 * forwarded, what is served here.
 */
import { EventEmitter } from 'node:events';
import pino from 'pino';
import { Broker } from '../../core/broker';
import type { ClusterLink, SequencePlace } from '../../core/cluster';
import type { CopySource, ModelCopies, ModelCopiesEvents, ModelCopy } from '../../core/model-copies';
import { SPEC_DEFAULTS, type ModelRegistry, type ModelSpec } from '../../core/model-spec';
import type { InferRequest, ModelReadiness } from '../../core/types';

const spec = (name: string, over: Partial<ModelSpec> = {}): ModelSpec => ({ ...SPEC_DEFAULTS, name, env: {}, min_replicas: 0, ...over }) as ModelSpec;

class Registry extends EventEmitter implements ModelRegistry {
  constructor(private readonly specs: ModelSpec[]) {
    super();
  }
  get(name: string) {
    return this.specs.find((s) => s.name === name);
  }
  list() {
    return this.specs;
  }
  async saveMetadata() {}
  async lastMetadata() {
    return undefined;
  }
}

/** Copies at zero: requests queue (the broker's load() shows them). */
class AtZero extends EventEmitter<ModelCopiesEvents> implements ModelCopies {
  constructor(readonly model: string) {
    super();
  }
  available(): ModelCopy | undefined {
    return undefined;
  }
  ready(): ModelCopy[] {
    return [];
  }
  requestCopy(): boolean {
    return true;
  }
  readiness(): ModelReadiness {
    return { ready: false, phase: 'at-zero' };
  }
  demand(): void {}
  async load() {}
  async unload() {}
  async close() {}
}

const source: CopySource = { forModel: (s) => new AtZero(s.name) };
const brokers: Broker[] = [];
afterEach(async () => {
  // Fails what is still queued (and clears its deadline timers).
  await Promise.all(brokers.splice(0).map((b) => b.close(0)));
});

function setup(answer: (op: 'claim' | 'locate') => Promise<SequencePlace>, overflow?: ClusterLink['overflow']) {
  const calls: string[] = [];
  const forwarded: { broker: string; req: InferRequest; deadline: number }[] = [];
  const released: string[] = [];
  const cluster: ClusterLink = {
    sequences: {
      self: 'me',
      claim: (m, id) => (calls.push(`claim ${m} ${id}`), answer('claim')),
      locate: (m, id) => (calls.push(`locate ${m} ${id}`), answer('locate')),
      release: (m, id, why) => void released.push(`${m} ${id} ${why}`),
    },
    forwarder: {
      forward: async (t, req, deadline) => {
        forwarded.push({ broker: t.broker, req, deadline });
        return { id: req.id, model: req.model, version: '1', outputs: [] };
      },
    },
    overflow,
  };
  const registry = new Registry([spec('seq', { stateless: false, timeout_ms: 5000 }), spec('plain')]);
  const broker = new Broker({ registry, copies: source, logger: pino({ level: 'silent' }), cluster });
  brokers.push(broker);
  return { broker, calls, forwarded, released, queued: (m: string) => broker.load().find((l) => l.model === m)!.queued };
}

const frame = (model: string, sequence?: InferRequest['sequence'], extra: Partial<InferRequest> = {}): InferRequest => ({
  id: 'r', model, inputs: [{ name: 'X', datatype: 'INT32', shape: [1, 1], data: Buffer.alloc(4) }], sequence, ...extra,
});

test('a START claims; owned by a live broker it is forwarded there with the request deadline', async () => {
  const { broker, calls, forwarded } = setup(async () => ({ kind: 'remote', broker: 'other', url: 'http://x' }));
  const t0 = Date.now();
  await broker.infer(frame('seq', { id: 's1', start: true, end: false }));
  expect(calls).toEqual(['claim seq s1']);
  expect(forwarded).toHaveLength(1);
  expect(forwarded[0].broker).toBe('other');
  expect(forwarded[0].deadline).toBeGreaterThanOrEqual(t0 + 5000);
  expect(forwarded[0].deadline).toBeLessThanOrEqual(Date.now() + 5000);
});

test('a START this broker claims is served here and asks nothing more for its later requests', async () => {
  const { broker, calls, forwarded, queued } = setup(async () => ({ kind: 'mine' }));
  void broker.infer(frame('seq', { id: 's1', start: true, end: false })).catch(() => undefined);
  await new Promise((r) => setImmediate(r));
  expect(queued('seq')).toBe(1);
  void broker.infer(frame('seq', { id: 's1', start: false, end: false })).catch(() => undefined);
  expect(queued('seq')).toBe(2); // held here: queued at once, no directory call
  expect(calls).toEqual(['claim seq s1']);
  expect(forwarded).toEqual([]);
});

test('a forwarded request is never forwarded again', async () => {
  const { broker, forwarded } = setup(async () => ({ kind: 'remote', broker: 'third', url: 'http://x' }));
  await expect(broker.infer(frame('seq', { id: 's1', start: false, end: false }, { forwardedBy: 'sender' }))).rejects.toMatchObject({
    code: 'UNAVAILABLE', message: expect.stringMatching(/owned by broker 'third', not by this broker 'me' \(forwarded by 'sender'\)/),
  });
  expect(forwarded).toEqual([]);
});

test('a later request of an ended sequence gets Triton\'s sequence error with the directory\'s reason', async () => {
  const { broker } = setup(async () => ({ kind: 'ended', reason: "its owner broker 'b' is gone" }));
  await expect(broker.infer(frame('seq', { id: 's1', start: false, end: false }))).rejects.toMatchObject({
    code: 'INVALID_ARGUMENT', message: expect.stringMatching(/must specify the START flag.*not active: its owner broker 'b' is gone/),
  });
});

test('the directory unreachable: the request is served here', async () => {
  const { broker, queued } = setup(async () => {
    throw new Error('connection lost');
  });
  void broker.infer(frame('seq', { id: 's1', start: true, end: false })).catch(() => undefined);
  await new Promise((r) => setImmediate(r));
  expect(queued('seq')).toBe(1);
});

test('stateless: forwarded to a holder only while overflow names one; a forwarded request stays here', async () => {
  let target: { broker: string; url: string } | undefined = { broker: 'holder', url: 'http://h' };
  const { broker, calls, forwarded, queued } = setup(async () => ({ kind: 'none' }), async () => target);
  await broker.infer(frame('plain'));
  expect(forwarded.map((f) => f.broker)).toEqual(['holder']);
  void broker.infer(frame('plain', undefined, { forwardedBy: 'x' })).catch(() => undefined);
  expect(queued('plain')).toBe(1);
  target = undefined;
  void broker.infer(frame('plain')).catch(() => undefined);
  await new Promise((r) => setImmediate(r));
  expect(queued('plain')).toBe(2);
  expect(calls).toEqual([]);
});

test('pipelined requests wait behind a START still asking the directory (arrival order kept)', async () => {
  let answer!: (p: SequencePlace) => void;
  const { broker, calls, queued } = setup(() => new Promise<SequencePlace>((r) => (answer = r)));
  const sent = [0, 1, 2, 3].map((f) => broker.infer(frame('seq', { id: 'v', start: f === 0, end: false })).catch(() => undefined));
  await new Promise((r) => setImmediate(r));
  expect(queued('seq')).toBe(0); // nothing overtook the START
  answer({ kind: 'mine' });
  for (let i = 0; i < 10 && queued('seq') < 4; i++) await new Promise((r) => setImmediate(r));
  expect(queued('seq')).toBe(4);
  expect(calls).toEqual(['claim seq v']); // the later ones found the sequence held: no directory call
  void sent;
});
