/**
 * TaskManager: keeps min_replicas copies of every model running over a Runtime,
 * restarts dead ones with backoff, and offers the ready ones to the core as a CopyPool.
 */
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { BrokerError } from '../core/errors';
import type { CopyPool, ModelControl, ModelCopy } from '../core/pool';
import type { ModelMetadata, ModelReadiness } from '../core/types';
import type { ModelSpec, RegistryEvent } from '../model-manager/spec';
import { CopyConnection, type CopyState } from './copy-connection';
import type { LinkServer } from './link-server';
import { lastLine, type CopyHandle, type ExitInfo, type Runtime } from './runtime';

export interface TaskManagerOptions {
  runtime: Runtime;
  link: LinkServer;
  /** Owner label of this broker's copies. */
  brokerId: string;
  logger: Logger;
  /** Link heartbeat interval (default: the link server's). */
  heartbeatMs?: number;
  /** Idle heartbeat silence beyond this many intervals = dead (default 5). */
  missedHeartbeats?: number;
  /** Restart backoff: first delay (default 500 ms), doubling up to maxMs (default 30 s). */
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  /** A copy that stayed up this long resets its model's backoff (default 60 s). */
  backoffResetMs?: number;
  /** Grace for stopping copies that are replaced or removed (default 10 s). */
  stopGraceMs?: number;
  /** Process runtime: cwd of copies (default process.cwd()). */
  cwd?: string;
  /** Host GPU ids for run_on_gpu models (one per copy, least used first). Empty/unset: ['all']. */
  gpus?: string[];
}

export interface CopyInfo {
  id: string;
  model: string;
  state: CopyState;
  inFlight: number;
  credits: number;
  runtimeId?: string;
  name?: string;
  pid?: number;
  gpus?: string[];
  startedAt: number;
  readyAt?: number;
}

export interface ModelStats {
  model: string;
  copies: Record<CopyState, number>;
  inFlight: number;
  restarts: number;
  ready: boolean;
  reason?: string;
}

interface CopyRecord {
  id: string;
  model: string;
  fingerprint: string;
  conn: CopyConnection;
  handle?: CopyHandle;
  gpus?: string[];
  startedAt: number;
  readyAt?: number;
  startupTimer?: NodeJS.Timeout;
  /** Stop was asked for (replace, scale-down, close): its exit is not a crash. */
  stopping: boolean;
  /** 'copy-gone' was emitted. */
  gone?: boolean;
  /** Settles when the copy is gone and cleaned up. */
  done: Promise<void>;
  markDone: () => void;
}

interface ModelState {
  spec: ModelSpec;
  fingerprint: string;
  copies: Map<string, CopyRecord>;
  metadata?: ModelMetadata;
  backoffMs: number;
  restartTimer?: NodeJS.Timeout;
  restarts: number;
  lastReason?: string;
  /** Unloaded through the repository API: no copies until loaded again. */
  unloaded?: boolean;
}

function fingerprint(s: ModelSpec): string {
  return JSON.stringify([s.image ?? null, s.command ?? null, s.env, s.version, s.run_on_gpu]);
}

export class TaskManager extends EventEmitter implements CopyPool, ModelControl {
  private readonly models = new Map<string, ModelState>();
  private readonly runtime: Runtime;
  private readonly link: LinkServer;
  private readonly log: Logger;
  private readonly heartbeatMs: number;
  private readonly backoffInitialMs: number;
  private readonly backoffMaxMs: number;
  private readonly backoffResetMs: number;
  private readonly stopGraceMs: number;
  private closing = false;
  private started = false;

  constructor(private readonly opts: TaskManagerOptions) {
    super();
    this.runtime = opts.runtime;
    this.link = opts.link;
    this.log = opts.logger.child({ component: 'task-manager' });
    this.heartbeatMs = opts.heartbeatMs ?? opts.link.heartbeatMs;
    this.backoffInitialMs = opts.backoffInitialMs ?? 500;
    this.backoffMaxMs = opts.backoffMaxMs ?? 30_000;
    this.backoffResetMs = opts.backoffResetMs ?? 60_000;
    this.stopGraceMs = opts.stopGraceMs ?? 10_000;
  }

