import type { Logger } from 'pino';
import type { ModelRegistry, ModelSpec, RegistryEvent, SavedMetadata } from './model-spec';
import type { ClusterLink, SequencePlace } from './cluster';
import { BrokerError } from './errors';
import type { CopySource, ModelCopies } from './model-copies';
import { ModelScheduler, type SchedulerObserver } from './model-scheduler';
import { SequenceScheduler, sequenceNotActive, type SequenceConfig, type SequenceStatus } from './sequence-scheduler';
import type { ModelStatistics } from './stats';
import type { InferRequest, InferResult, ModelMetadata, ModelReadiness } from './types';
import { stageTimer } from './stage-timings';
import { checkLimits, DEFAULT_LIMITS, type RequestLimits } from './validate';

const ADMIT = stageTimer('core', 'admit');

/** One row of the repository index (KServe/Triton model repository extension). */
export interface RepositoryEntry {
  name: string;
  version: string;
  /** LOADING only while a copy is actually starting; UNAVAILABLE says why (at zero, unloaded, failed). */
  state: 'READY' | 'LOADING' | 'UNAVAILABLE';
  reason: string;
}

/**
 * What a bridge may know of a model: its serving parameters and its metadata,
 * never the registry record (image, env, command stay inside).
 */
export interface ModelDescription {
  name: string;
  version: string;
  stateless: boolean;
  batchSize: number;
  maxWaitMs: number;
  timeoutMs: number;
  queueCapacity: number;
  sequenceIdleMs: number;
  sequenceBacklog: number;
  maxSequences?: number;
  runOnGpu: boolean;
  maxReplicas: number;
  /** READY metadata of a running copy, else the one kept from the model's last READY; undefined if it never ran. */
  metadata?: ModelMetadata;
  readiness: ModelReadiness;
  /** Class labels per output from models.yaml (a label file) or the registry; they win over the labels of READY. */
  labels?: Readonly<Record<string, readonly string[]>>;
}

/** What every bridge sees of the broker, and nothing more. */
export interface BrokerApi {
  infer(req: InferRequest): Promise<InferResult>;
  /** Names and versions of every registered model. */
  models(): { name: string; version: string }[];
  /** NOT_FOUND for an unknown model or version. */
  describe(model: string, version?: string): ModelDescription;
  /** The model's metadata (from its last READY while at zero); UNAVAILABLE with the reason when it never ran. */
  metadata(model: string, version?: string): ModelMetadata;
  /**
   * The metadata, starting a copy and waiting for its READY (within the
   * model's timeout_ms) when the model never ran: for bodies that cannot be
   * decoded without it (image and video uploads, raw inputs).
   */
  awaitMetadata(model: string, version?: string, signal?: AbortSignal): Promise<ModelMetadata>;
  modelReady(model: string, version?: string): ModelReadiness;
  /** The server is ready when it accepts work and every model with min_replicas > 0 has a ready copy. */
  ready(): { ready: boolean; reason?: string };
  stats(model?: string, version?: string): ModelStatistics[];
  /** Slots and sequences of a stateful model (INVALID_ARGUMENT for a stateless one). */
  sequences(model: string, version?: string): SequenceStatus;
  repositoryIndex(): RepositoryEntry[];
  /** Starts a model's copies (repository extension); resolves when one is ready. */
  loadModel(model: string): Promise<void>;
  /** Stops a model's copies; it stays registered and answers 503 until loaded. */
  unloadModel(model: string): Promise<void>;
  /**
   * Changes registry fields of a model before a load (Triton's load with a
   * `config`): the credential is checked first (UNAUTHENTICATED / PERMISSION_DENIED),
   * then `makePatch` runs (its INVALID_ARGUMENT naming a field) and the patch goes
   * through the admin API's validation. The registry event reconfigures the model.
   */
  configureModel(model: string, makePatch: () => Record<string, unknown>, credential?: string): Promise<void>;
}

