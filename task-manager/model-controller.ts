/**
 * ModelController: the one owner of one model's copies. It implements the
 * core's ModelCopies for its model and keeps its spec, copies, desired count,
 * failure tracker and phase. One idempotent reconcile() (wanted against live,
 * in the Kubernetes-controller style) runs after every event: a copy ready or
 * gone, a spec change, a tick, demand from the core, an operator action.
 * What it shares with other models comes from its ControllerHost.
 */
import { chooseCopy } from './copy-choice';
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { BrokerError } from '../core/errors';
import type { ModelCopies, ModelCopiesEvents, ModelCopy } from '../core/model-copies';
import type { ModelSpec } from '../core/model-spec';
import type { ModelMetadata, ModelPhase, ModelReadiness } from '../core/types';
import { decideScale, type ScaleDecision } from './autoscaler';
import type { ControllerHost } from './controller-host';
import { CopyConnection } from './copy-connection';
import { copyLaunch, exitMessage, failureKind, stopCopy } from './copies';
import { FailureTracker, batchTimeoutMs } from './health';
import { currentCopies, fingerprint, isLive, isServing, placementOf, type CopyRecord, type ModelState } from './model-state';
import type { Placement } from './placement-store';
import type { Placed } from './placement';
import { rollStep } from './roll';
import type { CopyHandle, ExitInfo } from './runtime';
import { scaleInput, type Load } from './scaling';
import { copyInfo, modelStats, modelStatus, type ModelStats, type ModelStatus } from './views';

export class ModelController extends EventEmitter<ModelCopiesEvents> implements ModelCopies, ModelState, Placed {
  readonly model: string;
  spec: ModelSpec;
  fingerprint: string;
  readonly copies = new Map<string, CopyRecord>();
  /** READY metadata of the current spec's copies. */
  metadata?: ModelMetadata;
  readonly health: FailureTracker;
  desired: number;
  restartTimer?: NodeJS.Timeout;
  restarts = 0;
  lastReason?: string;
  failedBeforeReady?: boolean;
  waiting?: string;
  unloaded?: boolean;
  lastScaleUpAt = 0;
  lastScaleDownAt = 0;
  lastDecision?: string;
  /** The core's last demand report. */
  lastDemand: Load = { queued: 0, running: 0 };
  /** Jobs waiting for this model (jobs/backlog.ts): counted by the autoscaler like queued requests. */
  jobBacklog = 0;
  private closing = false;
  private closed?: Promise<void>;
  /** Copy budget (several brokers): a claim in flight, a granted id not launched yet, ids holding a place, the last refusal. */
  private claiming = false;
  private grant?: string;
  private readonly budgeted = new Set<string>();
  private budgetRefusal?: string;
  private phaseSeen?: string;
  private readonly log: Logger;
  readonly stopLater = (rec: CopyRecord, reason: string): void => void this.stopCopy(rec, this.host.stopGraceMs, reason);

  constructor(spec: ModelSpec, private readonly host: ControllerHost) {
    super();
    this.model = spec.name;
    this.spec = spec;
    this.fingerprint = fingerprint(spec);
    this.desired = spec.min_replicas;
    this.health = new FailureTracker(host.backoff.initialMs, host.backoff.maxMs);
    this.log = host.log.child({ model: spec.name });
  }

  // ---- ModelCopies (the core's view) ----

  available(): ModelCopy | undefined {
    return chooseCopy(this.copies.values(), this.fingerprint);
  }

  ready(): ModelCopy[] {
    return [...this.copies.values()].filter(isServing).map((r) => r.conn);
  }

  requestCopy(reason: string): boolean {
    if (this.closing || this.unloaded || this.health.unavailable) return false;
    const live = currentCopies(this).filter(isLive);
    if (live.some((r) => r.conn.state === 'starting')) return true; // one is on its way
    if (this.desired > live.length) return true; // wanted already (restart backoff, waiting for room)
    if (this.desired >= this.spec.max_replicas) return false;
    this.scaleTo(this.desired + 1, `asked: ${reason}`);
    return true;
  }

