/**
 * Several brokers on one Redis (issue 14, README "Several brokers"): real
 * `tensorbroker serve` processes (process runtime), a real redis-server, the
 * stateful motion model. A REST sequence whose requests alternate between two,
 * then three brokers keeps its order and its one copy (the owner's); a request
 * already forwarded is never forwarded again; a broker killed with SIGKILL
 * mid-load: every request gets exactly one answer or error (none hangs), the
 * survivors' sequences go on, the dead broker's sequences fail clearly (503,
 * then Triton's sequence error naming the gone owner) and can be started anew.
 * Needs `npm run build`.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { create } from '@bufbuild/protobuf';
import { execFileSync } from 'node:child_process';
import { exited, startCliBroker, type CliBroker } from '../helpers/cli-broker';
import { ROOT, getJson, modelMain, waitFor } from '../helpers/broker';
import { startRedis, type RedisHandle } from '../helpers/redis';
import { InferReplySchema, InferRequestSchema, decodeHeader, encodeFrames, toMeta } from '../../proto/client';
import { FRAMES_TYPE, frameBody, splitFrames } from '../../cluster/frames';
import type { Tensor } from '../../proto/tensor';
import type { TestBroker } from '../helpers/broker';
import { TRANSPORTS, type Transport } from '../helpers/transports';

const haveDist = fs.existsSync(path.join(ROOT, 'dist/app/cli.js')) && fs.existsSync(modelMain('motion'));
const describeDist = haveDist ? describe : describe.skip;
if (!haveDist) console.warn('SKIPPING several-brokers: run `npm run build` first');

const H = 4;
const W = 4;
const STEP = 3;
const TOKEN = 'cluster-secret';
const LEASE_MS = 3000;

/** Frame `f` of sequence number `q`: every byte q·7 + f·STEP, so MOTION is STEP after the first frame. */
const frameBytes = (q: number, f: number) => Buffer.alloc(H * W * 3, (q * 7 + f * STEP) & 255);

type Outcome =
  | { ok: true; index: number; motion: number; copy: string }
  | { ok: false; status: number; message: string };

async function send(b: CliBroker, id: string, q: number, f: number, flags: { start?: boolean; end?: boolean } = {}): Promise<Outcome> {
  const body = {
    inputs: [{ name: 'FRAME', datatype: 'UINT8', shape: [1, H, W, 3], data: [...frameBytes(q, f)] }],
    outputs: [{ name: 'FRAME_INDEX' }, { name: 'MOTION' }, { name: 'COPY' }],
    parameters: { sequence_id: id, sequence_start: !!flags.start, sequence_end: !!flags.end },
  };
  const res = await fetch(`${b.url}/v2/models/motion/infer`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal: AbortSignal.timeout(30_000),
  });
  const json = (await res.json()) as { error?: string; outputs?: { name: string; data: unknown[] }[] };
  if (res.status !== 200) return { ok: false, status: res.status, message: json.error ?? '' };
  const out = (name: string) => json.outputs!.find((o) => o.name === name)!.data[0];
  return { ok: true, index: out('FRAME_INDEX') as number, motion: out('MOTION') as number, copy: String(out('COPY')) };
}

const expectOk = (o: Outcome): Extract<Outcome, { ok: true }> => {
  if (!o.ok) throw new Error(`HTTP ${o.status}: ${o.message}`);
  return o;
};

interface SeqStatus { copies: { copy: string; sequences: { id: string }[] }[] }

async function held(b: CliBroker): Promise<string[]> {
  const s = (await getJson(`${b.url}/v2/models/motion/sequences`)) as SeqStatus;
  return s.copies.flatMap((c) => c.sequences.map((x) => x.id));
}

async function copyIds(b: CliBroker): Promise<string[]> {
  const s = (await getJson(`${b.url}/v2/models/motion/sequences`)) as SeqStatus;
  return s.copies.map((c) => c.copy);
}