/** Registry writes on behalf of a bridge (app/server.ts wires the admin token and the registry). */
export interface AdminHooks {
  /** Throws UNAUTHENTICATED or PERMISSION_DENIED when the credential (an Authorization value) may not change models. */
  authorize(credential?: string): void;
  /** A JSON merge patch onto the model's entry, validated as PATCH /admin/models/{m} validates it. */
  patch(model: string, patch: Record<string, unknown>): Promise<void>;
}

export interface BrokerOptions {
  registry: ModelRegistry;
  /** Hands out one model's copies per registered model (the task manager). */
  copies: CopySource;
  logger: Logger;
  observer?: SchedulerObserver;
  limits?: RequestLimits;
  /** Registry writes for load-with-config; without it such loads are refused. */
  admin?: AdminHooks;
  /**
   * Several brokers on one Redis (core/cluster.ts): stateful sequences are
   * owned by one broker, and their requests landing elsewhere are forwarded.
   * Absent for a single broker: nothing of it runs.
   */
  cluster?: ClusterLink;
  /** Background requests (jobs) go out alone only after this long without live arrivals (SchedulerConfig). Default 100 ms. */
  backgroundIdleMs?: number;
}

type Scheduler = ModelScheduler | SequenceScheduler;

/** One registered model: its spec, its copies and its scheduler, paired on each registry put. */
interface ModelEntry {
  spec: ModelSpec;
  copies: ModelCopies;
  scheduler: Scheduler;
  /** Metadata kept from the model's last READY (registry), for describing it at zero. */
  saved?: SavedMetadata;
  loaded: Promise<void>;
  onMetadata: (md: ModelMetadata) => void;
}

/** Phases in which a request fails at once instead of queuing. */
const REFUSING = new Set(['failed', 'unloaded', 'draining']);

/**
 * The only subscriber to registry changes. On each put it pairs the model's
 * scheduler with that model's copies (CopySource.forModel); on delete it
 * closes both. Requests are routed by name once, here.
 */
export class Broker implements BrokerApi {
  private readonly entries = new Map<string, ModelEntry>();
  /** Several brokers: per model + sequence id, the last request still being routed (see inLane). */
  private readonly lanes = new Map<string, Promise<void>>();
  private accepting = true;
  private readonly log: Logger;
  private readonly onChange = (e: RegistryEvent) => this.apply(e);

  constructor(private readonly opts: BrokerOptions) {
    this.log = opts.logger.child({ component: 'broker' });
    for (const spec of opts.registry.list()) this.apply({ type: 'put', name: spec.name, spec });
    opts.registry.on('change', this.onChange);
  }

  /** Resolves once the metadata kept in the registry was read for every model (answers at zero need it). */
  async warm(): Promise<void> {
    await Promise.all([...this.entries.values()].map((e) => e.loaded));
  }

  infer(req: InferRequest): Promise<InferResult> {
    const t0 = performance.now();
    if (!this.accepting) {
      req.onSent?.();
      return Promise.reject(new BrokerError('UNAVAILABLE', 'the broker is shutting down', { kind: 'shutting-down' }));
    }
    let entry: ModelEntry;
    try {
      entry = this.entry(req.model, req.version);
      if (entry.spec.stateless && req.sequence) {
        throw new BrokerError('INVALID_ARGUMENT', `model '${req.model}' is stateless: sequence_id, sequence_start and sequence_end are not accepted`);
      }
      checkLimits(req, this.opts.limits ?? DEFAULT_LIMITS);
      // A failed or unloaded model answers at once; one at zero or starting queues (the cold start).
      const r = entry.copies.readiness();
      if (REFUSING.has(r.phase)) {
        throw new BrokerError('UNAVAILABLE', `model '${req.model}' is not ready: ${r.reason ?? r.phase}`, { kind: 'model-unavailable' });
      }
    } catch (e) {
      req.onSent?.();
      return Promise.reject(e);
    }
    const cluster = this.opts.cluster;
    if (cluster) {
      if (req.sequence && entry.scheduler instanceof SequenceScheduler) {
        const key = `${req.model}\0${req.sequence.id}`;
        if (this.lanes.has(key) || !entry.scheduler.holds(req.sequence.id)) return this.inLane(key, cluster, entry, entry.scheduler, req);
      }
      // Stateless with no ready copy here: when the shared budget is taken, a broker holding a copy serves it.
      if (cluster.overflow && req.forwardedBy === undefined && entry.spec.stateless && entry.copies.available() === undefined && entry.copies.ready().length === 0) {
        return this.overflow(cluster, entry, req);
      }
    }
    const answer = entry.scheduler.submit(req);
    ADMIT.since(t0);
    return answer;
  }

