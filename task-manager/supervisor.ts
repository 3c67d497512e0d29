/**
 * TaskManager: runs the model copies of one broker over a Runtime and offers
 * the ready ones to the core as a CopyPool. Placement (GPUs, global caps),
 * health (timeouts, restarts with backoff, "unavailable" after repeated
 * failures), autoscaling, rolling updates and adoption after a broker restart.
 */
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { BrokerError } from '../core/errors';
import type { CopyPool, ModelControl, ModelCopy } from '../core/pool';
import type { ModelMetadata, ModelReadiness } from '../core/types';
import type { ModelSpec, RegistryEvent } from '../model-manager/spec';
import { planAdoption } from './adoption';
import { capRefusal, decideScale, type GlobalCaps, type ScaleDecision } from './autoscaler';
import { CopyConnection, type CopyState } from './copy-connection';
import { GpuAllocator, type GpuUse } from './gpu-allocator';
import { FailureTracker, batchTimeoutMs, type Unavailable } from './health';
import type { LinkServer } from './link-server';
import { fingerprint, instanceState, isLive, isServing, placementOf, type CopyRecord, type ModelState } from './model-state';
import { MemoryPlacementStore, type InstanceState, type Placement, type PlacementStore } from './placement-store';
import { lastLine, type CopyHandle, type ExitInfo, type Runtime } from './runtime';

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

