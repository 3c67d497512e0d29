/**
 * The link under attack and on shared hosts, with real processes and real ZeroMQ
 * (process runtime): copy impersonation, the env copies get, two brokers on one
 * host, and copies outliving a SIGKILLed broker.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { create } from '@bufbuild/protobuf';
import pino from 'pino';
import * as zmq from 'zeromq';
import { SPEC_DEFAULTS, type ModelSpec } from '../../core/model-spec';
import type { BatchRequest } from '../../core/model-copies';
import type { Tensor } from '../../proto/tensor';
import { HeartbeatSchema, ReadySchema, ResultSchema, TensorSpecSchema, decodeFrames, encodeFrames, type DecodedMessage } from '../../proto/link';
import { LinkServer, SocketInUseError, brokerFolderName, type LinkPeer } from '../../task-manager/link-server';
import { ProcessRuntime } from '../../task-manager/process-runtime';
import type { CopyLaunch } from '../../task-manager/runtime';
import { TaskManager } from '../../task-manager/task-manager';
import { waitEvent as waitEventWithin } from '../helpers/events';
import { FAKE_MODEL_ENV, fakeModelCommand } from './fixtures/build-fake-model';

const ROOT = path.resolve(__dirname, '../..');
const quiet = pino({ level: 'silent' });
const waitEvent = <T extends unknown[]>(em: EventEmitter, event: string, filter?: (...args: T) => boolean) => waitEventWithin<T>(em, event, filter, 20_000);

async function waitFor(check: () => boolean, ms = 15_000, what = 'condition'): Promise<void> {
  const until = Date.now() + ms;
  while (!check()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function int32(name: string, rows: number, value: number): Tensor {
  const a = new Int32Array(rows * 16).fill(value);
  return { name, datatype: 'INT32', shape: [rows, 16], data: Buffer.from(a.buffer) };
}

let nextBatch = 1n;
function batch(model: string, a: number, b: number): BatchRequest {
  return { batchId: nextBatch++, model, items: [{ requestId: 'r', rows: 1 }], tensors: [int32('INPUT0', 1, a), int32('INPUT1', 1, b)], outputs: [], deadline: Date.now() + 10_000 };
}

function spec(name: string, over: Partial<ModelSpec> = {}): ModelSpec {
  return { ...SPEC_DEFAULTS, name, batch_size: 4, startup_timeout_ms: 15_000, command: fakeModelCommand(), env: { ...FAKE_MODEL_ENV }, source: 'file', ...over };
}

function firstInt32(t: Tensor): number {
  return t.data.readInt32LE(0);
}

/** A DEALER that claims to be a copy: sends READY, answers every BATCH with a forged RESULT. */
class Impostor {
  readonly sock: zmq.Dealer;
  batches = 0;
  shutdown?: string;
  private loop: Promise<void>;

  constructor(routingId: string, endpoint: string, secret: string) {
    this.sock = new zmq.Dealer({ routingId, linger: 0 });
    this.sock.connect(endpoint);
    void this.ready(secret);
    this.loop = this.receive();
  }

  ready(secret: string): Promise<void> {
    const s = (n: string) => create(TensorSpecSchema, { name: n, datatype: 'INT32', shape: [-1n, 16n] });
    return this.sock.send(encodeFrames({ case: 'ready', value: create(ReadySchema, { protocolVersion: 1, model: 'victim', maxBatch: 8, credits: 2, inputs: [s('INPUT0'), s('INPUT1')], outputs: [s('OUTPUT0'), s('OUTPUT1')], secret }) }));
  }

  private async receive(): Promise<void> {
    for (;;) {
      let msg: DecodedMessage;
      try {
        msg = decodeFrames(await this.sock.receive());
      } catch {
        return; // closed
      }
      const k = msg.envelope.kind;
      if (k.case === 'shutdown') this.shutdown = k.value.reason;
      if (k.case === 'batch') {
        this.batches++;
        const out = [int32('OUTPUT0', 1, 666), int32('OUTPUT1', 1, 666)];
        await this.sock.send(encodeFrames({ case: 'result', value: create(ResultSchema, { batchId: k.value.batchId, items: [{ error: '' }], tensors: out.map((t) => ({ name: t.name, datatype: t.datatype, shape: [1n, 16n] })) }) }, out));
      }
    }
  }