  private async overflow(cluster: ClusterLink, entry: ModelEntry, req: InferRequest): Promise<InferResult> {
    const started = Date.now();
    let target;
    try {
      target = await cluster.overflow!(req.model, entry.spec.max_replicas);
    } catch (err) {
      this.log.warn({ model: req.model, err }, 'cannot read the shared copy budget: serving here');
    }
    if (target) return cluster.forwarder.forward(target, req, this.deadlineOf(entry, req, started));
    return entry.scheduler.submit(req);
  }

  /**
   * Requests of one sequence that wait for the directory (or a forward) keep
   * their arrival order: each is handed on (submitted here, or forwarded and
   * answered) only after the one before it. Pipelined requests (a video upload,
   * a gRPC stream) would otherwise overtake a START still asking Redis.
   */
  private inLane(key: string, cluster: ClusterLink, entry: ModelEntry, scheduler: SequenceScheduler, req: InferRequest): Promise<InferResult> {
    const prev = this.lanes.get(key);
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    this.lanes.set(key, gate);
    // Handed on: the next request may go; with none behind, the lane closes (held requests take the direct path again).
    const handedOn = () => {
      open();
      if (this.lanes.get(key) === gate) this.lanes.delete(key);
    };
    return (async () => {
      try {
        if (prev) await prev;
        if (scheduler.holds(req.sequence!.id) && this.entries.get(req.model) === entry) {
          const answer = scheduler.submit(req);
          handedOn();
          return await answer;
        }
        return await this.routeSequence(cluster, entry, scheduler, req, handedOn);
      } finally {
        handedOn();
      }
    })();
  }

  /**
   * A sequence request for a sequence this broker does not hold: a START claims
   * it in the shared directory (served here) unless a live broker owns it; a
   * later request goes to its owner. A forwarded request is served here in any
   * case (one hop at most): its START still claims, so the directory stays true.
   */
  private async routeSequence(cluster: ClusterLink, entry: ModelEntry, scheduler: SequenceScheduler, req: InferRequest, handedOn: () => void): Promise<InferResult> {
    const { model } = req;
    const id = req.sequence!.id;
    const started = Date.now();
    let place: SequencePlace;
    try {
      place = req.sequence!.start ? await cluster.sequences.claim(model, id) : await cluster.sequences.locate(model, id);
    } catch (err) {
      // Redis cannot be asked: serve here (as one broker would); other brokers cannot find this sequence meanwhile.
      this.log.warn({ model, sequence: id, err }, 'the sequence directory cannot be reached: serving the request here');
      place = { kind: 'none' };
    }
    if (place.kind === 'remote') {
      if (req.forwardedBy !== undefined) {
        // The sender thought this broker owns it; the directory says another does (it moved meanwhile): no second hop.
        throw new BrokerError('UNAVAILABLE', `sequence '${id}' of model '${model}' is owned by broker '${place.broker}', not by this broker '${cluster.sequences.self}' (forwarded by '${req.forwardedBy}'); retry`);
      }
      return cluster.forwarder.forward(place, req, this.deadlineOf(entry, req, started));
    }
    if (place.kind === 'ended' && !req.sequence!.start) throw sequenceNotActive(model, id, place.reason);
    if (this.entries.get(model) !== entry) {
      // The model changed while the directory answered: route it afresh (after opening this lane, or it would wait on itself).
      handedOn();
      return this.infer(req);
    }
    const answer = scheduler.submit(req);
    handedOn();
    return answer;
  }

