/**
 * TaskManager: runs the model copies of one broker over a Runtime and offers
 * the ready ones to the core as a CopyPool. Here: the model lifecycle (specs,
 * load/unload, operator scale), each copy's start/exit/restart, and views.
 * Delegated: placement and eviction (placement.ts), the autoscale loop
 * (scaling.ts), rolls (roll.ts), adoption (adoption.ts), one copy's runtime
 * side (copies.ts), view shapes (views.ts).
 */
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { BrokerError } from '../core/errors';
import type { CopyPool, ModelControl, ModelCopy } from '../core/pool';
import type { ModelMetadata, ModelReadiness } from '../core/types';
import type { ModelSpec, RegistryEvent } from '../core/model-spec';
import { clearLeftovers } from './adoption';
import type { GlobalCaps } from './autoscaler';
import { CopyConnection } from './copy-connection';
import { copyLaunch, exitMessage, failureKind, stopCopy } from './copies';
import { GpuAllocator, type GpuUse } from './gpu-allocator';
import { FailureTracker, batchTimeoutMs } from './health';
import type { LinkServer } from './link-server';
import { currentCopies, fingerprint, isLive, isServing, placementOf, readinessOf, type CopyRecord, type ModelState } from './model-state';
import { MemoryPlacementStore, type Placement, type PlacementStore } from './placement-store';
import { Placer } from './placement';
import { rollStep } from './roll';
import type { CopyHandle, ExitInfo, Runtime } from './runtime';
import { ScaleLoop, loadOf, type Load } from './scaling';
import { copyInfo, modelStats, modelStatus, type CopyInfo, type ModelStats, type ModelStatus } from './views';

export type { CopyInfo, ModelStats, ModelStatus } from './views';