  demand(queued: number, running: number): void {
    this.lastDemand = { queued, running };
    // The cold start: requests queue while nothing runs or is wanted.
    if (queued > 0 && this.desired === 0 && !this.closing && !this.unloaded && !this.health.unavailable) {
      this.scaleTo(1, `cold start: ${queued} request(s) queued and the model has no copy`);
    }
  }

  /** The model's job backlog: desired copies count it as well as the live queue; a backlog at zero copies starts one. */
  backlog(waiting: number): void {
    this.jobBacklog = Math.max(0, waiting);
    if (waiting > 0 && this.desired === 0 && this.spec.max_replicas > 0 && !this.closing && !this.unloaded && !this.health.unavailable) {
      this.scaleTo(1, `cold start: ${waiting} job(s) waiting and the model has no copy`);
    }
  }

  readiness(): ModelReadiness {
    const recs = [...this.copies.values()];
    const starting = currentCopies(this).filter((r) => isLive(r) && r.conn.state === 'starting').length;
    const r = (phase: ModelPhase, reason?: string): ModelReadiness => {
      const out: ModelReadiness = { ready: phase === 'ready' || phase === 'degraded', phase };
      if (starting > 0) out.starting = starting;
      if (reason !== undefined) out.reason = reason;
      return out;
    };
    if (this.closing) return r('draining', 'the model is being removed or the broker stops');
    if (this.unloaded) return r('unloaded', 'unloaded through the repository API; load it to serve again');
    const serving = recs.filter(isServing).length;
    if (serving > 0) {
      const why = this.health.unavailable?.reason ?? this.waiting ?? (this.restartTimer ? `restarting after a failure: ${this.lastReason}` : undefined);
      return serving < this.desired && why ? r('degraded', `${serving} of ${this.desired} copies serve; ${why}`) : r('ready');
    }
    if (this.health.unavailable) return r('failed', this.health.unavailable.reason);
    // A copy that died before READY (bad image, load error): answer at once with the reason rather than queue.
    if (this.lastReason && this.failedBeforeReady) return r('failed', this.lastReason);
    if (starting > 0) return r('starting', this.lastReason ? `starting again after: ${this.lastReason}` : 'a copy is starting: waiting for its READY');
    if (this.restartTimer) return r('starting', `restarting after a failure: ${this.lastReason}`);
    if (this.waiting) return r('starting', `waiting for room: ${this.waiting}`);
    if (this.desired === 0) return r('at-zero', 'scaled to zero (min_replicas 0): the next request starts a copy');
    return r('starting', this.lastReason ?? 'no copy running yet');
  }