  models(): { name: string; version: string }[] {
    return [...this.entries.values()].map((e) => ({ name: e.spec.name, version: e.spec.version }));
  }

  describe(model: string, version?: string): ModelDescription {
    const e = this.entry(model, version);
    const s = e.spec;
    return {
      name: s.name, version: s.version, stateless: s.stateless, batchSize: s.batch_size, maxWaitMs: s.max_wait_ms,
      timeoutMs: s.timeout_ms, queueCapacity: s.queue_capacity, sequenceIdleMs: s.sequence_idle_ms,
      sequenceBacklog: s.sequence_backlog, maxSequences: s.max_sequences, runOnGpu: s.run_on_gpu, maxReplicas: s.max_replicas,
      metadata: this.knownMetadata(e), readiness: this.readinessOf(e), labels: s.labels,
    };
  }

  metadata(model: string, version?: string): ModelMetadata {
    const e = this.entry(model, version);
    const meta = this.knownMetadata(e);
    if (!meta) throw this.noMetadata(e);
    return meta;
  }

  async awaitMetadata(model: string, version?: string, signal?: AbortSignal): Promise<ModelMetadata> {
    const e = this.entry(model, version);
    const known = this.knownMetadata(e);
    if (known) return known;
    const r = e.copies.readiness();
    if (REFUSING.has(r.phase) || !this.accepting) throw this.noMetadata(e);
    const timeoutMs = e.spec.timeout_ms;
    return new Promise<ModelMetadata>((resolve, reject) => {
      const done = (err?: BrokerError) => {
        clearTimeout(timer);
        e.copies.off('metadata', onMeta);
        e.copies.off('phase', onPhase);
        signal?.removeEventListener('abort', onAbort);
        if (err) reject(err);
        else resolve(e.copies.metadata!);
      };
      const onMeta = () => done();
      const onPhase = (p: ModelReadiness) => {
        if (REFUSING.has(p.phase)) done(new BrokerError('UNAVAILABLE', `model '${model}' is not ready: ${p.reason ?? p.phase}`, { kind: 'model-unavailable' }));
      };
      const onAbort = () => done(new BrokerError('CANCELLED', 'the client cancelled the request'));
      const timer = setTimeout(() => done(new BrokerError('DEADLINE_EXCEEDED',
        `model '${model}' did not become ready within ${timeoutMs} ms (timeout_ms): its input metadata is needed to decode the body`)), timeoutMs);
      e.copies.on('metadata', onMeta);
      e.copies.on('phase', onPhase);
      signal?.addEventListener('abort', onAbort, { once: true });
      if (!e.copies.requestCopy('a request needs the model\'s input metadata to decode its body and the model never ran')) {
        done(this.noMetadata(e));
      }
    });
  }

  modelReady(model: string, version?: string): ModelReadiness {
    return this.readinessOf(this.entry(model, version));
  }

  ready(): { ready: boolean; reason?: string } {
    if (!this.accepting) return { ready: false, reason: 'the broker is shutting down' };
    const waiting = [...this.entries.values()]
      .filter((e) => e.spec.min_replicas > 0 && !e.copies.readiness().ready)
      .map((e) => e.spec.name);
    return waiting.length === 0 ? { ready: true } : { ready: false, reason: `models not ready: ${waiting.join(', ')}` };
  }

  stats(model?: string, version?: string): ModelStatistics[] {
    if (model !== undefined) {
      const e = this.entry(model, version);
      return [e.scheduler.stats.snapshot(model, e.spec.version)];
    }
    return [...this.entries.values()].map((e) => e.scheduler.stats.snapshot(e.spec.name, e.spec.version));
  }

  sequences(model: string, version?: string): SequenceStatus {
    const s = this.entry(model, version).scheduler;
    if (!(s instanceof SequenceScheduler)) throw new BrokerError('INVALID_ARGUMENT', `model '${model}' is stateless: it has no sequences`);
    return s.status();
  }

