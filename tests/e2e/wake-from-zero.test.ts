/**
 * Models at min_replicas 0 wake on every path: the first requests queue, one
 * copy starts (not one per request), and they are answered after the cold
 * start. A model that never ran says so; one that ran is described from the
 * metadata kept from its last READY while it is back at zero; the repository
 * index tells the true phase.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { tensorFromJson } from '../../bridges/rest/json-tensors';
import type { RepositoryEntry } from '../../core/broker';
import type { ModelReadiness } from '../../core/types';
import { getJson, modelMain, postJson, startTestBroker, waitFor, type TestBroker } from '../helpers/broker';
import { GrpcTestClient } from '../helpers/grpc-client';
import { TRANSPORTS, restJson } from '../helpers/transports';

const N = 6;
const atZero = (extra: Record<string, unknown> = {}) => ({ min_replicas: 0, max_replicas: 3, scale_up_queue_per_copy: 1, scale_up_cooldown_ms: 0, ...extra });
const identity = () => atZero({ command: ['node', modelMain('identity')], batch_size: 16 });
const motion = () => atZero({ command: ['node', modelMain('motion')], stateless: false, batch_size: 8, max_sequences: 2, sequence_idle_ms: 60_000 });

const models: Record<string, unknown> = {
  'z-image': atZero({ command: ['node', modelMain('image-info')], batch_size: 8 }),
  'z-video': motion(),
  'z-seq': motion(),
  'z-meta': identity(),
  'z-broken': atZero({ command: ['node', '-e', 'console.error("cannot load weights"); process.exit(7)'], startup_timeout_ms: 5000 }),
};
for (const t of TRANSPORTS) models[`z-${t.name.replace(/\W+/g, '-').toLowerCase()}`] = identity();
const modelOf = (transport: string) => `z-${transport.replace(/\W+/g, '-').toLowerCase()}`;

const one = tensorFromJson('IN_INT32', 'INT32', [1, 1], [41]);

describe('models at zero wake on every path', () => {
  let b: TestBroker;
  let dir: string;
  const started = new Map<string, number>();

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'tb-zero-'));
    execFileSync('ffmpeg', ['-hide_banner', '-loglevel', 'error', '-f', 'lavfi', '-i', 'testsrc=duration=1:size=64x48:rate=10',
      '-c:v', 'libvpx', '-b:v', '100k', path.join(dir, 'clip.webm')]);
    b = await startTestBroker({
      models,
      // Counts "starting copy" per model: the proof that N first requests start one copy.
      logSink: (line) => {
        const l = JSON.parse(line) as { msg?: string; model?: string };
        if (l.msg === 'starting copy' && l.model) started.set(l.model, (started.get(l.model) ?? 0) + 1);
      },
    });
  });
  afterAll(async () => {
    await b?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const index = async () => (await postJson(`${b.url}/v2/repository/index`, {})).json as unknown as RepositoryEntry[];

  test('nothing starts before a request: the index says UNAVAILABLE (at zero), not LOADING', async () => {
    const rows = await index();
    for (const name of Object.keys(models)) {
      expect(rows.find((r) => r.name === name)).toMatchObject({ state: 'UNAVAILABLE', reason: expect.stringMatching(/^at-zero: scaled to zero/) });
    }
    expect(b.running.tasks.copies()).toEqual([]);
  });

  test('a model that never ran says so: metadata and config 503 with the reason, not an empty config', async () => {
    const meta = await fetch(`${b.url}/v2/models/z-meta`);
    expect(meta.status).toBe(503);
    expect(((await meta.json()) as { error: string }).error).toMatch(/has never been ready.*an inference request starts a copy/);
    const config = await fetch(`${b.url}/v2/models/z-meta/config`);
    expect(config.status).toBe(503);
    expect(((await config.json()) as { error: string }).error).toMatch(/never been ready/);
    const grpc = new GrpcTestClient(b.running.ports.grpc);
    try {
      const err = await grpc.fails('modelMetadata', { name: 'z-meta' });
      expect(err.code).toBe(14); // UNAVAILABLE
      expect(err.details).toMatch(/never been ready/);
    } finally {
      grpc.close();
    }
  });

  for (const factory of TRANSPORTS) {
    test(`${factory.name}: ${N} concurrent first requests are answered after the cold start, and start one copy`, async () => {
      const model = modelOf(factory.name);
      const t = await factory.open(b);
      try {
        const outcomes = await Promise.all(Array.from({ length: N }, () => t.infer(model, [one], { outputs: ['OUT_INT32'] })));
        for (const o of outcomes) expect(o).toMatchObject({ ok: true, outputs: { OUT_INT32: { values: [41] } } });
      } finally {
        await t.close();
      }
      expect(started.get(model)).toBe(1);
    });
  }

  test('an image upload waits for READY (the decode needs the input metadata), then decodes; the index showed LOADING only while the copy started', async () => {
    const seen: string[] = [];
    const controller = b.running.tasks.controller('z-image')!;
    const onPhase = (r: ModelReadiness) => seen.push(`${r.phase}:${b.running.broker.repositoryIndex().find((e) => e.name === 'z-image')!.state}`);
    controller.on('phase', onPhase);
    const png = await sharp({ create: { width: 20, height: 10, channels: 3, background: { r: 10, g: 20, b: 30 } } }).png().toBuffer();
    const post = () => fetch(`${b.url}/v2/models/z-image/infer`, { method: 'POST', headers: { 'content-type': 'image/png' }, body: png });
    const answers = await Promise.all(Array.from({ length: N }, post));
    controller.off('phase', onPhase);
    for (const res of answers) {
      expect(res.status).toBe(200);
      const json = (await res.json()) as { outputs: { name: string; data: number[] }[] };
      expect(json.outputs.find((o) => o.name === 'WIDTH')!.data).toEqual([20]);
    }
    expect(started.get('z-image')).toBe(1);
    expect(seen).toContain('starting:LOADING');
    expect(seen.at(-1)).toBe('ready:READY');
  });

  test('a video upload to a stateful model at zero waits for READY, then streams every frame', async () => {
    const res = await fetch(`${b.url}/v2/models/z-video/infer`, { method: 'POST', headers: { 'content-type': 'video/webm' }, body: readFileSync(path.join(dir, 'clip.webm')) });
    expect(res.status).toBe(200);
    const lines = (await res.text()).trim().split('\n').map((l) => JSON.parse(l) as { frame?: number; end?: boolean; frames?: number });
    expect(lines.filter((l) => l.frame !== undefined).length).toBe(10);
    expect(lines.at(-1)).toMatchObject({ end: true, frames: 10 });
    expect(started.get('z-video')).toBe(1);
  });

  test('sequence starts at zero are queued through the cold start, one copy for all of them', async () => {
    const t = await restJson.open(b);
    try {
      const frame = (v: number) => tensorFromJson('FRAME', 'UINT8', [1, 2, 2, 3], Array.from({ length: 12 }, () => v));
      const outcomes = await Promise.all(Array.from({ length: 2 }, (_, i) => t.infer('z-seq', [frame(i)], { sequence: { id: `s${i}`, start: true, end: true } })));
      for (const o of outcomes) expect(o).toMatchObject({ ok: true });
    } finally {
      await t.close();
    }
    expect(started.get('z-seq')).toBe(1);
  });

  test('a model that fails to start answers 503 with its reason; the index says UNAVAILABLE (failed)', async () => {
    const first = await postJson(`${b.url}/v2/models/z-broken/infer`, { inputs: [{ name: 'X', datatype: 'INT32', shape: [1], data: [1] }], parameters: { timeout: 10_000_000 } });
    expect(first.status).toBe(503);
    expect(first.json.error).toMatch(/cannot load weights|exited/);
    const row = (await index()).find((r) => r.name === 'z-broken');
    expect(row).toMatchObject({ state: 'UNAVAILABLE', reason: expect.stringMatching(/^failed: /) });
  });

  test('crash-loop guard: 15 repository loads of a failing model back off instead of starting 15 copies', async () => {
    const before = started.get('z-broken') ?? 0;
    const answers: { status: number; error: string }[] = [];
    for (let i = 0; i < 15; i++) {
      const res = await postJson(`${b.url}/v2/repository/models/z-broken/load`, {});
      answers.push({ status: res.status, error: String(res.json.error) });
    }
    for (const a of answers) expect(a).toMatchObject({ status: 503, error: expect.stringMatching(/z-broken/) });
    expect(answers.some((a) => /back/.test(a.error))).toBe(true);
    // The restart backoff (and then the load backoff after the verdict) paces the copies, not the loads.
    expect((started.get('z-broken') ?? 0) - before).toBeLessThanOrEqual(3);
  });

  test('back at zero, a model that ran is described from its last READY (kept in the registry)', async () => {
    const t = await restJson.open(b);
    try {
      expect(await t.infer('z-meta', [one], { outputs: ['OUT_INT32'] })).toMatchObject({ ok: true });
    } finally {
      await t.close();
    }
    const saved = await b.running.registry.lastMetadata('z-meta');
    expect(saved).toMatchObject({ version: '1', metadata: { name: 'z-meta' } });
    b.running.tasks.scale('z-meta', 0, 'test');
    const controller = b.running.tasks.controller('z-meta')!;
    await waitFor(() => controller.readiness().phase === 'at-zero' && controller.copyInfos().length === 0, 20_000, 'z-meta back at zero');
    const meta = await getJson(`${b.url}/v2/models/z-meta`);
    expect(meta.inputs).toContainEqual({ name: 'IN_INT32', datatype: 'INT32', shape: [-1, -1] });
    const config = await getJson(`${b.url}/v2/models/z-meta/config`);
    expect(config.input.length).toBeGreaterThan(0);
    const grpc = new GrpcTestClient(b.running.ports.grpc);
    try {
      const md = await grpc.unary('modelMetadata', { name: 'z-meta' });
      expect(md.inputs.map((i) => i.name)).toContain('IN_INT32');
    } finally {
      grpc.close();
    }
    expect((await index()).find((r) => r.name === 'z-meta')).toMatchObject({ state: 'UNAVAILABLE', reason: expect.stringMatching(/^at-zero/) });
  });
});