  async close(): Promise<void> {
    this.sock.close();
    await this.loop;
  }
}

describe('copy identity: no impersonation', () => {
  let dir: string;
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  test("a process that knows a copy's id but not its secret is refused; the client gets the real answer", async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-imp-'));
    const lines: string[] = [];
    const logger = pino({ level: 'debug' }, { write: (l: string) => void lines.push(l) });
    const link = new LinkServer({ socketDir: dir, brokerId: 'b1', heartbeatMs: 200, logger });
    const tm = new TaskManager({ runtime: new ProcessRuntime({ logger }), link, brokerId: 'b1', logger, backoffInitialMs: 50, stopGraceMs: 2000 });
    const impostors: Impostor[] = [];
    try {
      const ready = waitEvent(tm, 'metadata');
      await tm.reconcile([spec('victim')]);
      // The copy id, as GET /admin/instances lists it while the copy starts.
      const [starting] = tm.copies();
      expect(starting.state).toBe('starting');
      const id = starting.id;
      const own = link.info(id);
      const copySocket = own.endpoint;
      // Every way in without the secret: the id as routing id (as copies had before secrets), on
      // the copy's own socket; guessed routing tokens, there and on the broker's socket; READYs
      // with no secret or a made-up one. (One routing id per ROUTER: ZeroMQ drops a duplicate.)
      impostors.push(new Impostor(id, copySocket, ''));
      impostors.push(new Impostor(`${id}.${'f'.repeat(32)}`, link.endpoint, 'ab'.repeat(32)));
      impostors.push(new Impostor(`${id}.${'0'.repeat(32)}`, copySocket, 'ab'.repeat(32)));
      await waitFor(() => impostors.every((i) => i.shutdown !== undefined), 15_000, 'every impostor to be told to shut down');
      expect(impostors.map((i) => i.shutdown)).toEqual(['unknown copy id', 'unknown copy id', 'unknown copy id']);
      await ready;
      for (let i = 0; i < 5; i++) {
        const res = await tm.controller('victim')!.available()!.execute(batch('victim', 40, i));
        expect(firstInt32(res.tensors[0])).toBe(40 + i); // the real model: OUTPUT0 = INPUT0 + INPUT1
      }
      expect(impostors.reduce((n, i) => n + i.batches, 0)).toBe(0);
      // The secret and the routing token are never listed or logged.
      const token = own.routingId!.split('.')[1];
      expect(own.secret).toMatch(/^[0-9a-f]{64}$/);
      expect(token).toMatch(/^[0-9a-f]{32}$/);
      const listed = JSON.stringify([tm.instances(), tm.copies(), tm.status('victim')]);
      expect(listed).toContain(id);
      for (const secret of [own.secret!, token]) {
        expect(listed).not.toContain(secret);
        expect(lines.join('\n')).not.toContain(secret);
      }
      expect(lines.join('\n')).toMatch(/routing id no copy was given/);
    } finally {
      await Promise.all(impostors.map((i) => i.close()));
      await tm.close(2000);
    }
  });

  test('the right routing id without the right secret in READY is refused; with it the copy is heard', async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-imp-'));
    const link = new LinkServer({ socketDir: dir, brokerId: 'b1', heartbeatMs: 100, logger: quiet });
    await link.start();
    const heard: string[] = [];
    const peer: LinkPeer = { connected: false, tick: () => undefined, handle: (m) => void heard.push(m.envelope.kind.case ?? '') };
    link.register('c1', peer);
    const info = link.info('c1');
    const wrong = new Impostor(info.routingId!, info.endpoint, 'cd'.repeat(32));
    await waitFor(() => wrong.shutdown !== undefined, 10_000, 'the wrong secret to be refused');
    expect(wrong.shutdown).toBe('copy secret missing or wrong');
    // Nor does anything else count before a READY with the secret (a forged RESULT, a heartbeat).
    await wrong.sock.send(encodeFrames({ case: 'result', value: create(ResultSchema, { batchId: 1n, error: 'forged' }) }));
    await wrong.sock.send(encodeFrames({ case: 'heartbeat', value: create(HeartbeatSchema, { timeMs: 1n }) }));
    expect(heard).toEqual([]);
    await wrong.ready(info.secret!);
    await wrong.sock.send(encodeFrames({ case: 'heartbeat', value: create(HeartbeatSchema, { timeMs: 2n }) }));
    await waitFor(() => heard.includes('heartbeat'), 10_000, 'the READY with the secret, then a heartbeat');
    expect(heard).toEqual(['ready', 'heartbeat']); // the earlier forged messages were dropped
    await wrong.close();
    link.unregister('c1');
    await link.close();
  });

  test('malformed messages from a copy are dropped; the link keeps serving it', async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-imp-'));
    const link = new LinkServer({ socketDir: dir, brokerId: 'b1', heartbeatMs: 100, logger: quiet });
    await link.start();
    const heard: string[] = [];
    link.register('c1', { connected: false, adopted: true, tick: () => undefined, handle: (m) => void heard.push(m.envelope.kind.case ?? '') });
    const info = link.info('c1');
    const sock = new zmq.Dealer({ routingId: info.routingId, linger: 0 });
    sock.connect(info.endpoint);
    const garbage: Buffer[][] = [
      [Buffer.alloc(0)], [Buffer.from([0xff, 0xff, 0xff])], [Buffer.alloc((1 << 20) + 1, 7)], [Buffer.from([0x0a, 0x80])],
      [Buffer.from([0x1a, 0x02, 0x08])], [Buffer.alloc(16, 0xff), Buffer.alloc(3)],
    ];
    for (const frames of garbage) await sock.send(frames);
    await sock.send(encodeFrames({ case: 'heartbeat', value: create(HeartbeatSchema, { timeMs: 1n }) }));
    await waitFor(() => heard.includes('heartbeat'), 10_000, 'the heartbeat after the garbage');
    expect(heard).toEqual(['heartbeat']);
    sock.close();
    await link.close();
  });

  test("each copy has its own socket folder; the broker's key is not in it", async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-imp-'));
    const link = new LinkServer({ socketDir: dir, brokerId: 'b1', heartbeatMs: 100, logger: quiet });
    await link.start();
    const peer: LinkPeer = { connected: false, tick: () => undefined, handle: () => undefined };
    link.register('c1', peer);
    link.register('c2', peer);
    const [a, b] = [link.info('c1'), link.info('c2')];
    expect(a.socketDir).toBe(path.join(dir, 'b1', 'copies', 'c1'));
    expect(a.copyDir).toBe(path.join('copies', 'c1'));
    expect(a.endpoint).not.toBe(b.endpoint);
    expect(a.secret).not.toBe(b.secret);
    expect(fs.readdirSync(a.socketDir!)).not.toContain('link.key');
    expect(fs.statSync(path.join(dir, 'b1', 'link.key')).mode & 0o777).toBe(0o600);
    await waitFor(() => fs.existsSync(path.join(a.socketDir!, 'link.sock')), 5000, 'the copy socket');
    link.unregister('c1');
    await waitFor(() => !fs.existsSync(a.socketDir!), 5000, "the ended copy's folder to go");
    await link.close();
  });
});