  repositoryIndex(): RepositoryEntry[] {
    return [...this.entries.values()].map((e) => {
      const r = this.readinessOf(e);
      const state = r.ready ? 'READY' : r.phase === 'starting' && (r.starting ?? 0) > 0 ? 'LOADING' : 'UNAVAILABLE';
      return { name: e.spec.name, version: e.spec.version, state, reason: r.ready ? '' : `${r.phase}: ${r.reason ?? ''}` };
    });
  }

  async loadModel(model: string): Promise<void> {
    await this.entry(model).copies.load();
  }

  async unloadModel(model: string): Promise<void> {
    await this.entry(model).copies.unload();
  }

  async configureModel(model: string, makePatch: () => Record<string, unknown>, credential?: string): Promise<void> {
    const admin = this.opts.admin;
    if (!admin) throw new BrokerError('INVALID_ARGUMENT', 'this broker takes no model config overrides (no registry writer configured)');
    this.entry(model);
    admin.authorize(credential);
    const patch = makePatch();
    if (Object.keys(patch).length === 0) return;
    this.log.info({ model, patch }, 'model config override');
    await admin.patch(model, patch);
  }

  /** Queue depth, running requests and ready copies per model, for metrics and the job runner's share of capacity. */
  load(): { model: string; queued: number; running: number; copies: number }[] {
    return [...this.entries.values()].map((e) => ({ model: e.spec.name, queued: e.scheduler.depth, running: e.scheduler.inFlight, copies: e.copies.ready().length }));
  }

  /**
   * Graceful stop: refuse new work, let queued and running requests finish
   * within graceMs, then fail whatever is left (closing the copies settles
   * batches still running).
   */
  async close(graceMs: number): Promise<void> {
    this.accepting = false;
    this.opts.registry.off('change', this.onChange);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((r) => (timer = setTimeout(r, graceMs)));
    await Promise.race([Promise.all([...this.entries.values()].map((e) => e.scheduler.idle())), timeout]);
    clearTimeout(timer);
    for (const e of this.entries.values()) {
      e.copies.off('metadata', e.onMetadata);
      e.scheduler.close(new BrokerError('UNAVAILABLE', 'the broker is shutting down', { kind: 'shutting-down' }));
    }
  }

  private entry(model: string, version?: string): ModelEntry {
    const e = this.entries.get(model);
    if (!e) throw new BrokerError('NOT_FOUND', `unknown model '${model}'`);
    if (version !== undefined && version !== '' && version !== e.spec.version) {
      throw new BrokerError('NOT_FOUND', `model '${model}' has no version '${version}' (serving version '${e.spec.version}')`);
    }
    return e;
  }

  /** Epoch ms when a request admitted at `from` expires (its timeout, else the model's timeout_ms). */
  private deadlineOf(e: ModelEntry, req: InferRequest, from: number): number {
    const timeoutMs = req.timeoutMs ?? e.spec.timeout_ms;
    return timeoutMs > 0 && Number.isFinite(timeoutMs) ? from + timeoutMs : Infinity;
  }

  private readinessOf(e: ModelEntry): ModelReadiness {
    if (!this.accepting) return { ready: false, phase: 'draining', reason: 'the broker is shutting down' };
    return e.copies.readiness();
  }

  /** A running copy's metadata, else the one kept from the last READY of the same version. */
  private knownMetadata(e: ModelEntry): ModelMetadata | undefined {
    return e.copies.metadata ?? (e.saved && e.saved.version === e.spec.version ? e.saved.metadata : undefined);
  }

  private noMetadata(e: ModelEntry): BrokerError {
    const r = e.copies.readiness();
    const name = e.spec.name;
    const why = REFUSING.has(r.phase) || r.phase === 'starting'
      ? `it is ${r.phase}: ${r.reason ?? ''}`
      : `it has never been ready, so its inputs and outputs are not known yet (${r.phase}${r.reason ? `: ${r.reason}` : ''}); an inference request starts a copy`;
    return new BrokerError('UNAVAILABLE', `model '${name}' has not reported its metadata: ${why}`, { kind: 'model-unavailable' });
  }