  /** Repository load: (re)start the copies; resolves when one is ready. A failing model backs off between loads. */
  async load(): Promise<void> {
    if (this.closing) throw new BrokerError('UNAVAILABLE', `model '${this.model}' is being removed`, { kind: 'model-unavailable' });
    const verdict = this.health.unavailable;
    if (verdict) {
      const wait = this.health.retryAt() - Date.now();
      if (wait > 0) {
        throw new BrokerError('UNAVAILABLE', `model '${this.model}' failed and its loads back off: try again in ${Math.ceil(wait / 1000)} s (${verdict.reason})`,
          { retryAfterMs: wait, kind: 'model-unavailable' });
      }
      this.log.info({ reason: verdict.reason }, 'repository load: retrying a failed model with one copy');
      this.health.retry();
    } else if (this.restartTimer) {
      // A load never starts copies faster than the restart backoff (a crash loop must not multiply copies).
      throw new BrokerError('UNAVAILABLE', `model '${this.model}' failed and restarts after its backoff: ${this.lastReason ?? 'copy failed'}`,
        { retryAfterMs: this.health.currentDelay(), kind: 'model-unavailable' });
    }
    this.unloaded = false;
    if (!currentCopies(this).some((r) => isLive(r))) {
      this.lastReason = undefined;
      this.failedBeforeReady = false;
    }
    this.desired = Math.max(this.desired, this.spec.min_replicas, 1);
    this.reconcile();
    if (this.readiness().ready) return;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => done(new BrokerError('UNAVAILABLE', `model '${this.model}' did not become ready within ${this.spec.startup_timeout_ms} ms`)), this.spec.startup_timeout_ms + 1000);
      const onPhase = (p: ModelReadiness) => {
        if (p.ready) done();
        else if (p.phase === 'failed' || p.phase === 'unloaded' || p.phase === 'draining') {
          done(new BrokerError('UNAVAILABLE', `model '${this.model}' failed to load: ${p.reason ?? p.phase}`, { kind: 'model-unavailable' }));
        }
      };
      const done = (err?: Error) => {
        clearTimeout(timer);
        this.off('phase', onPhase);
        if (err) reject(err);
        else resolve();
      };
      this.on('phase', onPhase);
    });
  }

  /** Repository unload: stops every copy and keeps the model stopped until load(). */
  async unload(): Promise<void> {
    this.unloaded = true;
    this.clearRestart();
    this.log.info('model unloaded: stopping its copies');
    const stops = [...this.copies.values()].map((r) => this.stopCopy(r, this.host.stopGraceMs, 'model unloaded'));
    this.notePhase();
    await Promise.all(stops);
  }

  close(reason: string, graceMs = this.host.stopGraceMs): Promise<void> {
    this.closed ??= (async () => {
      this.closing = true;
      this.clearRestart();
      if (this.grant) this.host.budget?.release(this.model, this.grant);
      this.grant = undefined;
      this.log.info({ reason }, 'stopping the model\'s copies');
      const stops = [...this.copies.values()].map((r) => this.stopCopy(r, graceMs, reason));
      this.notePhase();
      await Promise.all(stops);
      this.host.closed(this.model);
    })();
    return this.closed;
  }

  // ---- the task manager's side ----

  /** A registry put: a new fingerprint rolls the copies; bounds and batch size follow the spec. */
  update(spec: ModelSpec): void {
    const fp = fingerprint(spec);
    if (this.fingerprint !== fp) {
      const old = [...this.copies.values()].filter(isLive).length;
      this.log.info({ from: this.spec.version, to: spec.version, image: spec.image, copies: old }, 'model spec changed: rolling its copies (new ones start, old ones drain once they are ready)');
      this.fingerprint = fp;
      this.lastReason = undefined;
      this.failedBeforeReady = false;
      this.health.reset();
      this.clearRestart();
    }
    const batchChanged = this.spec.batch_size !== spec.batch_size;
    this.spec = spec;
    // Adopted copies count: a restarted broker keeps what it had (within the spec's bounds).
    const live = currentCopies(this).filter(isLive).length;
    this.desired = Math.min(spec.max_replicas, Math.max(spec.min_replicas, this.desired, live));
    if (batchChanged) {
      for (const r of this.copies.values()) r.conn.setBatchSize(spec.batch_size);
      const any = [...this.copies.values()].find((r) => r.conn.hasMetadata && !r.stopping && r.fingerprint === this.fingerprint);
      if (this.metadata && any) this.setMetadata(any.conn.metadata);
    }
    this.reconcile();
  }

  /**
   * Brings the copies in line with what is wanted: starts copies up to
   * `desired` (unless a restart backoff, a verdict, an unload or the closing
   * holds it), stops extra ones, drains old copies of a roll, and reports a
   * phase change. Safe to run any number of times.
   */
  reconcile(): void {
    if (!this.closing && !this.unloaded && !this.restartTimer && !this.health.unavailable && this.host.canStart()) {
      const live = currentCopies(this).filter(isLive);
      this.waiting = undefined;
      for (let i = live.length; i < this.desired; i++) if (!this.tryStart()) break;
      if (this.grant && currentCopies(this).filter(isLive).length >= this.desired) {
        this.host.budget?.release(this.model, this.grant);
        this.grant = undefined;
      }
      const extra = live.length - this.desired;
      if (extra > 0) {
        live
          .sort((a, b) => a.conn.inFlight - b.conn.inFlight || a.conn.lastActiveAt - b.conn.lastActiveAt)
          .slice(0, extra)
          .forEach((r) => this.stopLater(r, 'scaled down'));
      }
      rollStep(this, this.log, this.stopLater);
    }
    this.notePhase();
  }

  /** One autoscaler period: decide on the core's last demand, act, reconcile. */
  tick(now = Date.now()): void {
    if (this.closing || this.unloaded || this.health.unavailable) return;
    const input = scaleInput(this, { queued: this.lastDemand.queued + this.jobBacklog, running: this.lastDemand.running }, now);
    const d = decideScale(input);
    if (d.action !== 'none') this.applyScale(d, input);
    else if (d.reason !== this.lastDecision) {
      this.log.debug({ decision: 'none', reason: d.reason, ...this.lastDemand, ready: input.ready, starting: input.starting }, 'scaling decision');
      this.lastDecision = d.reason;
    }
    this.reconcile();
  }

  /**
   * POST /admin/models/{m}/scale: run `replicas` copies now (min_replicas ≤ n ≤
   * max_replicas). Clears an "unavailable" verdict; the autoscaler's cooldowns
   * restart from now.
   */
  scale(replicas: number, by: string): { from: number; to: number } {
    const { min_replicas: min, max_replicas: max } = this.spec;
    if (!Number.isInteger(replicas) || replicas < min || replicas > max) {
      throw new BrokerError('INVALID_ARGUMENT', `replicas must be an integer from min_replicas (${min}) to max_replicas (${max}), got ${replicas}`);
    }
    const from = this.desired;
    const now = Date.now();
    this.lastScaleUpAt = now;
    this.lastScaleDownAt = now;
    this.unloaded = false;
    if (this.health.unavailable) {
      this.health.reset();
      this.clearRestart();
    }
    this.log.info({ decision: 'manual', from, to: replicas, by, live: currentCopies(this).filter(isLive).length, ...this.lastDemand }, 'scaling decision');
    this.desired = replicas;
    this.reconcile();
    this.host.events.emit('scale', this.model, replicas > from ? 'up' : replicas < from ? 'down' : 'none', 'manual');
    return { from, to: replicas };
  }

  /** Eviction for another model: stops the copy and wants one fewer. */
  yieldCopy(rec: CopyRecord, reason: string): void {
    this.desired = Math.max(this.spec.min_replicas, this.desired - 1);
    this.lastScaleDownAt = Date.now();
    this.stopLater(rec, reason);
  }

  /** Takes over a running copy of an earlier broker run (adoption). */
  adopt(handle: CopyHandle, placement: Placement): void {
    this.log.info({ copy: handle.copyId, container: handle.name, gpus: placement.gpus }, 'adopting a running copy of an earlier run');
    this.launch(handle.copyId, placement.gpus, { handle, placement });
  }

  /** GET /admin/models/{m}: readiness, copies, failures, the last scaling decision. */
  status(): ModelStatus {
    return modelStatus(this.model, this, this.readiness());
  }

  stats(): ModelStats {
    return modelStats(this.model, this, this.readiness());
  }

  copyInfos(): ReturnType<typeof copyInfo>[] {
    return [...this.copies.values()].map(copyInfo);
  }

  // ---- scaling and placement ----

  private scaleTo(to: number, reason: string): void {
    const target = Math.min(this.spec.max_replicas, to);
    if (target <= this.desired) return;
    this.log.info({ decision: 'up', from: this.desired, to: target, reason, ...this.lastDemand }, 'scaling decision');
    this.desired = target;
    this.lastScaleUpAt = Date.now();
    this.lastDecision = reason;
    this.host.events.emit('scale', this.model, 'up', reason);
    this.reconcile();
  }

  private applyScale(d: ScaleDecision, input: object): void {
    this.lastDecision = d.reason;
    if (d.action === 'up') {
      const to = Math.min(this.spec.max_replicas, this.desired + d.count);
      if (to <= this.desired) return;
      this.log.info({ decision: 'up', from: this.desired, to, reason: d.reason, inputs: input }, 'scaling decision');
      this.desired = to;
      this.lastScaleUpAt = Date.now();
      this.host.events.emit('scale', this.model, 'up', d.reason);
    } else if (d.action === 'down') {
      const rec = this.copies.get(d.copyId);
      if (!rec) return;
      this.log.info({ decision: 'down', from: this.desired, to: this.desired - 1, copy: d.copyId, reason: d.reason, inputs: input }, 'scaling decision');
      this.desired = Math.max(this.spec.min_replicas, this.desired - 1);
      this.lastScaleDownAt = Date.now();
      this.host.events.emit('scale', this.model, 'down', d.reason);
      this.stopLater(rec, `scaled down: ${d.reason}`);
    }
  }

  /** Places one new copy (global caps, GPUs, evicting an idle copy of another model); false = the model waits. */
  private tryStart(): boolean {
    let id = randomBytes(6).toString('hex');
    const budget = this.host.budget;
    if (budget) {
      if (!this.grant) {
        this.askBudget(budget, id);
        this.waiting = this.budgetRefusal ?? 'asking the shared copy budget (several brokers)';
        return false;
      }
      id = this.grant;
    }
    const room = this.host.placer.place(this, id);
    if ('never' in room) {
      this.markUnavailable(room.never);
      return false;
    }
    if ('wait' in room) {
      this.waiting = room.wait;
      return false;
    }
    if (this.grant === id) {
      this.grant = undefined;
      this.budgeted.add(id);
    }
    this.launch(id, room.gpus);
    return true;
  }

  /**
   * One claim at a time on the shared budget, for max_replicas over all brokers
   * (plus this broker's old copies while it rolls, so a roll can surge). Granted:
   * reconcile starts the copy. Refused: the model waits with the reason and asks
   * again on the next reconcile (the autoscaler's tick). Redis unreachable: the
   * copy starts (serving beats the cap while the budget cannot be asked).
   */
  private askBudget(budget: NonNullable<ControllerHost['budget']>, id: string): void {
    if (this.claiming || this.closing) return;
    this.claiming = true;
    const live = [...this.copies.values()].filter(isLive);
    const rolling = live.filter((r) => r.fingerprint !== this.fingerprint).length;
    const max = this.spec.max_replicas + rolling;
    const floor = live.length - rolling < this.spec.min_replicas;
    budget.claim(this.model, id, max, floor).then(
      (ok) => this.budgetAnswer(ok, id, max),
      (err: unknown) => {
        this.log.warn({ err, copy: id }, 'cannot ask the shared copy budget: starting the copy anyway');
        this.budgetAnswer(true, id, max);
      },
    );
  }

  private budgetAnswer(ok: boolean, id: string, max: number): void {
    this.claiming = false;
    if (!ok) {
      const why = `max_replicas (${max}) copies already run over all brokers sharing this Redis`;
      if (this.budgetRefusal !== why) this.log.info({ max }, `copy start refused by the shared budget: ${why}`);
      this.budgetRefusal = why;
      this.waiting = why;
      this.notePhase();
      return;
    }
    this.budgetRefusal = undefined;
    if (this.closing) return this.host.budget?.release(this.model, id);
    this.grant = id;
    this.reconcile();
  }

  private markUnavailable(why: string): void {
    if (this.health.unavailable) return;
    const v = this.health.record({ at: Date.now(), message: why, lastLines: [] }, 1, this.spec.failure_window_ms);
    if (v) {
      this.log.error({ reason: v.reason }, 'model marked unavailable');
      this.host.events.emit('model-unavailable', this.model, v);
      this.host.events.emit('copy-exit', this.model, why);
    }
  }

  private clearRestart(): void {
    clearTimeout(this.restartTimer);
    this.restartTimer = undefined;
  }

  private setMetadata(meta: ModelMetadata): void {
    this.metadata = meta;
    this.emit('metadata', meta);
    this.host.events.emit('metadata', this.model, meta);
  }

  /** Emits 'phase' when the phase or its reason changed. */
  private notePhase(): void {
    const r = this.readiness();
    const key = `${r.phase}|${r.reason ?? ''}|${r.starting ?? 0}`;
    if (key === this.phaseSeen) return;
    const from = this.phaseSeen?.split('|')[0];
    this.phaseSeen = key;
    if (from !== r.phase) this.log.info({ from, phase: r.phase, reason: r.reason }, 'model phase');
    this.emit('phase', r);
  }

  // ---- copies ----

  /** Creates the copy record and starts (or adopts) its container/process. */
  private launch(id: string, gpus: string[] | undefined, adopt?: { handle: CopyHandle; placement: Placement }): void {
    const { spec, host } = this;
    const adopted = adopt?.placement.metadata ? { metadata: adopt.placement.metadata, credits: adopt.placement.credits ?? 1, maxSequences: adopt.placement.maxSequences } : undefined;
    const conn = new CopyConnection({
      id,
      model: this.model,
      link: host.link,
      batchSize: spec.batch_size,
      heartbeatMs: host.heartbeatMs,
      heartbeatTimeoutMs: spec.heartbeat_timeout_ms,
      batchTimeoutMs: (rows, left) => batchTimeoutMs(this.spec, rows, left),
      retryOnFailure: spec.retry_on_failure && spec.stateless,
      maxSequences: spec.max_sequences,
      adopted,
      logger: host.log,
    });
    let markDone!: () => void;
    const done = new Promise<void>((r) => (markDone = r));
    const rec: CopyRecord = {
      id, model: this.model, fingerprint: adopt ? adopt.placement.fingerprint : this.fingerprint, version: spec.version, image: spec.image, conn,
      gpus: adopt ? host.gpus.claim(id, this.model, adopt.placement.gpus ?? []) : gpus, memoryMb: spec.memory_mb ?? 0,
      startedAt: adopt ? adopt.placement.startedAt : Date.now(), stopping: false, adopted: !!adopt, done, markDone,
    };
    this.copies.set(id, rec);
    host.link.register(id, conn);
    const log = this.log.child({ copy: id });
    this.wire(rec, log);

    // Start-up: READY within startup_timeout_ms; an adopted copy must be heard from within its heartbeat timeout.
    const limit = adopt ? spec.heartbeat_timeout_ms + host.heartbeatMs : spec.startup_timeout_ms;
    rec.startupTimer = setTimeout(() => {
      if (conn.state !== 'starting') return;
      conn.fail(adopt ? `adopted copy was not heard from within ${limit} ms` : `did not send READY within ${spec.startup_timeout_ms} ms (startup_timeout_ms)`, 'startup');
    }, limit);

    if (adopt) {
      if (host.budget) {
        host.budget.hold(this.model, id);
        this.budgeted.add(id);
      }
      rec.handle = adopt.handle;
      host.runtime.adopt!(adopt.handle);
      void host.runtime.exited(adopt.handle).then((info) => this.onExit(rec, info));
      this.persist(rec);
      return;
    }
    log.info({ runtime: host.runtime.kind, gpus, image: spec.image, version: spec.version }, 'starting copy');
    host.runtime
      .start(copyLaunch(spec, id, gpus, rec.fingerprint, host.brokerId, host.link.info(id), host.cwd))
      .then(
        (handle) => {
          rec.handle = handle;
          log.debug({ runtimeId: handle.runtimeId, name: handle.name }, 'copy started');
          this.persist(rec);
          void host.runtime.exited(handle).then((info) => this.onExit(rec, info));
          // Stopped or failed while starting: stop now.
          if (rec.stopping || conn.state === 'failed') void host.runtime.kill(handle).catch(() => undefined);
        },
        (err: Error) => {
          rec.startFailed = true;
          this.onExit(rec, { code: null, signal: null, reason: `could not start: ${err.message}`, lastLines: [] });
        },
      );
  }

  private wire(rec: CopyRecord, log: Logger): void {
    const { conn, id } = rec;
    conn.on('ready', (meta: ModelMetadata) => {
      clearTimeout(rec.startupTimer);
      rec.readyAt ??= Date.now();
      this.persist(rec);
      if (this.closing || rec.stopping) return;
      log.info({ maxBatch: meta.maxBatch, credits: conn.credits, ms: Date.now() - rec.startedAt, adopted: rec.adopted }, 'copy ready');
      if (rec.fingerprint === this.fingerprint || !this.metadata) {
        this.lastReason = undefined;
        this.failedBeforeReady = false;
        this.metadata = meta;
      }
      this.setMetadata(this.metadata!);
      this.reconcile();
    });
    conn.on('capacity', () => {
      if (!rec.stopping) this.emit('capacity');
    });
    conn.on('leaving', () => this.gone(rec, `model copy ${id} of ${this.model} is shutting down`));
    conn.on('failed', (reason: string) => {
      this.gone(rec, `model copy ${id} of ${this.model} ${reason}`);
      this.persist(rec);
      log.warn({ reason }, 'copy failed; killing it');
      if (rec.handle) void this.host.runtime.kill(rec.handle).catch((err: unknown) => log.error({ err }, 'kill failed'));
    });
  }

  /** Tells the core once that a copy is gone (its sequences with it). */
  private gone(rec: CopyRecord, reason: string): void {
    if (rec.gone || !rec.readyAt) return;
    rec.gone = true;
    this.emit('copy-gone', rec.id, reason);
  }

  private persist(rec: CopyRecord): void {
    if (rec.conn.state === 'stopped') return;
    this.host.store.put(placementOf(rec, this.host.brokerId, this.host.runtime.kind)).catch((err: unknown) => this.log.warn({ err, copy: rec.id }, 'cannot store placement'));
  }

  private onExit(rec: CopyRecord, info: ExitInfo): void {
    const { host } = this;
    clearTimeout(rec.startupTimer);
    const freed = host.gpus.release(rec.id);
    const failReason = rec.conn.state === 'failed' ? rec.conn.reason : undefined;
    const failKind = rec.conn.state === 'failed' ? rec.conn.failKind : undefined;
    const message = exitMessage(rec, info, failReason);
    rec.conn.ended(message);
    this.gone(rec, message);
    host.link.unregister(rec.id);
    host.store.remove(rec.id).catch(() => undefined);
    if (this.budgeted.delete(rec.id)) host.budget?.release(this.model, rec.id);
    if (this.copies.get(rec.id) === rec) this.copies.delete(rec.id);
    rec.markDone();
    if (rec.stopping || this.closing) {
      this.log.info({ copy: rec.id, reason: rec.stopReason, exit: info.reason, freedGpus: freed }, 'copy stopped');
      this.reconcile();
      host.copyEnded();
      return;
    }
    const kind = failureKind(info, failKind, !!rec.startFailed);
    this.log.error({ copy: rec.id, kind, code: info.code, signal: info.signal, oomKilled: info.oomKilled, freedGpus: freed, lastLines: info.lastLines }, message);
    host.events.emit('copy-failure', this.model, kind);
    host.events.emit('copy-exit', this.model, message);
    if (this.fingerprint === rec.fingerprint) {
      this.lastReason = message;
      this.failedBeforeReady = !rec.readyAt;
      if (rec.readyAt && Date.now() - rec.readyAt >= host.backoff.resetMs) this.health.resetBackoff();
      const verdict = this.health.record(
        { at: Date.now(), message, exitCode: info.code, oomKilled: info.oomKilled, lastLines: info.lastLines },
        this.spec.max_failures,
        this.spec.failure_window_ms,
      );
      if (verdict) {
        this.log.error({ reason: verdict.reason, failures: verdict.failures, windowMs: verdict.windowMs }, 'model marked unavailable');
        host.events.emit('model-unavailable', this.model, verdict);
      } else this.scheduleRestart();
    }
    this.reconcile();
    host.copyEnded();
  }

  private scheduleRestart(): void {
    if (this.closing || this.restartTimer) return;
    if (currentCopies(this).filter(isLive).length >= this.desired) return;
    const delay = this.health.nextDelay();
    this.restarts++;
    this.log.info({ delayMs: delay }, 'restarting copy after backoff');
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      this.reconcile();
    }, delay);
  }

  private stopCopy(rec: CopyRecord, graceMs: number, reason: string): Promise<void> {
    const p = stopCopy(rec, graceMs, reason, { runtime: this.host.runtime, persist: (r) => this.persist(r), log: this.log });
    this.notePhase();
    return p;
  }
}