describe('process runtime env', () => {
  const launch = (env: Record<string, string>, envSource: 'file' | 'api', command: string[]): CopyLaunch => ({
    copyId: 'e1', model: 'envy', version: '1', command, env, envSource, owner: 't', link: { endpoint: 'ipc:///nonexistent', heartbeatMs: 1000 },
  });

  test("copies get an allow-list of the broker's env, never its secrets", async () => {
    const leaky = { TB_REDIS_URL: 'redis://:pw@127.0.0.1:6379', TB_ADMIN_TOKEN: 't0k', DATABASE_URL: 'postgres://x', OPENAI_API_KEY: 'k', NODE_OPTIONS: '--no-warnings', TB_TEST_UNLISTED: 'x' };
    const saved = { ...process.env };
    Object.assign(process.env, leaky, { LANG: 'C.UTF-8', TZ: 'UTC' });
    try {
      const rt = new ProcessRuntime({ logger: quiet, passEnv: ['EXTRA_OK'] });
      process.env.EXTRA_OK = '1';
      const h = await rt.start(launch({ FROM_SPEC: '1' }, 'file', [process.execPath, '-e', 'console.log(Object.keys(process.env).sort().join(","))']));
      const exit = await rt.exited(h);
      expect(exit.code).toBe(0);
      const names = exit.lastLines.join('').split(',');
      expect(names).toEqual(expect.arrayContaining(['PATH', 'LANG', 'TZ', 'EXTRA_OK', 'FROM_SPEC', 'TB_ENDPOINT', 'TB_COPY_ID']));
      for (const n of Object.keys(leaky)) expect(names).not.toContain(n);
    } finally {
      for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
      Object.assign(process.env, saved);
    }
  });

  test('env names that load code are refused from the admin API, allowed from the file', async () => {
    const rt = new ProcessRuntime({ logger: quiet });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-env-'));
    const marker = path.join(dir, 'ran');
    const evil = path.join(dir, 'evil.js');
    fs.writeFileSync(evil, `require('fs').writeFileSync(${JSON.stringify(marker)}, 'pwned')`);
    const cmd = [process.execPath, '-e', 'console.log("model")'];
    const attempts: Record<string, string>[] = [{ NODE_OPTIONS: `--require ${evil}` }, { LD_PRELOAD: '/tmp/x.so' }, { PYTHONPATH: '/tmp' }, { PATH: '/tmp' }, { DYLD_INSERT_LIBRARIES: 'x' }, { node_options: 'x' }];
    for (const env of attempts) {
      await expect(rt.start(launch(env, 'api', cmd))).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/can load code and comes from the admin API/) });
    }
    expect(fs.existsSync(marker)).toBe(false);
    // Harmless names from the API pass; the file may set anything.
    const ok = await rt.start(launch({ MODEL_THRESHOLD: '0.5' }, 'api', cmd));
    expect((await rt.exited(ok)).code).toBe(0);
    const fromFile = await rt.start(launch({ NODE_OPTIONS: `--require ${evil}` }, 'file', cmd));
    expect((await rt.exited(fromFile)).code).toBe(0);
    expect(fs.existsSync(marker)).toBe(true);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

describe('two brokers on one host', () => {
  let base: string;
  const tms: TaskManager[] = [];
  afterEach(async () => {
    await Promise.all(tms.splice(0).map((t) => t.close(2000)));
    fs.rmSync(base, { recursive: true, force: true });
  });

  function broker(id: string): { tm: TaskManager; link: LinkServer } {
    const link = new LinkServer({ socketDir: base, brokerId: id, heartbeatMs: 200, logger: quiet });
    const tm = new TaskManager({ runtime: new ProcessRuntime({ logger: quiet }), link, brokerId: id, logger: quiet, backoffInitialMs: 50, stopGraceMs: 2000 });
    tms.push(tm);
    return { tm, link };
  }

  async function killAndRestart(tm: TaskManager, model: string): Promise<void> {
    const [old] = tm.copies();
    const ready = waitEvent(tm, 'metadata');
    process.kill(old.pid!, 'SIGKILL');
    await ready;
    await waitFor(() => tm.copies().some((c) => c.id !== old.id && c.state === 'ready'), 15_000, 'the new copy');
    const res = await tm.controller(model)!.available()!.execute(batch(model, 7, 1));
    expect(firstInt32(res.tensors[0])).toBe(8);
  }

  test('each serves and restarts its own copies; a broker with a live id is refused; a stale socket is replaced', async () => {
    base = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-two-'));
    // A stale socket file of a broker that died: not connectable, so it may be replaced.
    fs.mkdirSync(path.join(base, 'b2'), { recursive: true });
    fs.writeFileSync(path.join(base, 'b2', 'link.sock'), '');
    const b1 = broker('b1');
    const b2 = broker('b2');
    expect(b1.link.socketDir).not.toBe(b2.link.socketDir);
    const ready1 = waitEvent(b1.tm, 'metadata');
    const ready2 = waitEvent(b2.tm, 'metadata');
    await Promise.all([b1.tm.reconcile([spec('m')]), b2.tm.reconcile([spec('m')])]);
    await Promise.all([ready1, ready2]);

    // A third broker with b1's id: refused with a clear message, b1's socket untouched.
    const again = new LinkServer({ socketDir: base, brokerId: 'b1', heartbeatMs: 200, logger: quiet });
    const err = await again.start().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SocketInUseError);
    expect((err as Error).message).toMatch(/another live broker holds the link socket .*b1.*link\.sock \(broker id 'b1'\).*TB_BROKER_ID/);
    const dup = new TaskManager({ runtime: new ProcessRuntime({ logger: quiet }), link: again, brokerId: 'b1', logger: quiet });
    await expect(dup.reconcile([spec('m')])).rejects.toBeInstanceOf(SocketInUseError);
    expect(dup.copies()).toEqual([]);
    await dup.close(100);
    expect(fs.existsSync(path.join(base, 'b1', 'link.sock'))).toBe(true);

    await killAndRestart(b1.tm, 'm');
    await killAndRestart(b2.tm, 'm');
    await killAndRestart(b1.tm, 'm');
  });
});