export interface CopyInfo {
  id: string;
  model: string;
  state: InstanceState;
  inFlight: number;
  credits: number;
  runtimeId?: string;
  name?: string;
  pid?: number;
  gpus?: string[];
  fingerprint: string;
  version: string;
  image?: string;
  adopted?: boolean;
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

export interface ModelStatus {
  model: string;
  readiness: ModelReadiness;
  desired: number;
  minReplicas: number;
  maxReplicas: number;
  copies: CopyInfo[];
  restarts: number;
  recentFailures: number;
  unavailable?: Unavailable;
  waiting?: string;
  lastDecision?: string;
}

type Load = { queued: number; running: number };

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
    const handles = await this.runtime.list(this.opts.brokerId).catch((err: Error) => {
      this.log.error({ err: err.message }, 'cannot list containers of an earlier run');
      return [] as CopyHandle[];
    });
    const placements = await this.store.list().catch((err: Error) => {
      this.log.error({ err: err.message, store: this.store.kind }, 'cannot read placements; nothing is adopted');
      return [] as Placement[];
    });
    const canAdopt = !!this.runtime.adopt && this.store.kind !== 'memory';
    const plan = planAdoption(canAdopt ? handles : [], placements, specs, fingerprint);
    if (!canAdopt) for (const h of handles) plan.remove.push({ handle: h, why: 'this runtime or placement store cannot adopt' });
    for (const { handle, why } of plan.remove) {
      this.log.info({ container: handle.name, model: handle.model, copy: handle.copyId, why }, 'removing a stale copy of an earlier run');
      await (this.runtime.remove ? this.runtime.remove(handle) : this.runtime.kill(handle)).catch(() => undefined);
      await this.store.remove(handle.copyId).catch(() => undefined);
    }
    for (const p of plan.forget) await this.store.remove(p.copyId).catch(() => undefined);
    for (const { handle, placement, spec } of plan.adopt) {
      const ms = this.ensureModel(spec);
      this.log.info({ model: spec.name, copy: handle.copyId, container: handle.name, gpus: placement.gpus }, 'adopting a running copy of an earlier run');
      this.launch(ms, handle.copyId, placement.gpus, { handle, placement });
    }
    await this.link.start();
    this.ticker = setInterval(() => this.tick(), this.opts.autoscaleIntervalMs ?? 1000);
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
      this.applyDecision(ms, { action: 'up', count: 1, reason: 'cold start: a request arrived and the model has no copy' }, { queued: 1, running: 0 });
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
    if (this.current(ms).some((r) => r.conn.state === 'starting')) return true; // one is on its way
    this.applyDecision(ms, { action: 'up', count: 1, reason: `core asked: ${reason}` }, this.loadOf(ms.spec.name));
    return true;
  }

  metadata(model: string): ModelMetadata | undefined {
    return this.models.get(model)?.metadata;
  }

  readiness(model: string): ModelReadiness {
    const ms = this.models.get(model);
    if (!ms) return { ready: false, state: 'starting', reason: `model ${model} has no copy yet` };
    if (ms.unloaded) return { ready: false, state: 'stopped', reason: 'unloaded' };
    const recs = [...ms.copies.values()];
    if (recs.some(isServing)) return { ready: true, state: 'ready' };
    if (ms.health.unavailable) return { ready: false, state: 'failed', reason: ms.health.unavailable.reason };
    if (ms.waiting) return { ready: false, state: 'starting', reason: `waiting: ${ms.waiting}` };
    // A copy that died before READY (bad image, load error): answer at once with the reason rather than queue.
    if (ms.lastReason && ms.failedBeforeReady) return { ready: false, state: 'failed', reason: ms.lastReason };
    if (ms.restartTimer) return { ready: false, state: 'starting', reason: `restarting after a failure: ${ms.lastReason}` };
    if (recs.some((r) => isLive(r))) {
      return { ready: false, state: 'starting', reason: ms.lastReason ? `starting again after: ${ms.lastReason}` : 'starting: waiting for a copy to send READY' };
    }
    if (ms.desired === 0) return { ready: false, state: 'starting', reason: 'scaled to zero (min_replicas 0): the next request starts a copy' };
    return { ready: false, state: 'starting', reason: ms.lastReason ?? 'no copy running' };
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
    this.log.info({ model, decision: 'manual', from, to: replicas, by, live: this.current(ms).filter(isLive).length, ...this.loadOf(model) }, 'scaling decision');
    ms.desired = replicas;
    this.ensureReplicas(ms);
    this.emit('scale', model, replicas > from ? 'up' : replicas < from ? 'down' : 'none', 'manual');
    return { from, to: replicas };
  }

  // ---- views ----

  copies(): CopyInfo[] {
    const out: CopyInfo[] = [];
    for (const ms of this.models.values()) for (const r of ms.copies.values()) out.push(this.info(r));
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
    return {
      model,
      readiness: this.readiness(model),
      desired: ms.desired,
      minReplicas: ms.spec.min_replicas,
      maxReplicas: ms.spec.max_replicas,
      copies: [...ms.copies.values()].map((r) => this.info(r)),
      restarts: ms.restarts,
      recentFailures: ms.health.count(Date.now(), ms.spec.failure_window_ms),
      ...(ms.health.unavailable ? { unavailable: ms.health.unavailable } : {}),
      ...(ms.waiting ? { waiting: ms.waiting } : {}),
      ...(ms.lastDecision ? { lastDecision: ms.lastDecision } : {}),
    };
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
    const live = this.current(ms).filter(isLive).length;
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

  /** Copies of the model's current fingerprint. */
  private current(ms: ModelState): CopyRecord[] {
    return [...ms.copies.values()].filter((r) => r.fingerprint === ms.fingerprint);
  }

  private clearRestart(ms: ModelState): void {
    clearTimeout(ms.restartTimer);
    ms.restartTimer = undefined;
  }

  private loadOf(model: string): Load {
    const row = this.loadSource?.().find((l) => l.model === model);
    if (row) return { queued: row.queued, running: row.running };
    const ms = this.models.get(model);
    let running = 0;
    for (const r of ms?.copies.values() ?? []) running += r.conn.inFlight;
    return { queued: 0, running };
  }

  /** Starts copies up to `desired`, stops extra ones. Placement may make a model wait. */
  private ensureReplicas(ms: ModelState): void {
    if (this.closing || ms.unloaded || ms.restartTimer || ms.health.unavailable || this.models.get(ms.spec.name) !== ms) return;
    const live = this.current(ms).filter(isLive);
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
    const spec = ms.spec;
    const id = randomBytes(6).toString('hex');
    let copies = 0;
    let memoryMb = 0;
    for (const m of this.models.values()) {
      for (const r of m.copies.values()) {
        if (r.conn.state === 'stopped') continue;
        copies++;
        memoryMb += r.memoryMb;
      }
    }
    const refusal = capRefusal(this.opts.caps ?? {}, copies, memoryMb, spec.memory_mb ?? 0);
    if (refusal) {
      if (ms.waiting !== refusal.reason) {
        this.log.warn({ model: spec.name, cap: refusal.cap, copies, memoryMb, addMemoryMb: spec.memory_mb ?? 0, caps: this.opts.caps }, `scale-up refused: ${refusal.reason}`);
        this.emit('scale-refused', spec.name, refusal.cap, refusal.reason);
      }
      ms.waiting = refusal.reason;
      this.makeRoom(ms, undefined);
      return false;
    }
    let gpus: string[] | undefined;
    if (spec.run_on_gpu) {
      const n = spec.gpus_per_copy;
      if (!this.gpus.feasible(n, spec.gpus)) {
        const why = this.gpus.size === 0
          ? 'run_on_gpu is set but this host has no GPUs (nvidia-smi found none and TB_GPUS is empty)'
          : `needs ${n} GPU(s) per copy among ${spec.gpus ? `allowed GPUs [${spec.gpus.join(',')}]` : `the host's [${this.gpus.inventory.join(',')}]`}`;
        this.markUnavailable(ms, why);
        return false;
      }
      gpus = this.gpus.allocate(id, spec.name, n, spec.gpus);
      if (!gpus) {
        const why = `no free GPU for model ${spec.name} (needs ${n}; in use: ${this.gpus.usage().filter((u) => u.copyId).map((u) => `${u.gpu}=${u.model}`).join(' ')})`;
        if (ms.waiting !== why) this.log.info({ model: spec.name, gpusPerCopy: n, allowed: spec.gpus, usage: this.gpus.usage() }, 'copy waits for a GPU');
        ms.waiting = why;
        this.makeRoom(ms, spec.gpus);
        return false;
      }
    }
    this.launch(ms, id, gpus);
    return true;
  }

  /**
   * Eviction policy: stop one copy of another model that is idle (nothing in
   * flight, nothing queued, idle past its idle_ttl_ms) and above its
   * min_replicas, holding a GPU this model may use (or any copy, for caps).
   * During a roll of this model, an old copy of it is stopped first.
   */
  private makeRoom(ms: ModelState, allowedGpus: string[] | undefined): void {
    const now = Date.now();
    const old = [...ms.copies.values()].filter((r) => isLive(r) && r.fingerprint !== ms.fingerprint);
    const needGpu = ms.spec.run_on_gpu;
    const usable = (r: CopyRecord) => !needGpu || (r.gpus ?? []).some((g) => !allowedGpus || allowedGpus.includes(g));
    const oldVictim = old.find(usable);
    if (oldVictim && !this.current(ms).some((r) => isLive(r) && r.conn.state === 'starting')) {
      this.log.info({ model: ms.spec.name, copy: oldVictim.id, gpus: oldVictim.gpus }, 'roll: stopping an old copy first to make room for a new one');
      void this.stopCopy(oldVictim, this.stopGraceMs, 'rolled: making room for the new version');
      return;
    }
    for (const other of this.models.values()) {
      if (other === ms) continue;
      const live = [...other.copies.values()].filter(isLive);
      if (live.length <= other.spec.min_replicas) continue;
      const load = this.loadOf(other.spec.name);
      if (load.queued > 0) continue;
      const victim = live.find((r) => isServing(r) && r.conn.inFlight === 0 && r.conn.sequences.size === 0 && now - r.conn.lastActiveAt >= other.spec.idle_ttl_ms && usable(r));
      if (!victim) continue;
      this.log.info(
        { model: ms.spec.name, evicted: other.spec.name, copy: victim.id, gpus: victim.gpus, idleMs: now - victim.conn.lastActiveAt, idleTtlMs: other.spec.idle_ttl_ms, otherCopies: live.length, otherMin: other.spec.min_replicas },
        'evicting an idle copy of another model to make room',
      );
      other.desired = Math.max(other.spec.min_replicas, other.desired - 1);
      other.lastScaleDownAt = now;
      void this.stopCopy(victim, this.stopGraceMs, `evicted for model ${ms.spec.name}`);
      return;
    }
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
      .start({
        copyId: id, model, version: spec.version, image: spec.image, command: spec.command, cwd: spec.cwd ?? this.opts.cwd,
        env: spec.env, owner: this.opts.brokerId, gpus, batchSize: spec.batch_size, link: this.link.info(),
        pullPolicy: spec.pull_policy, pullTimeoutMs: spec.pull_timeout_ms, fingerprint: rec.fingerprint,
        limits: { memoryMb: spec.memory_mb, cpus: spec.cpus, readOnlyRoot: spec.read_only_root, tmpfsMb: spec.tmpfs_mb, pidsLimit: spec.pids_limit },
      })
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
    const last = lastLine(info.lastLines);
    const what = info.oomKilled ? `${info.reason}, OOM killed` : info.reason;
    const failReason = rec.conn.state === 'failed' ? rec.conn.reason : undefined;
    let message = `model copy ${rec.id} of ${rec.model} ${failReason ? `${failReason}; ` : ''}${what}`;
    if (last) message += `: ${last}`;
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
    const kind = info.oomKilled ? 'oom' : /hung/.test(failReason ?? '') ? 'hung' : /heartbeat/.test(failReason ?? '') ? 'heartbeat' : /READY|heard from/.test(failReason ?? '') ? 'startup' : /^could not start/.test(info.reason) ? 'start' : 'crash';
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
    if (this.current(ms).filter(isLive).length >= ms.desired) return;
    const delay = ms.health.nextDelay();
    ms.restarts++;
    this.log.info({ model: ms.spec.name, delayMs: delay }, 'restarting copy after backoff');
    ms.restartTimer = setTimeout(() => {
      ms.restartTimer = undefined;
      this.ensureReplicas(ms);
    }, delay);
  }

  private async stopCopy(rec: CopyRecord, graceMs: number, reason: string): Promise<void> {
    if (!rec.stopping) {
      rec.stopping = true;
      rec.stopReason = reason;
      clearTimeout(rec.startupTimer);
      this.persist(rec);
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
      // No handle yet: launch() kills it once start() returns (or start fails).
    }
    await rec.done;
  }

  // ---- rolls and the periodic tick ----

  /** Old copies of a roll drain as soon as enough new ones serve. */
  private rollStep(ms: ModelState): void {
    const old = [...ms.copies.values()].filter((r) => isLive(r) && r.fingerprint !== ms.fingerprint);
    if (old.length === 0) return;
    const newServing = this.current(ms).filter(isServing).length;
    let excess = newServing + old.length - ms.desired;
    for (const r of old.sort((a, b) => a.conn.inFlight - b.conn.inFlight)) {
      if (excess <= 0) break;
      // Keep old copies until at least one new one serves (no gap), unless none is wanted at all.
      if (newServing === 0 && ms.desired > 0) break;
      excess--;
      this.log.info({ model: ms.spec.name, copy: r.id, newServing, oldLeft: old.length - 1 }, 'roll: new copy ready, draining an old one');
      void this.stopCopy(r, this.stopGraceMs, 'rolled to a new version');
    }
  }

  /** A copy ended: models waiting for a GPU or a cap may fit now. */
  private kick(): void {
    if (this.closing) return;
    for (const ms of this.models.values()) if (ms.waiting) this.ensureReplicas(ms);
  }

  private tick(): void {
    if (this.closing) return;
    const loads = new Map((this.loadSource?.() ?? []).map((l) => [l.model, l]));
    const now = Date.now();
    for (const ms of this.models.values()) {
      if (ms.unloaded || ms.health.unavailable) continue;
      const cur = this.current(ms).filter(isLive);
      const serving = cur.filter(isServing);
      const load = loads.get(ms.spec.name) ?? this.loadOf(ms.spec.name);
      const input = {
        model: ms.spec.name, now, queued: load.queued, running: load.running,
        ready: serving.length, starting: cur.length - serving.length + Math.max(0, ms.desired - cur.length),
        minReplicas: ms.spec.min_replicas, maxReplicas: ms.spec.max_replicas, queuePerCopy: ms.spec.scale_up_queue_per_copy,
        upCooldownMs: ms.spec.scale_up_cooldown_ms, downCooldownMs: ms.spec.scale_down_cooldown_ms, idleTtlMs: ms.spec.idle_ttl_ms,
        lastScaleUpAt: ms.lastScaleUpAt, lastScaleDownAt: ms.lastScaleDownAt,
        idle: serving.filter((r) => r.conn.inFlight === 0 && r.conn.sequences.size === 0).map((r) => ({ copyId: r.id, idleSinceMs: now - r.conn.lastActiveAt })),
      };
      const d = decideScale(input);
      if (d.action !== 'none') this.applyDecision(ms, d, load, input);
      else if (d.reason !== ms.lastDecision) {
        this.log.debug({ model: ms.spec.name, decision: 'none', reason: d.reason, ...load, ready: input.ready, starting: input.starting }, 'scaling decision');
        ms.lastDecision = d.reason;
      }
      if (ms.waiting || (cur.length < ms.desired && !ms.restartTimer)) this.ensureReplicas(ms);
      this.rollStep(ms);
    }
  }

  private applyDecision(ms: ModelState, d: ScaleDecision, load: Load, input?: object): void {
    const model = ms.spec.name;
    ms.lastDecision = d.reason;
    const now = Date.now();
    const inputs = input ?? { ...load, desired: ms.desired, live: this.current(ms).filter(isLive).length };
    if (d.action === 'up') {
      const to = Math.min(ms.spec.max_replicas, ms.desired + d.count);
      if (to <= ms.desired) return;
      this.log.info({ model, decision: 'up', from: ms.desired, to, reason: d.reason, inputs }, 'scaling decision');
      ms.desired = to;
      ms.lastScaleUpAt = now;
      this.emit('scale', model, 'up', d.reason);
      this.ensureReplicas(ms);
    } else if (d.action === 'down') {
      const rec = ms.copies.get(d.copyId);
      if (!rec) return;
      this.log.info({ model, decision: 'down', from: ms.desired, to: ms.desired - 1, copy: d.copyId, reason: d.reason, inputs }, 'scaling decision');
      ms.desired = Math.max(ms.spec.min_replicas, ms.desired - 1);
      ms.lastScaleDownAt = now;
      this.emit('scale', model, 'down', d.reason);
      void this.stopCopy(rec, this.stopGraceMs, `scaled down: ${d.reason}`);
    }
  }

  private info(r: CopyRecord): CopyInfo {
    return {
      id: r.id, model: r.model, state: instanceState(r), inFlight: r.conn.inFlight, credits: r.conn.credits,
      runtimeId: r.handle?.runtimeId, name: r.handle?.name, pid: r.handle?.pid, gpus: r.gpus,
      fingerprint: r.fingerprint, version: r.version, image: r.image, adopted: r.adopted || undefined,
      startedAt: r.startedAt, readyAt: r.readyAt,
    };
  }
}