  private apply(e: RegistryEvent): void {
    if (e.type === 'delete') return this.remove(e.name);
    const existing = this.entries.get(e.name);
    const copies = this.opts.copies.forModel(e.spec);
    const config = schedulerConfig(e.spec, this.opts.backgroundIdleMs);
    if (existing) {
      const kindChanged = (existing.scheduler instanceof SequenceScheduler) === e.spec.stateless;
      existing.spec = e.spec;
      if (!kindChanged && existing.copies === copies) {
        existing.scheduler.configure(config);
        return;
      }
      // It changed between stateless and stateful (or its copies were replaced): a new scheduler; what was queued fails.
      existing.scheduler.close(new BrokerError('UNAVAILABLE', `model '${e.name}' changed between stateless and stateful`));
      if (existing.copies !== copies) {
        existing.copies.off('metadata', existing.onMetadata);
        copies.on('metadata', existing.onMetadata);
        existing.copies = copies;
      }
      existing.scheduler = this.scheduler(e.spec, copies);
      return;
    }
    const entry: ModelEntry = {
      spec: e.spec, copies, scheduler: this.scheduler(e.spec, copies), loaded: Promise.resolve(),
      onMetadata: (metadata) => this.keep(entry, metadata),
    };
    copies.on('metadata', entry.onMetadata);
    entry.loaded = this.opts.registry.lastMetadata(e.name).then(
      (saved) => void (entry.saved ??= saved),
      (err: unknown) => this.log.warn({ model: e.name, err }, 'cannot read the metadata kept from the last READY'),
    );
    this.entries.set(e.name, entry);
  }

  private scheduler(spec: ModelSpec, copies: ModelCopies): Scheduler {
    const log = this.opts.logger.child({ component: 'scheduler', model: spec.name });
    const config = schedulerConfig(spec, this.opts.backgroundIdleMs);
    if (spec.stateless) return new ModelScheduler(spec.name, config, copies, log, this.opts.observer);
    const s = new SequenceScheduler(spec.name, config, copies, log, this.opts.observer);
    const cluster = this.opts.cluster;
    if (cluster) s.onRemoved = (id, why) => cluster.sequences.release(spec.name, id, why);
    return s;
  }

  /** A copy reported READY metadata: kept in the registry so the model can be described while at zero. */
  private keep(entry: ModelEntry, metadata: ModelMetadata): void {
    const saved: SavedMetadata = { version: entry.spec.version, metadata, savedAt: Date.now() };
    entry.saved = saved;
    this.opts.registry.saveMetadata(entry.spec.name, saved).catch((err: unknown) =>
      this.log.warn({ model: entry.spec.name, err }, 'cannot keep the model metadata in the registry'));
  }

  private remove(name: string): void {
    const e = this.entries.get(name);
    if (!e) return;
    this.entries.delete(name);
    e.copies.off('metadata', e.onMetadata);
    e.scheduler.close(new BrokerError('NOT_FOUND', `model '${name}' was removed`));
    e.copies.close('model removed').catch((err: unknown) => this.log.error({ model: name, err }, 'stopping the copies of a removed model failed'));
  }
}

function schedulerConfig(spec: ModelSpec, backgroundIdleMs: number | undefined): SequenceConfig {
  return {
    version: spec.version,
    backgroundIdleMs,
    batchSize: spec.batch_size,
    maxWaitMs: spec.max_wait_ms,
    queueCapacity: spec.queue_capacity,
    timeoutMs: spec.timeout_ms,
    maxSequences: spec.max_sequences,
    idleMs: spec.sequence_idle_ms,
    backlog: spec.sequence_backlog,
    scaleUp: spec.sequence_scale_up,
  };
}