const SIMPLE_JS = path.join(ROOT, 'dist/examples/models/simple/main.js');
const MINI_BROKER = path.join(ROOT, 'tests/fixtures/mini-broker.js');
const PY_MODEL = path.join(ROOT, 'tests/python/sdk_test_model.py');
const haveDist = fs.existsSync(SIMPLE_JS) && fs.existsSync(path.join(ROOT, 'dist/task-manager/link-server.js'));
const describeDist = haveDist ? describe : describe.skip;
if (!haveDist) console.warn('SKIPPING the broker-gone tests: run `npm run build` first');

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return !/^State:\s+Z/m.test(fs.readFileSync(`/proc/${pid}/status`, 'utf8')); // a zombie has exited
  } catch {
    return false;
  }
}

describeDist('copies exit when their broker is gone (SIGKILL)', () => {
  let base: string;
  let broker: ChildProcess | undefined;
  let copyPid: number | undefined;
  afterEach(() => {
    if (broker?.exitCode === null) broker.kill('SIGKILL');
    if (copyPid && alive(copyPid)) process.kill(copyPid, 'SIGKILL');
    fs.rmSync(base, { recursive: true, force: true });
  });

  const TIMEOUT_MS = 2000;

  async function runAndKill(model: Partial<ModelSpec>): Promise<void> {
    base = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-gone-'));
    broker = spawn(process.execPath, [MINI_BROKER, base, 'gone', JSON.stringify(model)], { stdio: ['ignore', 'pipe', 'inherit'] });
    copyPid = await new Promise<number>((resolve, reject) => {
      let text = '';
      broker!.stdout!.on('data', (d: Buffer) => {
        text += d.toString();
        const m = /\{"ready":(\d+)\}/.exec(text);
        if (m) resolve(Number(m[1]));
        if (/"error"/.test(text)) reject(new Error(text));
      });
      broker!.once('exit', () => reject(new Error(`mini broker exited: ${text}`)));
    });
    expect(alive(copyPid)).toBe(true);
    const killedAt = Date.now();
    broker.kill('SIGKILL');
    await waitFor(() => !alive(copyPid!), 30_000, 'the orphaned copy to exit');
    // It left because of the broker's silence, not at once for another reason.
    expect(Date.now() - killedAt).toBeGreaterThanOrEqual(TIMEOUT_MS - 500);
  }

  test('Node SDK', async () => {
    await runAndKill({ name: 'simple', batch_size: 4, command: [process.execPath, SIMPLE_JS], env: { TB_BROKER_TIMEOUT_MS: String(TIMEOUT_MS) }, source: 'file' });
  });

  test('Python SDK', async () => {
    await runAndKill({ name: 'sdk-test', batch_size: 8, command: ['/usr/bin/python3', PY_MODEL], env: { TB_BROKER_TIMEOUT_MS: String(TIMEOUT_MS) }, source: 'file' });
  });
});

describe('socket folder names', () => {
  test('derived from the broker id, short and distinct', () => {
    expect(brokerFolderName('tb-host1')).toBe('tb-host1');
    const long = brokerFolderName(`tb-${'a'.repeat(80)}`);
    expect(long.length).toBeLessThanOrEqual(32);
    expect(long).not.toBe(brokerFolderName(`tb-${'a'.repeat(81)}`));
    expect(brokerFolderName('a/b')).not.toBe(brokerFolderName('a_b'));
    expect(brokerFolderName('../x')).not.toMatch(/\//);
    expect(brokerFolderName('..')).not.toMatch(/^\./);
  });

  test('a socket folder too deep for unix sockets is refused at start with the fix', async () => {
    const deep = path.join(os.tmpdir(), 'tb-deep-'.padEnd(80, 'x'));
    const link = new LinkServer({ socketDir: deep, brokerId: 'b1', logger: quiet });
    await expect(link.start()).rejects.toThrow(/longer than 107 bytes .*shorter --socket-dir or broker id/);
    fs.rmSync(deep, { recursive: true, force: true });
  });
});