  /** Binds the link and removes copies an earlier run of this broker left behind. Called by reconcile if needed. */
  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    await this.link.start();
    const n = await this.runtime.removeStale(this.opts.brokerId);
    if (n > 0) this.log.info({ removed: n }, 'removed stale copies of an earlier run');
  }

  /** Brings the running copies in line with `specs`: starts, replaces and stops copies. */
  async reconcile(specs: ModelSpec[]): Promise<void> {
    await this.start();
    const names = new Set(specs.map((s) => s.name));
    const stops: Promise<void>[] = [];
    for (const name of [...this.models.keys()]) {
      if (!names.has(name)) stops.push(this.removeModel(name));
    }
    for (const spec of specs) stops.push(this.upsert(spec));
    await Promise.all(stops);
  }

  /** Applies one registry event (put/delete). */
  async applyChange(event: RegistryEvent): Promise<void> {
    await this.start();
    if (event.type === 'delete') await this.removeModel(event.name);
    else await this.upsert(event.spec);
  }

  // ---- CopyPool ----

  available(model: string): ModelCopy | undefined {
    const ms = this.models.get(model);
    if (!ms) return undefined;
    let best: CopyConnection | undefined;
    for (const rec of ms.copies.values()) {
      const c = rec.conn;
      if (!rec.stopping && c.hasCapacity() && (!best || c.inFlight < best.inFlight)) best = c;
    }
    return best;
  }

  readyCopies(model: string): ModelCopy[] {
    const ms = this.models.get(model);
    if (!ms) return [];
    return [...ms.copies.values()].filter((r) => !r.stopping && r.conn.state === 'ready').map((r) => r.conn);
  }

  scaleUp(model: string, reason: string): boolean {
    const ms = this.models.get(model);
    if (!ms || this.closing || ms.unloaded) return false;
    const live = [...ms.copies.values()].filter((r) => !r.stopping && r.conn.state !== 'failed' && r.conn.state !== 'stopped');
    if (live.length >= ms.spec.max_replicas) return false;
    if (live.some((r) => r.conn.state === 'starting')) return true; // one is on its way
    this.log.info({ model, copies: live.length, maxReplicas: ms.spec.max_replicas, reason }, 'scaling up');
    this.startCopy(ms);
    return true;
  }

  /** Tells the core once that a copy is gone (its sequences with it). */
  private gone(rec: CopyRecord, reason: string): void {
    if (rec.gone || !rec.readyAt) return;
    rec.gone = true;
    this.emit('copy-gone', rec.model, rec.id, reason);
  }

  metadata(model: string): ModelMetadata | undefined {
    return this.models.get(model)?.metadata;
  }

  readiness(model: string): ModelReadiness {
    const ms = this.models.get(model);
    if (!ms) return { ready: false, state: 'starting', reason: `model ${model} has no copy yet` };
    const recs = [...ms.copies.values()];
    if (ms.unloaded) return { ready: false, state: 'stopped', reason: 'unloaded' };
    if (recs.some((r) => r.conn.state === 'ready' && !r.stopping)) return { ready: true, state: 'ready' };
    if (ms.lastReason) return { ready: false, state: 'failed', reason: ms.lastReason };
    if (recs.some((r) => r.conn.state === 'starting')) return { ready: false, state: 'starting', reason: 'starting: waiting for a copy to send READY' };
    if (ms.spec.min_replicas === 0) return { ready: false, state: 'stopped', reason: 'no copies (min_replicas is 0)' };
    return { ready: false, state: 'starting', reason: 'no copy running' };
  }


  // ---- metrics ----

  copies(): CopyInfo[] {
    const out: CopyInfo[] = [];
    for (const ms of this.models.values()) {
      for (const r of ms.copies.values()) {
        out.push({
          id: r.id,
          model: r.model,
          state: r.conn.state,
          inFlight: r.conn.inFlight,
          credits: r.conn.credits,
          runtimeId: r.handle?.runtimeId,
          name: r.handle?.name,
          pid: r.handle?.pid,
          gpus: r.gpus,
          startedAt: r.startedAt,
          readyAt: r.readyAt,
        });
      }
    }
    return out;
  }

  stats(): ModelStats[] {
    return [...this.models.entries()].map(([model, ms]) => {
      const copies: Record<CopyState, number> = { starting: 0, ready: 0, draining: 0, failed: 0, stopped: 0 };
      let inFlight = 0;
      for (const r of ms.copies.values()) {
        copies[r.conn.state]++;
        inFlight += r.conn.inFlight;
      }
      const rd = this.readiness(model);
      return { model, copies, inFlight, restarts: ms.restarts, ready: rd.ready, reason: rd.reason };
    });
  }

  /** SHUTDOWN to every copy, stops and removes them; every batch in flight settles. Then closes link and runtime. */
  async close(graceMs = this.stopGraceMs): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    const all: Promise<void>[] = [];
    for (const ms of this.models.values()) {
      clearTimeout(ms.restartTimer);
      for (const r of ms.copies.values()) all.push(this.stopCopy(r, graceMs, 'broker shutting down'));
    }
    await Promise.all(all);
    this.models.clear();
    await this.link.close();
    await this.runtime.close();
  }

  // ---- internals ----

  private async upsert(spec: ModelSpec): Promise<void> {
    if (this.closing) return;
    const fp = fingerprint(spec);
    let ms = this.models.get(spec.name);
    if (!ms) {
      ms = { spec, fingerprint: fp, copies: new Map(), backoffMs: this.backoffInitialMs, restarts: 0 };
      this.models.set(spec.name, ms);
    }
    const stops: Promise<void>[] = [];
    if (ms.fingerprint !== fp) {
      this.log.info({ model: spec.name }, 'model spec changed: replacing its copies');
      ms.fingerprint = fp;
      ms.metadata = undefined;
      ms.lastReason = undefined;
      ms.backoffMs = this.backoffInitialMs;
      clearTimeout(ms.restartTimer);
      ms.restartTimer = undefined;
      for (const r of ms.copies.values()) stops.push(this.stopCopy(r, this.stopGraceMs, 'model spec changed'));
    }
    const batchChanged = ms.spec.batch_size !== spec.batch_size;
    ms.spec = spec;
    if (batchChanged) {
      for (const r of ms.copies.values()) r.conn.setBatchSize(spec.batch_size);
      if (ms.metadata) {
        const any = [...ms.copies.values()].find((r) => r.conn.hasMetadata && !r.stopping);
        if (any) {
          ms.metadata = any.conn.metadata;
          this.emit('metadata', spec.name, ms.metadata);
        }
      }
    }
    this.ensureReplicas(spec.name);
    await Promise.all(stops);
  }

  private async removeModel(name: string): Promise<void> {
    const ms = this.models.get(name);
    if (!ms) return;
    this.models.delete(name);
    clearTimeout(ms.restartTimer);
    this.log.info({ model: name }, 'model removed: stopping its copies');
    await Promise.all([...ms.copies.values()].map((r) => this.stopCopy(r, this.stopGraceMs, 'model removed')));
  }

  /** Repository API: stop every copy of the model and keep it stopped until load(). */
  async unload(model: string): Promise<void> {
    const ms = this.models.get(model);
    if (!ms) return;
    ms.unloaded = true;
    clearTimeout(ms.restartTimer);
    ms.restartTimer = undefined;
    this.log.info({ model }, 'model unloaded: stopping its copies');
    await Promise.all([...ms.copies.values()].map((r) => this.stopCopy(r, this.stopGraceMs, 'model unloaded')));
  }

  /** Repository API: (re)start the model's copies; resolves when one is ready, rejects with the reason if none gets there. */
  async load(model: string): Promise<void> {
    const ms = this.models.get(model);
    if (!ms) throw new BrokerError('NOT_FOUND', `unknown model '${model}'`);
    ms.unloaded = false;
    ms.lastReason = undefined;
    ms.backoffMs = this.backoffInitialMs;
    if (ms.spec.min_replicas === 0 && ![...ms.copies.values()].some((r) => !r.stopping)) this.startCopy(ms);
    this.ensureReplicas(model);
    if (this.readiness(model).ready) return;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => done(new BrokerError('UNAVAILABLE', `model '${model}' did not become ready within ${ms.spec.startup_timeout_ms} ms`)), ms.spec.startup_timeout_ms + 1000);
      const onMeta = (m: string) => m === model && done();
      const onExit = (m: string, message: string) => m === model && done(new BrokerError('UNAVAILABLE', `model '${model}' failed to load: ${message}`));
      const done = (err?: Error) => {
        clearTimeout(timer);
        this.off('metadata', onMeta);
        this.off('copy-exit', onExit);
        if (err) reject(err);
        else resolve();
      };
      this.on('metadata', onMeta);
      this.on('copy-exit', onExit);
    });
  }

  private ensureReplicas(model: string): void {
    const ms = this.models.get(model);
    if (!ms || this.closing || ms.restartTimer || ms.unloaded) return;
    const live = [...ms.copies.values()].filter((r) => !r.stopping && r.conn.state !== 'failed' && r.conn.state !== 'stopped');
    const target = Math.min(Math.max(0, ms.spec.min_replicas), Math.max(1, ms.spec.max_replicas));
    for (let i = live.length; i < target; i++) this.startCopy(ms);
    if (live.length > Math.max(target, ms.spec.max_replicas)) {
      const extra = live.length - Math.max(target, ms.spec.max_replicas);
      live
        .sort((a, b) => a.conn.inFlight - b.conn.inFlight)
        .slice(0, extra)
        .forEach((r) => void this.stopCopy(r, this.stopGraceMs, 'scaled down'));
    }
  }

  private pickGpus(ms: ModelState): string[] | undefined {
    if (!ms.spec.run_on_gpu) return undefined;
    const pool = this.opts.gpus ?? [];
    if (pool.length === 0) return ['all'];
    const use = new Map(pool.map((g) => [g, 0]));
    for (const m of this.models.values()) {
      for (const r of m.copies.values()) for (const g of r.gpus ?? []) if (use.has(g)) use.set(g, (use.get(g) ?? 0) + 1);
    }
    const [best] = [...use.entries()].sort((a, b) => a[1] - b[1]);
    return [best[0]];
  }

  private startCopy(ms: ModelState): void {
    const spec = ms.spec;
    const model = spec.name;
    const id = randomBytes(6).toString('hex');
    const conn = new CopyConnection({
      id,
      model,
      link: this.link,
      batchSize: spec.batch_size,
      heartbeatMs: this.heartbeatMs,
      missedHeartbeats: this.opts.missedHeartbeats,
      maxSequences: spec.max_sequences,
      logger: this.log,
    });
    let markDone!: () => void;
    const done = new Promise<void>((r) => (markDone = r));
    const rec: CopyRecord = {
      id,
      model,
      fingerprint: ms.fingerprint,
      conn,
      gpus: this.pickGpus(ms),
      startedAt: Date.now(),
      stopping: false,
      done,
      markDone,
    };
    ms.copies.set(id, rec);
    this.link.register(id, conn);
    const log = this.log.child({ model, copy: id });

    conn.on('ready', (meta: ModelMetadata) => {
      clearTimeout(rec.startupTimer);
      rec.readyAt = Date.now();
      const cur = this.models.get(model);
      if (cur === ms && !rec.stopping) {
        ms.metadata = meta;
        ms.lastReason = undefined;
        log.info({ maxBatch: meta.maxBatch, credits: conn.credits, ms: rec.readyAt - rec.startedAt }, 'copy ready');
        this.emit('metadata', model, meta);
      }
    });
    conn.on('capacity', () => {
      if (!rec.stopping) this.emit('capacity', model);
    });
    conn.on('leaving', () => this.gone(rec, `model copy ${id} of ${model} is shutting down`));
    conn.on('failed', (reason: string) => {
      this.gone(rec, `model copy ${id} of ${model} ${reason}`);
      log.warn({ reason }, 'copy failed; killing it');
      if (rec.handle) void this.runtime.kill(rec.handle).catch((err) => log.error({ err }, 'kill failed'));
    });

    rec.startupTimer = setTimeout(() => {
      if (conn.state !== 'starting') return;
      conn.fail(`did not send READY within ${spec.startup_timeout_ms} ms (startup_timeout_ms)`);
    }, spec.startup_timeout_ms);

    log.info({ runtime: this.runtime.kind, gpus: rec.gpus }, 'starting copy');
    this.runtime
      .start({
        copyId: id,
        model,
        version: spec.version,
        image: spec.image,
        command: spec.command,
        cwd: this.opts.cwd,
        env: spec.env,
        owner: this.opts.brokerId,
        gpus: rec.gpus,
        batchSize: spec.batch_size,
        link: this.link.info(),
      })
      .then(
        (handle) => {
          rec.handle = handle;
          log.debug({ runtimeId: handle.runtimeId, name: handle.name }, 'copy started');
          void this.runtime.exited(handle).then((info) => this.onExit(rec, info));
          // Stopped or failed while starting: stop now.
          if (rec.stopping || conn.state === 'failed') void this.runtime.kill(handle).catch(() => undefined);
        },
        (err: Error) => {
          const info: ExitInfo = { code: null, signal: null, reason: `could not start: ${err.message}`, lastLines: [] };
          this.onExit(rec, info);
        },
      );
  }

  private onExit(rec: CopyRecord, info: ExitInfo): void {
    clearTimeout(rec.startupTimer);
    const last = lastLine(info.lastLines);
    const what = info.oomKilled ? `${info.reason}, OOM killed` : info.reason;
    const failReason = rec.conn.state === 'failed' ? rec.conn.reason : undefined;
    let message = `model copy ${rec.id} of ${rec.model} ${failReason ? `${failReason}; ` : ''}${what}`;
    if (last) message += `: ${last}`;
    rec.conn.ended(message);
    this.gone(rec, message);
    this.link.unregister(rec.id);
    const ms = this.models.get(rec.model);
    if (ms && ms.copies.get(rec.id) === rec) ms.copies.delete(rec.id);
    rec.markDone();
    if (rec.stopping || this.closing) {
      this.log.info({ model: rec.model, copy: rec.id, reason: info.reason }, 'copy stopped');
      return;
    }
    this.log.error({ model: rec.model, copy: rec.id, code: info.code, signal: info.signal, oomKilled: info.oomKilled, lastLines: info.lastLines }, message);
    this.emit('copy-exit', rec.model, message);
    if (!ms || ms.fingerprint !== rec.fingerprint) return;
    ms.lastReason = message;
    if (rec.readyAt && Date.now() - rec.readyAt >= this.backoffResetMs) ms.backoffMs = this.backoffInitialMs;
    this.scheduleRestart(ms);
  }

  private scheduleRestart(ms: ModelState): void {
    if (this.closing || ms.restartTimer || this.models.get(ms.spec.name) !== ms) return;
    const delay = ms.backoffMs;
    ms.backoffMs = Math.min(this.backoffMaxMs, ms.backoffMs * 2);
    ms.restarts++;
    this.log.info({ model: ms.spec.name, delayMs: delay }, 'restarting copy after backoff');
    ms.restartTimer = setTimeout(() => {
      ms.restartTimer = undefined;
      this.ensureReplicas(ms.spec.name);
    }, delay);
  }

  private async stopCopy(rec: CopyRecord, graceMs: number, reason: string): Promise<void> {
    if (!rec.stopping) {
      rec.stopping = true;
      clearTimeout(rec.startupTimer);
      const start = Date.now();
      if (rec.conn.connected && rec.conn.state !== 'failed' && rec.conn.state !== 'stopped') {
        rec.conn.shutdown(graceMs, reason);
        let t: NodeJS.Timeout | undefined;
        await Promise.race([rec.conn.drained(), rec.done, new Promise<void>((r) => (t = setTimeout(r, graceMs)))]);
        clearTimeout(t);
      }
      if (rec.handle) {
        const left = Math.max(0, graceMs - (Date.now() - start));
        await this.runtime.stop(rec.handle, left).catch((err) => this.log.error({ err, copy: rec.id }, 'stop failed'));
      }
      // No handle yet: startCopy kills it once start() returns (or start fails).
    }
    await rec.done;
  }
}