/** One request straight to a broker's internal forwarding route, as another broker would send it. */
async function forwardRaw(b: CliBroker, from: string, id: string, q: number, f: number, token: string | undefined): Promise<{ http: number; code?: string; message?: string }> {
  const t: Tensor = { name: 'FRAME', datatype: 'UINT8', shape: [1, H, W, 3], data: frameBytes(q, f) };
  const header = create(InferRequestSchema, { id: `raw-${id}-${f}`, model: 'motion', inputs: [toMeta(t)], sourceId: id });
  const body = Buffer.concat(frameBody(encodeFrames(InferRequestSchema, header, [t])));
  const res = await fetch(`${b.url}/internal/cluster/infer`, {
    method: 'POST', body, headers: { 'content-type': FRAMES_TYPE, 'x-tb-forwarded-by': from, ...(token ? { 'x-tb-cluster-token': token } : {}) },
  });
  const data = Buffer.from(await res.arrayBuffer());
  if (res.status !== 200) return { http: res.status };
  const reply = decodeHeader(InferReplySchema, splitFrames(data, 10)[0]);
  return { http: 200, code: reply.status?.code, message: reply.status?.message };
}

/** Live sleepy copies of this worktree, from one look at the process table (a copy that exited is gone from it or a zombie). */
function sleepyProcesses(): number {
  const out = execFileSync('ps', ['-eo', 'stat=,args='], { encoding: 'utf8' });
  return out.split('\n').filter((l) => l.includes(modelMain('sleepy')) && !/^\s*Z/.test(l)).length;
}

async function sleepyInfer(b: CliBroker, v: number): Promise<number> {
  const res = await fetch(`${b.url}/v2/models/sleepy/infer`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, signal: AbortSignal.timeout(30_000),
    body: JSON.stringify({ inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [1, 1], data: [v] }] }),
  });
  return res.status === 200 ? ((await res.json()) as { outputs: { data: number[] }[] }).outputs[0].data[0] : -res.status;
}