export interface TaskManagerOptions {
  runtime: Runtime;
  link: LinkServer;
  /** Owner label of this broker's copies; two brokers on one host need different ids. */
  brokerId: string;
  logger: Logger;
  /** Link heartbeat interval (default: the link server's). */
  heartbeatMs?: number;
  /** Unused when specs carry heartbeat_timeout_ms (they always do); kept for callers. */
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
  /** GPU inventory (detectGpus()); run_on_gpu copies get GPUs from it exclusively. */
  gpus?: string[];
  /** Where placements are kept (default in memory: no adoption after a restart). */
  store?: PlacementStore;
  /** Global caps on copies and memory. */
  caps?: GlobalCaps;
  /** Autoscaler period (default 1000 ms). */
  autoscaleIntervalMs?: number;
  /** Queue depth per model (the core Broker's load()). */
  load?: () => { model: string; queued: number; running: number }[];
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
  readonly gpus: GpuAllocator;
  readonly store: PlacementStore;
  private loadSource?: () => { model: string; queued: number; running: number }[];
  private ticker?: NodeJS.Timeout;
  private closing = false;
  private starting?: Promise<void>;
  private readonly placer: Placer;
  private readonly scaler: ScaleLoop;
  /** Stops a copy within stopGraceMs without waiting for it. */
  private readonly stopLater = (rec: CopyRecord, reason: string): void => void this.stopCopy(rec, this.stopGraceMs, reason);

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
    this.gpus = new GpuAllocator(opts.gpus ?? []);
    this.store = opts.store ?? new MemoryPlacementStore();
    this.loadSource = opts.load;
    this.placer = new Placer({
      models: this.models, gpus: this.gpus, caps: opts.caps, log: this.log, loadOf: (m) => this.loadOf(m), stop: this.stopLater,
      refused: (model, cap, reason) => this.emit('scale-refused', model, cap, reason),
      unplaceable: (ms, why) => this.markUnavailable(ms, why),
    });
    this.scaler = new ScaleLoop({
      models: this.models, loads: () => this.loadSource?.(), log: this.log, stop: this.stopLater,
      scaled: (model, direction, reason) => this.emit('scale', model, direction, reason),
      ensureReplicas: (ms) => this.ensureReplicas(ms),
      rollStep: (ms) => this.rollStep(ms),
    });
  }

  /** The core's queue depths, for the autoscaler and eviction (set once the Broker exists). */
  setLoadSource(fn: () => { model: string; queued: number; running: number }[]): void {
    this.loadSource = fn;
  }

  /**
   * Adopts the running copies an earlier run of this broker left (placements in
   * the store, same spec), removes the other containers labelled with its id,
   * then binds the link. Called by reconcile / applyChange.
   */
  start(specs: ModelSpec[] = []): Promise<void> {
    this.starting ??= this.doStart(specs);
    return this.starting;
  }

  private async doStart(specs: ModelSpec[]): Promise<void> {
    // First: refuses to start when another live broker holds this broker's socket (same id), before touching any copy.
    await this.link.start();
    for (const { handle, placement, spec } of await clearLeftovers(this.runtime, this.store, this.opts.brokerId, specs, this.log)) {
      const ms = this.ensureModel(spec);
      this.log.info({ model: spec.name, copy: handle.copyId, container: handle.name, gpus: placement.gpus }, 'adopting a running copy of an earlier run');
      this.launch(ms, handle.copyId, placement.gpus, { handle, placement });
    }
    this.ticker = setInterval(() => {
      if (!this.closing) this.scaler.tick();
    }, this.opts.autoscaleIntervalMs ?? 1000);
    this.ticker.unref();
  }

  /** Brings the running copies in line with `specs`: starts, rolls and stops copies. */
  async reconcile(specs: ModelSpec[]): Promise<void> {
    await this.start(specs);
    const names = new Set(specs.map((s) => s.name));
    const work: Promise<void>[] = [];
    for (const name of [...this.models.keys()]) if (!names.has(name)) work.push(this.removeModel(name));
    for (const spec of specs) this.upsert(spec);
    await Promise.all(work);
  }

  /** Applies one registry event (put/delete). */
  async applyChange(event: RegistryEvent): Promise<void> {
    await this.start(event.type === 'put' ? [event.spec] : []);
    if (event.type === 'delete') await this.removeModel(event.name);
    else this.upsert(event.spec);
  }

  // ---- CopyPool ----

  available(model: string): ModelCopy | undefined {
    const ms = this.models.get(model);
    if (!ms) return undefined;
    let best: CopyRecord | undefined;
    for (const r of ms.copies.values()) {
      if (r.stopping || !r.conn.hasCapacity()) continue;
      // New copies of a roll first, then the least loaded.
      const better = !best || (r.fingerprint === ms.fingerprint && best.fingerprint !== ms.fingerprint) ||
        (r.fingerprint === best.fingerprint && r.conn.inFlight < best.conn.inFlight);
      if (better) best = r;
    }
    if (!best && ms.desired === 0 && !ms.unloaded && !ms.health.unavailable && !this.closing && ![...ms.copies.values()].some(isLive)) {
      // Scale from zero: the request that asked stays queued while a copy starts.
      this.scaler.apply(ms, { action: 'up', count: 1, reason: 'cold start: a request arrived and the model has no copy' }, { queued: 1, running: 0 });
    }
    return best?.conn;
  }

  readyCopies(model: string): ModelCopy[] {
    const ms = this.models.get(model);
    if (!ms) return [];
    return [...ms.copies.values()].filter(isServing).map((r) => r.conn);
  }

  scaleUp(model: string, reason: string): boolean {
    const ms = this.models.get(model);
    if (!ms || this.closing || ms.unloaded) return false;
    if (ms.desired >= ms.spec.max_replicas) return false;
    if (currentCopies(ms).some((r) => r.conn.state === 'starting')) return true; // one is on its way
    this.scaler.apply(ms, { action: 'up', count: 1, reason: `core asked: ${reason}` }, this.loadOf(ms.spec.name));
    return true;
  }

  metadata(model: string): ModelMetadata | undefined {
    return this.models.get(model)?.metadata;
  }

  readiness(model: string): ModelReadiness {
    return readinessOf(model, this.models.get(model));
  }

  // ---- ModelControl and operator actions ----

  /** Repository API: stop every copy of the model and keep it stopped until load(). */
  async unload(model: string): Promise<void> {
    const ms = this.models.get(model);
    if (!ms) return;
    ms.unloaded = true;
    this.clearRestart(ms);
    this.log.info({ model }, 'model unloaded: stopping its copies');
    await Promise.all([...ms.copies.values()].map((r) => this.stopCopy(r, this.stopGraceMs, 'model unloaded')));
  }

  /** Repository API: (re)start the model's copies; resolves when one is ready, rejects with the reason if none gets there. */
  async load(model: string): Promise<void> {
    const ms = this.models.get(model);
    if (!ms) throw new BrokerError('NOT_FOUND', `unknown model '${model}'`);
    ms.unloaded = false;
    ms.lastReason = undefined;
    ms.health.reset();
    this.clearRestart(ms);
    ms.desired = Math.max(ms.desired, ms.spec.min_replicas, 1);
    this.ensureReplicas(ms);
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

  /**
   * POST /admin/models/{m}/scale: run `replicas` copies now (min_replicas ≤ n ≤
   * max_replicas). Clears an "unavailable" verdict; the autoscaler's cooldowns
   * restart from now.
   */
  scale(model: string, replicas: number, by = 'operator'): { from: number; to: number } {
    const ms = this.models.get(model);
    if (!ms) throw new BrokerError('NOT_FOUND', `unknown model '${model}'`);
    const { min_replicas: min, max_replicas: max } = ms.spec;
    if (!Number.isInteger(replicas) || replicas < min || replicas > max) {
      throw new BrokerError('INVALID_ARGUMENT', `replicas must be an integer from min_replicas (${min}) to max_replicas (${max}), got ${replicas}`);
    }
    const from = ms.desired;
    const now = Date.now();
    ms.lastScaleUpAt = now;
    ms.lastScaleDownAt = now;
    ms.unloaded = false;
    if (ms.health.unavailable) {
      ms.health.reset();
      this.clearRestart(ms);
    }
    this.log.info({ model, decision: 'manual', from, to: replicas, by, live: currentCopies(ms).filter(isLive).length, ...this.loadOf(model) }, 'scaling decision');
    ms.desired = replicas;
    this.ensureReplicas(ms);
    this.emit('scale', model, replicas > from ? 'up' : replicas < from ? 'down' : 'none', 'manual');
    return { from, to: replicas };
  }

  // ---- views ----

  copies(): CopyInfo[] {
    const out: CopyInfo[] = [];
    for (const ms of this.models.values()) for (const r of ms.copies.values()) out.push(copyInfo(r));
    return out;
  }

  /** GET /admin/instances: every copy with its container and GPUs, and the GPU table. */
  instances(): { broker: string; gpus: GpuUse[]; instances: (CopyInfo | { model: string; state: 'waiting'; reason: string })[] } {
    const waiting = [...this.models.values()]
      .filter((ms) => ms.waiting)
      .map((ms) => ({ model: ms.spec.name, state: 'waiting' as const, reason: ms.waiting! }));
    return { broker: this.opts.brokerId, gpus: this.gpus.usage(), instances: [...this.copies(), ...waiting] };
  }

  gpuUsage(): GpuUse[] {
    return this.gpus.usage();
  }

  status(model: string): ModelStatus | undefined {
    const ms = this.models.get(model);
    if (!ms) return undefined;
    return modelStatus(model, ms, this.readiness(model));
  }

  stats(): ModelStats[] {
    return [...this.models.entries()].map(([model, ms]) => modelStats(model, ms, this.readiness(model)));
  }

  /** Models marked unavailable (for metrics). */
  unavailableModels(): string[] {
    return [...this.models.entries()].filter(([, ms]) => ms.health.unavailable).map(([m]) => m);
  }

  /** SHUTDOWN to every copy, stops and removes them; every batch in flight settles. Then closes link and runtime. */
  async close(graceMs = this.stopGraceMs): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    clearInterval(this.ticker);
    await this.starting?.catch(() => undefined);
    const all: Promise<void>[] = [];
    for (const ms of this.models.values()) {
      this.clearRestart(ms);
      for (const r of ms.copies.values()) all.push(this.stopCopy(r, graceMs, 'broker shutting down'));
    }
    await Promise.all(all);
    this.models.clear();
    await this.link.close();
    await this.runtime.close();
    await this.store.close();
  }

  // ---- models ----

  private ensureModel(spec: ModelSpec): ModelState {
    let ms = this.models.get(spec.name);
    if (!ms) {
      ms = {
        spec,
        fingerprint: fingerprint(spec),
        copies: new Map(),
        health: new FailureTracker(this.backoffInitialMs, this.backoffMaxMs),
        desired: spec.min_replicas,
        restarts: 0,
        lastScaleUpAt: 0,
        lastScaleDownAt: 0,
      };
      this.models.set(spec.name, ms);
    }
    return ms;
  }

  private upsert(spec: ModelSpec): void {
    if (this.closing) return;
    const ms = this.ensureModel(spec);
    const fp = fingerprint(spec);
    if (ms.fingerprint !== fp) {
      const old = [...ms.copies.values()].filter(isLive).length;
      this.log.info({ model: spec.name, from: ms.spec.version, to: spec.version, image: spec.image, copies: old }, 'model spec changed: rolling its copies (new ones start, old ones drain once they are ready)');
      ms.fingerprint = fp;
      ms.lastReason = undefined;
      ms.health.reset();
      this.clearRestart(ms);
    }
    const batchChanged = ms.spec.batch_size !== spec.batch_size;
    ms.spec = spec;
    // Adopted copies count: a restarted broker keeps what it had (within the spec's bounds).
    const live = currentCopies(ms).filter(isLive).length;
    ms.desired = Math.min(spec.max_replicas, Math.max(spec.min_replicas, ms.desired, live));
    if (batchChanged) {
      for (const r of ms.copies.values()) r.conn.setBatchSize(spec.batch_size);
      const any = [...ms.copies.values()].find((r) => r.conn.hasMetadata && !r.stopping);
      if (ms.metadata && any) {
        ms.metadata = any.conn.metadata;
        this.emit('metadata', spec.name, ms.metadata);
      }
    }
    this.ensureReplicas(ms);
    this.rollStep(ms);
  }

  private async removeModel(name: string): Promise<void> {
    const ms = this.models.get(name);
    if (!ms) return;
    this.models.delete(name);
    this.clearRestart(ms);
    this.log.info({ model: name }, 'model removed: stopping its copies');
    await Promise.all([...ms.copies.values()].map((r) => this.stopCopy(r, this.stopGraceMs, 'model removed')));
  }

  private clearRestart(ms: ModelState): void {
    clearTimeout(ms.restartTimer);
    ms.restartTimer = undefined;
  }

  private loadOf(model: string): Load {
    return loadOf(model, this.loadSource?.(), this.models.get(model));
  }

  /** Starts copies up to `desired`, stops extra ones. Placement may make a model wait. */
  private ensureReplicas(ms: ModelState): void {
    if (this.closing || ms.unloaded || ms.restartTimer || ms.health.unavailable || this.models.get(ms.spec.name) !== ms) return;
    const live = currentCopies(ms).filter(isLive);
    ms.waiting = undefined;
    for (let i = live.length; i < ms.desired; i++) if (!this.tryStart(ms)) break;
    const extra = live.length - ms.desired;
    if (extra > 0) {
      live
        .sort((a, b) => a.conn.inFlight - b.conn.inFlight || a.conn.lastActiveAt - b.conn.lastActiveAt)
        .slice(0, extra)
        .forEach((r) => void this.stopCopy(r, this.stopGraceMs, 'scaled down'));
    }
  }

  /** Places one new copy (global caps, GPUs, evicting an idle copy of another model); false = the model waits. */
  private tryStart(ms: ModelState): boolean {
    const id = randomBytes(6).toString('hex');
    const placed = this.placer.place(ms, id);
    if (!placed) return false;
    this.launch(ms, id, placed.gpus);
    return true;
  }

  private markUnavailable(ms: ModelState, why: string): void {
    if (ms.health.unavailable) return;
    const v = ms.health.record({ at: Date.now(), message: why, lastLines: [] }, 1, ms.spec.failure_window_ms);
    if (v) {
      this.log.error({ model: ms.spec.name, reason: v.reason }, 'model marked unavailable');
      this.emit('model-unavailable', ms.spec.name, v);
      this.emit('copy-exit', ms.spec.name, why);
    }
  }

  // ---- copies ----

  /** Creates the copy record and starts (or adopts) its container/process. */
  private launch(ms: ModelState, id: string, gpus: string[] | undefined, adopt?: { handle: CopyHandle; placement: Placement }): void {
    const spec = ms.spec;
    const model = spec.name;
    const adopted = adopt?.placement.metadata ? { metadata: adopt.placement.metadata, credits: adopt.placement.credits ?? 1, maxSequences: adopt.placement.maxSequences } : undefined;
    const conn = new CopyConnection({
      id,
      model,
      link: this.link,
      batchSize: spec.batch_size,
      heartbeatMs: this.heartbeatMs,
      heartbeatTimeoutMs: spec.heartbeat_timeout_ms,
      batchTimeoutMs: (rows, left) => batchTimeoutMs(this.models.get(model)?.spec ?? spec, rows, left),
      retryOnFailure: spec.retry_on_failure && spec.stateless,
      maxSequences: spec.max_sequences,
      adopted,
      logger: this.log,
    });
    let markDone!: () => void;
    const done = new Promise<void>((r) => (markDone = r));
    const rec: CopyRecord = {
      id, model, fingerprint: adopt ? adopt.placement.fingerprint : ms.fingerprint, version: spec.version, image: spec.image, conn,
      gpus: adopt ? this.gpus.claim(id, model, adopt.placement.gpus ?? []) : gpus, memoryMb: spec.memory_mb ?? 0,
      startedAt: adopt ? adopt.placement.startedAt : Date.now(), stopping: false, adopted: !!adopt, done, markDone,
    };
    ms.copies.set(id, rec);
    this.link.register(id, conn);
    const log = this.log.child({ model, copy: id });
    this.wire(rec, ms, log);

    // Start-up: READY within startup_timeout_ms; an adopted copy must be heard from within its heartbeat timeout.
    const limit = adopt ? spec.heartbeat_timeout_ms + this.heartbeatMs : spec.startup_timeout_ms;
    rec.startupTimer = setTimeout(() => {
      if (conn.state !== 'starting') return;
      conn.fail(adopt ? `adopted copy was not heard from within ${limit} ms` : `did not send READY within ${spec.startup_timeout_ms} ms (startup_timeout_ms)`);
    }, limit);

    if (adopt) {
      rec.handle = adopt.handle;
      this.runtime.adopt!(adopt.handle);
      void this.runtime.exited(adopt.handle).then((info) => this.onExit(rec, info));
      this.persist(rec);
      return;
    }
    log.info({ runtime: this.runtime.kind, gpus, image: spec.image, version: spec.version }, 'starting copy');
    this.runtime
      .start(copyLaunch(spec, id, gpus, rec.fingerprint, this.opts.brokerId, this.link.info(id), this.opts.cwd))
      .then(
        (handle) => {
          rec.handle = handle;
          log.debug({ runtimeId: handle.runtimeId, name: handle.name }, 'copy started');
          this.persist(rec);
          void this.runtime.exited(handle).then((info) => this.onExit(rec, info));
          // Stopped or failed while starting: stop now.
          if (rec.stopping || conn.state === 'failed') void this.runtime.kill(handle).catch(() => undefined);
        },
        (err: Error) => this.onExit(rec, { code: null, signal: null, reason: `could not start: ${err.message}`, lastLines: [] }),
      );
  }

  private wire(rec: CopyRecord, ms: ModelState, log: Logger): void {
    const { conn, model, id } = rec;
    conn.on('ready', (meta: ModelMetadata) => {
      clearTimeout(rec.startupTimer);
      rec.readyAt ??= Date.now();
      this.persist(rec);
      if (this.models.get(model) !== ms || rec.stopping) return;
      if (rec.fingerprint === ms.fingerprint || !ms.metadata) {
        ms.metadata = meta;
        ms.lastReason = undefined;
      }
      log.info({ maxBatch: meta.maxBatch, credits: conn.credits, ms: Date.now() - rec.startedAt, adopted: rec.adopted }, 'copy ready');
      this.emit('metadata', model, ms.metadata);
      this.rollStep(ms);
    });
    conn.on('capacity', () => {
      if (!rec.stopping) this.emit('capacity', model);
    });
    conn.on('leaving', () => this.gone(rec, `model copy ${id} of ${model} is shutting down`));
    conn.on('failed', (reason: string) => {
      this.gone(rec, `model copy ${id} of ${model} ${reason}`);
      this.persist(rec);
      log.warn({ reason }, 'copy failed; killing it');
      if (rec.handle) void this.runtime.kill(rec.handle).catch((err) => log.error({ err }, 'kill failed'));
    });
  }

  /** Tells the core once that a copy is gone (its sequences with it). */
  private gone(rec: CopyRecord, reason: string): void {
    if (rec.gone || !rec.readyAt) return;
    rec.gone = true;
    this.emit('copy-gone', rec.model, rec.id, reason);
  }

  private persist(rec: CopyRecord): void {
    if (rec.conn.state === 'stopped') return;
    this.store.put(placementOf(rec, this.opts.brokerId, this.runtime.kind)).catch((err: Error) => this.log.warn({ err: err.message, copy: rec.id }, 'cannot store placement'));
  }

  private onExit(rec: CopyRecord, info: ExitInfo): void {
    clearTimeout(rec.startupTimer);
    const freed = this.gpus.release(rec.id);
    const failReason = rec.conn.state === 'failed' ? rec.conn.reason : undefined;
    const message = exitMessage(rec, info, failReason);
    rec.conn.ended(message);
    this.gone(rec, message);
    this.link.unregister(rec.id);
    this.store.remove(rec.id).catch(() => undefined);
    const ms = this.models.get(rec.model);
    if (ms && ms.copies.get(rec.id) === rec) ms.copies.delete(rec.id);
    rec.markDone();
    if (rec.stopping || this.closing) {
      this.log.info({ model: rec.model, copy: rec.id, reason: rec.stopReason, exit: info.reason, freedGpus: freed }, 'copy stopped');
      this.kick();
      return;
    }
    const kind = failureKind(info, failReason);
    this.log.error({ model: rec.model, copy: rec.id, kind, code: info.code, signal: info.signal, oomKilled: info.oomKilled, freedGpus: freed, lastLines: info.lastLines }, message);
    this.emit('copy-failure', rec.model, kind);
    this.emit('copy-exit', rec.model, message);
    if (!ms || ms.fingerprint !== rec.fingerprint) {
      this.kick();
      return;
    }
    ms.lastReason = message;
    ms.failedBeforeReady = !rec.readyAt;
    if (rec.readyAt && Date.now() - rec.readyAt >= this.backoffResetMs) ms.health.resetBackoff();
    const verdict = ms.health.record(
      { at: Date.now(), message, exitCode: info.code, oomKilled: info.oomKilled, lastLines: info.lastLines },
      ms.spec.max_failures,
      ms.spec.failure_window_ms,
    );
    if (verdict) {
      this.log.error({ model: rec.model, reason: verdict.reason, failures: verdict.failures, windowMs: verdict.windowMs }, 'model marked unavailable');
      this.emit('model-unavailable', rec.model, verdict);
    } else this.scheduleRestart(ms);
    this.kick();
  }

  private scheduleRestart(ms: ModelState): void {
    if (this.closing || ms.restartTimer || this.models.get(ms.spec.name) !== ms) return;
    if (currentCopies(ms).filter(isLive).length >= ms.desired) return;
    const delay = ms.health.nextDelay();
    ms.restarts++;
    this.log.info({ model: ms.spec.name, delayMs: delay }, 'restarting copy after backoff');
    ms.restartTimer = setTimeout(() => {
      ms.restartTimer = undefined;
      this.ensureReplicas(ms);
    }, delay);
  }

  private stopCopy(rec: CopyRecord, graceMs: number, reason: string): Promise<void> {
    return stopCopy(rec, graceMs, reason, { runtime: this.runtime, persist: (r) => this.persist(r), log: this.log });
  }

  // ---- rolls and waiting models ----

  /** Old copies of a roll drain as soon as enough new ones serve. */
  private rollStep(ms: ModelState): void {
    rollStep(ms, this.log, this.stopLater);
  }

  /** A copy ended: models waiting for a GPU or a cap may fit now. */
  private kick(): void {
    if (this.closing) return;
    for (const ms of this.models.values()) if (ms.waiting) this.ensureReplicas(ms);
  }
}
