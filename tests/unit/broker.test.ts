/** Broker against a fake registry and fake per-model copies: pairing on put/delete, phases, metadata at zero. */
import { EventEmitter } from 'node:events';
import pino from 'pino';
import { Broker } from '../../core/broker';
import type { CopySource, ModelCopies, ModelCopiesEvents, ModelCopy } from '../../core/model-copies';
import { SPEC_DEFAULTS, type ModelRegistry, type ModelSpec, type RegistryEvent, type SavedMetadata } from '../../core/model-spec';
import type { ModelMetadata, ModelReadiness } from '../../core/types';

const META: ModelMetadata = { name: 'm', version: '1', maxBatch: 4, inputs: [{ name: 'X', datatype: 'INT32', shape: [-1, 1] }], outputs: [] };
const spec = (name: string, over: Partial<ModelSpec> = {}): ModelSpec => ({ ...SPEC_DEFAULTS, name, env: {}, ...over }) as ModelSpec;

class FakeRegistry extends EventEmitter implements ModelRegistry {
  specs = new Map<string, ModelSpec>();
  saved = new Map<string, SavedMetadata>();
  get(name: string) {
    return this.specs.get(name);
  }
  list() {
    return [...this.specs.values()];
  }
  async saveMetadata(name: string, s: SavedMetadata) {
    this.saved.set(name, s);
  }
  async lastMetadata(name: string) {
    return this.saved.get(name);
  }
  put(s: ModelSpec) {
    this.specs.set(s.name, s);
    this.emit('change', { type: 'put', name: s.name, spec: s } satisfies RegistryEvent);
  }
  delete(name: string) {
    const previous = this.specs.get(name)!;
    this.specs.delete(name);
    this.emit('change', { type: 'delete', name, previous } satisfies RegistryEvent);
  }
}

class FakeCopies extends EventEmitter<ModelCopiesEvents> implements ModelCopies {
  metadata?: ModelMetadata;
  phase: ModelReadiness = { ready: false, phase: 'at-zero', reason: 'scaled to zero' };
  asked: string[] = [];
  demands: number[] = [];
  closed?: string;
  constructor(readonly model: string) {
    super();
  }
  available(): ModelCopy | undefined {
    return undefined;
  }
  ready(): ModelCopy[] {
    return [];
  }
  requestCopy(reason: string): boolean {
    this.asked.push(reason);
    return true;
  }
  readiness(): ModelReadiness {
    return this.phase;
  }
  demand(queued: number): void {
    this.demands.push(queued);
  }
  async load() {}
  async unload() {}
  async close(reason: string) {
    this.closed = reason;
  }
  setPhase(r: ModelReadiness) {
    this.phase = r;
    this.emit('phase', r);
  }
}

class FakeSource implements CopySource {
  made = new Map<string, FakeCopies>();
  forModel(s: ModelSpec): FakeCopies {
    let c = this.made.get(s.name);
    if (!c) this.made.set(s.name, (c = new FakeCopies(s.name)));
    return c;
  }
}

function setup() {
  const registry = new FakeRegistry();
  registry.specs.set('m', spec('m', { min_replicas: 0 }));
  const source = new FakeSource();
  const broker = new Broker({ registry, copies: source, logger: pino({ level: 'silent' }) });
  return { registry, source, broker, copies: source.made.get('m')! };
}

const req = () => ({ id: 'r', model: 'm', inputs: [{ name: 'X', datatype: 'INT32' as const, shape: [1, 1], data: Buffer.alloc(4) }] });

test('a put pairs the model with its copies; a request at zero queues and reports demand; a delete closes both', async () => {
  const { registry, broker, copies } = setup();
  const pending = broker.infer(req());
  expect(copies.demands.at(-1)).toBe(1);
  registry.delete('m');
  await expect(pending).rejects.toMatchObject({ code: 'NOT_FOUND', message: "model 'm' was removed" });
  expect(copies.closed).toBe('model removed');
  expect(() => broker.describe('m')).toThrow(/unknown model/);
});

test('a model that turns failed fails its queue at once and refuses new requests with the reason', async () => {
  const { broker, copies } = setup();
  const pending = broker.infer(req());
  copies.setPhase({ ready: false, phase: 'failed', reason: 'exited with code 7' });
  await expect(pending).rejects.toMatchObject({ code: 'UNAVAILABLE', kind: 'model-unavailable', message: expect.stringContaining('exited with code 7') });
  await expect(broker.infer(req())).rejects.toMatchObject({ code: 'UNAVAILABLE', message: expect.stringContaining('exited with code 7') });
});

test('metadata: never ran is a 503 that says so; after a READY it is kept and answers at zero', async () => {
  const { registry, broker, copies } = setup();
  await broker.warm();
  expect(() => broker.metadata('m')).toThrow(/never been ready/);
  expect(broker.describe('m').metadata).toBeUndefined();
  copies.metadata = META;
  copies.emit('metadata', META);
  expect(registry.saved.get('m')).toMatchObject({ version: '1', metadata: META });
  copies.metadata = undefined; // back at zero
  expect(broker.metadata('m')).toEqual(META);
  registry.put(spec('m', { min_replicas: 0, version: '2' }));
  expect(() => broker.metadata('m')).toThrow(/never been ready/); // kept metadata is per version
});

test('awaitMetadata asks for a copy explicitly and resolves on its READY', async () => {
  const { broker, copies } = setup();
  const waiting = broker.awaitMetadata('m');
  expect(copies.asked).toHaveLength(1);
  copies.metadata = META;
  copies.emit('metadata', META);
  await expect(waiting).resolves.toEqual(META);
});

test('the repository index: LOADING only while a copy starts, else UNAVAILABLE with the phase', () => {
  const { broker, copies } = setup();
  expect(broker.repositoryIndex()).toEqual([{ name: 'm', version: '1', state: 'UNAVAILABLE', reason: 'at-zero: scaled to zero' }]);
  copies.setPhase({ ready: false, phase: 'starting', reason: 'waiting for room: no free GPU' });
  expect(broker.repositoryIndex()[0].state).toBe('UNAVAILABLE');
  copies.setPhase({ ready: false, phase: 'starting', starting: 1, reason: 'a copy is starting' });
  expect(broker.repositoryIndex()[0].state).toBe('LOADING');
  copies.setPhase({ ready: true, phase: 'ready' });
  expect(broker.repositoryIndex()[0]).toMatchObject({ state: 'READY', reason: '' });
});