describeDist('several brokers on one Redis (process runtime)', () => {
  let redis: RedisHandle;
  let base: string;
  let models: string;
  const all: CliBroker[] = [];
  let alpha: CliBroker;
  let beta: CliBroker;
  let gamma: CliBroker;

  const args = (id: string) => ['--runtime', 'process', '--models', models, '--redis-url', redis.url, '--redis-prefix', `tbn-${process.pid}:`,
    '--socket-dir', base, '--broker-id', id, '--heartbeat-ms', '200', '--cluster-lease-ms', String(LEASE_MS)];
  const start = async (id: string) => {
    const b = await startCliBroker(args(id), { TB_CLUSTER_TOKEN: TOKEN });
    all.push(b);
    await waitFor(async () => (await copyIds(b)).length === 1, 30_000, `a ready motion copy on ${id}`);
    return b;
  };

  beforeAll(async () => {
    redis = await startRedis();
    base = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-nb-'));
    models = path.join(base, 'models.yaml');
    fs.writeFileSync(models, [
      'models:',
      '  motion:',
      `    command: [${JSON.stringify(process.execPath)}, ${JSON.stringify(modelMain('motion'))}]`,
      '    stateless: false',
      '    batch_size: 4',
      '    max_sequences: 16',
      '    min_replicas: 1',
      '    max_replicas: 4',
      '    sequence_idle_ms: 60000',
      '  sleepy:',
      `    command: [${JSON.stringify(process.execPath)}, ${JSON.stringify(modelMain('sleepy'))}]`,
      '    batch_size: 1',
      '    env: { SLEEPY_A_MS: "15", SLEEPY_B_MS: "0" }',
      '    min_replicas: 0',
      '    max_replicas: 2',
      '    scale_up_queue_per_copy: 1',
      '    scale_up_cooldown_ms: 0',
      '    scale_down_cooldown_ms: 0',
      '    idle_ttl_ms: 800',
      '',
    ].join('\n'));
    alpha = await start('alpha');
    beta = await start('beta');
  }, 90_000);

  afterAll(async () => {
    for (const b of all) if (b.child.exitCode === null && b.child.signalCode === null) b.child.kill('SIGTERM');
    await Promise.all(all.map((b) => exited(b.child)));
    await redis?.stop();
    if (base) fs.rmSync(base, { recursive: true, force: true });
  });

  /**
   * Sequences q = 0..n-1, frame f of sequence q sent to brokers[(q + f) % brokers.length]:
   * each keeps its order (FRAME_INDEX = f), its state (MOTION = STEP) and one copy,
   * the copy of the broker its START landed on, which alone lists it.
   */
  async function alternate(brokers: CliBroker[], tag: string, n: number, frames: number): Promise<void> {
    const seqs = Array.from({ length: n }, (_, q) => `${tag}-${q}`);
    const copies = new Map<string, string>();
    await Promise.all(seqs.map(async (id, q) => {
      for (let f = 0; f < frames; f++) {
        const o = expectOk(await send(brokers[(q + f) % brokers.length], id, q, f, { start: f === 0 }));
        expect(o.index).toBe(f);
        expect(o.motion).toBeCloseTo(f === 0 ? 0 : STEP, 5);
        if (f === 0) copies.set(id, o.copy);
        else expect(o.copy).toBe(copies.get(id));
      }
    }));
    // Each sequence is held by the broker its START landed on, and by no other.
    const lists = await Promise.all(brokers.map(held));
    seqs.forEach((id, q) => {
      brokers.forEach((_, i) => expect(lists[i].includes(id)).toBe(i === q % brokers.length));
    });
    const ownerCopies = await Promise.all(brokers.map(copyIds));
    seqs.forEach((id, q) => expect(ownerCopies[q % brokers.length]).toContain(copies.get(id)));
    // The end flag through another broker ends it on its owner; a later frame gets Triton's sequence error.
    await Promise.all(seqs.map(async (id, q) => {
      expectOk(await send(brokers[(q + frames) % brokers.length], id, q, frames, { end: true }));
      const late = await send(brokers[(q + frames + 1) % brokers.length], id, q, frames + 1);
      expect(late).toMatchObject({ ok: false, status: 400 });
      expect((late as { message: string }).message).toMatch(/must specify the START flag.*not active: it ended/);
    }));
    for (const b of brokers) expect(await held(b)).toEqual(expect.not.arrayContaining(seqs));
  }

  test('two brokers: a REST sequence alternating between them keeps its order and one copy', async () => {
    await alternate([alpha, beta], 'two', 6, 12);
  }, 60_000);

  test('three brokers: the same, each START claimed by the broker it landed on', async () => {
    gamma = await start('gamma');
    await alternate([alpha, beta, gamma], 'three', 9, 12);
  }, 90_000);

  test('one sequence over every bridge, each request on another broker: one owner, one copy, in order', async () => {
    // The transports helper takes a TestBroker; a CLI broker gives the same three endpoints.
    const asTest = (b: CliBroker) => {
      const serving = b.lines.find((l) => l.msg === 'tensorbroker serving')!;
      return { url: b.url, zmqEndpoint: `tcp://127.0.0.1:${serving.zmq}`, running: { ports: { grpc: serving.grpc } } } as unknown as TestBroker;
    };
    const brokers = [alpha, beta, gamma];
    const open: Transport[][] = await Promise.all(brokers.map((b) => Promise.all(TRANSPORTS.map((t) => t.open(asTest(b))))));
    try {
      const copies = new Set<string>();
      const frames = TRANSPORTS.length * brokers.length;
      for (let f = 0; f < frames; f++) {
        const t = open[f % brokers.length][f % TRANSPORTS.length];
        const data = frameBytes(5, f);
        const o = await t.infer('motion', [{ name: 'FRAME', datatype: 'UINT8', shape: [1, H, W, 3], data }], { sequence: { id: 'mixed', start: f === 0, end: f === frames - 1 } });
        if (!o.ok) throw new Error(`frame ${f} over ${t.name} on broker ${f % 3}: ${o.code} ${o.message}`);
        expect((o.outputs.FRAME_INDEX.values as number[][]).flat()[0]).toBe(f);
        copies.add(String((o.outputs.COPY.values as unknown[][]).flat()[0]));
      }
      expect(copies.size).toBe(1);
      expect((await copyIds(alpha))).toContain([...copies][0]);
    } finally {
      await Promise.all(open.flat().map((t) => t.close()));
    }
  }, 60_000);

  test('a forwarded request is never forwarded again; forwarding needs the cluster token', async () => {
    expectOk(await send(alpha, 'loop', 0, 0, { start: true }));
    // beta received a request "forwarded" by gamma for alpha's sequence: answered, not sent on.
    const hop = await forwardRaw(beta, 'gamma', 'loop', 0, 1, TOKEN);
    expect(hop).toMatchObject({ http: 200, code: 'UNAVAILABLE' });
    expect(hop.message).toMatch(/owned by broker 'alpha', not by this broker 'beta' \(forwarded by 'gamma'\)/);
    expect(await forwardRaw(beta, 'gamma', 'loop', 0, 1, undefined)).toEqual({ http: 401 });
    expect(await forwardRaw(beta, 'gamma', 'loop', 0, 1, 'wrong')).toEqual({ http: 403 });
    // Nothing of it reached the model: the next frame is still frame 1.
    expect(expectOk(await send(beta, 'loop', 0, 1)).index).toBe(1);
    // Sent to the owner itself with the hop marker, it is served there.
    expect(await forwardRaw(alpha, 'beta', 'loop', 0, 2, TOKEN)).toMatchObject({ http: 200, code: 'OK' });
    expect(expectOk(await send(gamma, 'loop', 0, 3, { end: true })).index).toBe(3);
  }, 30_000);

  test('a broker killed mid-load: one outcome per request, survivors go on, its sequences fail clearly', async () => {
    const brokers = [alpha, beta, gamma];
    const names = ['alpha', 'beta', 'gamma'];
    const n = 9;
    const seqs = Array.from({ length: n }, (_, q) => `kill-${q}`);
    for (const [q, id] of seqs.entries()) expectOk(await send(brokers[q % 3], id, q, 0, { start: true }));
    let killedAt = 0;
    let sent = 0;
    const outcomes: { q: number; to: string; after: boolean; o: Outcome | { ok: false; status: 0; message: string } }[] = [];
    const ownerGoneAt = new Map<number, number>();

    const run = async (q: number) => {
      const ownedByGamma = q % 3 === 2;
      let lastIndex = 0;
      let okAfter = 0;
      for (let f = 1; ; f++) {
        const alive = killedAt ? [alpha, beta] : brokers;
        const target = alive[(q + f) % alive.length];
        const after = killedAt > 0;
        sent++;
        let o: Outcome | { ok: false; status: 0; message: string };
        try {
          o = await send(target, seqs[q], q, f);
        } catch (e) {
          // Only a request sent to gamma itself may fail without an answer (its connection died with it).
          o = { ok: false, status: 0, message: String((e as Error).cause ?? e) };
        }
        outcomes.push({ q, to: names[brokers.indexOf(target)], after, o });
        if (o.ok) {
          expect(o.index).toBeGreaterThan(lastIndex);
          lastIndex = o.index;
          if (killedAt && o.index > 0) okAfter++;
        }
        if (ownedByGamma && !o.ok && o.status === 400) {
          ownerGoneAt.set(q, Date.now() - killedAt);
          return;
        }
        if (!ownedByGamma && okAfter >= 5) return;
      }
    };
    const runs = seqs.map((_, q) => run(q));
    await waitFor(() => outcomes.filter((x) => x.o.ok).length >= 60, 30_000, '60 answers before the kill');
    gamma.child.kill('SIGKILL');
    killedAt = Date.now();
    await Promise.all(runs);

    // Exactly one outcome per request sent, none hung (a hang would be an AbortSignal timeout: status 0 with TimeoutError).
    expect(outcomes).toHaveLength(sent);
    expect(outcomes.filter((x) => /TimeoutError|aborted/i.test(!x.o.ok ? x.o.message : ''))).toEqual([]);
    // Sequences of the survivors: every request to a survivor answered OK.
    for (const x of outcomes) {
      if (x.q % 3 !== 2 && x.to !== 'gamma') expect(x.o).toMatchObject({ ok: true });
      if (!x.o.ok && x.o.status === 0) expect(x.to).toBe('gamma');
    }
    // Sequences of gamma, after the kill, through the survivors: 503 naming gamma, then Triton's sequence error naming it gone.
    for (const x of outcomes.filter((y) => y.q % 3 === 2 && y.after && y.to !== 'gamma' && !y.o.ok)) {
      const o = x.o as { status: number; message: string };
      if (o.status === 503) expect(o.message).toMatch(/broker 'gamma'/);
      else {
        expect(o.status).toBe(400);
        expect(o.message).toMatch(/must specify the START flag.*its owner broker 'gamma' is gone/);
      }
    }
    expect([...ownerGoneAt.keys()].sort()).toEqual([2, 5, 8]);
    console.log(`owner-gone answers ${[...ownerGoneAt.values()].join(', ')} ms after the SIGKILL (lease ${LEASE_MS} ms)`);
    // The forwards by outcome, as the survivors count them.
    const count = async (outcome: string) => {
      let n = 0;
      for (const b of [alpha, beta]) {
        const m = new RegExp(`^tb_forwarded_total\\{model="motion",outcome="${outcome}"\\} (\\d+)$`, 'm').exec(await (await fetch(b.metricsUrl)).text());
        n += m ? Number(m[1]) : 0;
      }
      return n;
    };
    expect(await count('ok')).toBeGreaterThan(0);
    expect(await count('UNAVAILABLE')).toBeGreaterThan(0);
    // A dead owner's sequence id can be started anew on a survivor.
    const again = expectOk(await send(beta, seqs[2], 2, 0, { start: true }));
    expect(again.index).toBe(0);
    expect(expectOk(await send(alpha, seqs[2], 2, 1)).index).toBe(1);
    expect(await held(beta)).toContain(seqs[2]);
  }, 90_000);

  test('scale up and down under load on three brokers: never more than max_replicas copies in all', async () => {
    const delta = await start('delta');
    const brokers = [alpha, beta, delta];
    expect(sleepyProcesses()).toBe(0);
    let most = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        most = Math.max(most, sleepyProcesses());
        await new Promise((r) => setImmediate(r));
      }
    })();
    const burst = async (round: number) => {
      const results = await Promise.all(brokers.flatMap((b, i) => Array.from({ length: 6 }, async (_, c) => {
        const got: number[] = [];
        for (let k = 0; k < 25; k++) got.push(await sleepyInfer(b, round * 10_000 + i * 1000 + c * 100 + k));
        return got.every((v, k) => v === round * 10_000 + i * 1000 + c * 100 + k);
      })));
      expect(results.every(Boolean)).toBe(true);
    };
    try {
      await burst(1);
      expect(most).toBe(2);
      // Idle past idle_ttl_ms: every broker's copies stop, the places return.
      await waitFor(() => sleepyProcesses() === 0, 30_000, 'sleepy scaled to zero');
      await burst(2);
    } finally {
      sampling = false;
      await sampler;
    }
    // A broker whose lease lapsed (its event loop stalled longer than the lease) was seen gone: the cap is not promised then.
    const lapses = all.flatMap((b) => b.lines.filter((l) => String(l.msg).includes('lease had expired')));
    expect(lapses).toEqual([]);
    expect(most).toBe(2);
    await waitFor(() => sleepyProcesses() === 0, 30_000, 'sleepy scaled to zero again');
    // What an HPA or KEDA reads: demand per broker and model.
    for (const b of brokers) {
      if (b.child.exitCode !== null || b.child.signalCode !== null) throw new Error(`a broker exited: ${JSON.stringify(b.lines.filter((l) => Number(l.level) >= 50).slice(-5))}`);
      expect(await (await fetch(b.metricsUrl)).text()).toMatch(/^tb_broker_demand\{model="sleepy"\} 0$/m);
    }
  }, 120_000);
});
