import type { Logger } from 'pino';
import type { ModelRegistry, ModelSpec, RegistryEvent } from './model-spec';
import { BrokerError } from './errors';
import type { CopyPool, ModelControl } from './pool';
import { ModelScheduler, type SchedulerObserver } from './model-scheduler';
import { SequenceScheduler, type SequenceConfig, type SequenceStatus } from './sequence-scheduler';
import type { ModelStatistics } from './stats';
import type { InferRequest, InferResult, ModelMetadata, ModelReadiness } from './types';
import { checkLimits, DEFAULT_LIMITS, type RequestLimits } from './validate';

/** One row of the repository index (KServe/Triton model repository extension). */
export interface RepositoryEntry {
  name: string;
  version: string;
  state: 'READY' | 'LOADING' | 'UNAVAILABLE' | 'UNLOADED';
  reason: string;
}

/** What every bridge sees of the broker, and nothing more. */
export interface BrokerApi {
  infer(req: InferRequest): Promise<InferResult>;
  /** Names and versions of every registered model. */
  models(): { name: string; version: string }[];
  spec(model: string, version?: string): ModelSpec;
  metadata(model: string, version?: string): ModelMetadata;
  modelReady(model: string, version?: string): ModelReadiness;
  /** The server is ready when it accepts work and every model with min_replicas > 0 has a ready copy. */
  ready(): ModelReadiness;
  stats(model?: string, version?: string): ModelStatistics[];
  /** Slots and sequences of a stateful model (INVALID_ARGUMENT for a stateless one). */
  sequences(model: string, version?: string): SequenceStatus;
  repositoryIndex(): RepositoryEntry[];
  /** Starts a model's copies (repository extension); resolves when one is ready. */
  loadModel(model: string): Promise<void>;
  /** Stops a model's copies; it stays registered and answers 503 until loaded. */
  unloadModel(model: string): Promise<void>;
}

export interface BrokerOptions {
  registry: ModelRegistry;
  pool: CopyPool;
  logger: Logger;
  observer?: SchedulerObserver;
  control?: ModelControl;
  limits?: RequestLimits;
}

/** Routes requests to one ModelScheduler per registered model and keeps them in step with the registry. */
type Scheduler = ModelScheduler | SequenceScheduler;

export class Broker implements BrokerApi {
  private readonly schedulers = new Map<string, Scheduler>();
  /** Specs as of the last registry event: read per request, so kept here rather than copied from the registry. */
  private readonly specs = new Map<string, ModelSpec>();
  private accepting = true;
  private readonly onChange = (e: RegistryEvent) => this.apply(e);
  private readonly onCapacity = (model: string) => {
    const s = this.schedulers.get(model);
    if (s instanceof SequenceScheduler) s.capacity();
    else s?.pump();
  };
  private readonly onCopyGone = (model: string, copyId: string, reason: string) => {
    const s = this.schedulers.get(model);
    if (s instanceof SequenceScheduler) s.copyGone(copyId, reason);
  };

  constructor(private readonly opts: BrokerOptions) {
    for (const spec of opts.registry.list()) this.apply({ type: 'put', name: spec.name, spec });
    opts.registry.on('change', this.onChange);
    opts.pool.on('capacity', this.onCapacity);
    opts.pool.on('copy-gone', this.onCopyGone);
  }

  infer(req: InferRequest): Promise<InferResult> {
    if (!this.accepting) return Promise.reject(new BrokerError('UNAVAILABLE', 'the broker is shutting down'));
    let scheduler: Scheduler;
    try {
      const spec = this.spec(req.model, req.version);
      if (spec.stateless && req.sequence) {
        throw new BrokerError('INVALID_ARGUMENT', `model '${req.model}' is stateless: sequence_id, sequence_start and sequence_end are not accepted`);
      }
      checkLimits(req, this.opts.limits ?? DEFAULT_LIMITS);
      scheduler = this.schedulers.get(req.model)!;
      const readiness = this.opts.pool.readiness(req.model);
      // A model whose copies failed (or that has none) answers at once; a starting one queues (cold start).
      if (!readiness.ready && (readiness.state === 'failed' || readiness.state === 'stopped')) {
        throw new BrokerError('UNAVAILABLE', `model '${req.model}' is not ready: ${readiness.reason ?? 'no ready copy'}`);
      }
    } catch (e) {
      return Promise.reject(e);
    }
    return scheduler.submit(req);
  }

  models(): { name: string; version: string }[] {
    return [...this.specs.values()].map((s) => ({ name: s.name, version: s.version }));
  }

  spec(model: string, version?: string): ModelSpec {
    const spec = this.specs.get(model);
    if (!spec) throw new BrokerError('NOT_FOUND', `unknown model '${model}'`);
    if (version !== undefined && version !== '' && version !== spec.version) {
      throw new BrokerError('NOT_FOUND', `model '${model}' has no version '${version}' (serving version '${spec.version}')`);
    }
    return spec;
  }

  metadata(model: string, version?: string): ModelMetadata {
    this.spec(model, version);
    const meta = this.opts.pool.metadata(model);
    if (!meta) {
      const r = this.opts.pool.readiness(model);
      throw new BrokerError('UNAVAILABLE', `model '${model}' has not reported its metadata yet: ${r.reason ?? 'no copy is ready'}`);
    }
    return meta;
  }

  modelReady(model: string, version?: string): ModelReadiness {
    this.spec(model, version);
    if (!this.accepting) return { ready: false, state: 'stopped', reason: 'the broker is shutting down' };
    return this.opts.pool.readiness(model);
  }

  ready(): ModelReadiness {
    if (!this.accepting) return { ready: false, reason: 'the broker is shutting down' };
    const waiting = [...this.specs.values()]
      .filter((s) => s.min_replicas > 0 && !this.opts.pool.readiness(s.name).ready)
      .map((s) => s.name);
    return waiting.length === 0 ? { ready: true } : { ready: false, reason: `models not ready: ${waiting.join(', ')}` };
  }

  stats(model?: string, version?: string): ModelStatistics[] {
    if (model !== undefined) {
      const spec = this.spec(model, version);
      return [this.schedulers.get(model)!.stats.snapshot(model, spec.version)];
    }
    return [...this.schedulers.entries()].map(([name, s]) => s.stats.snapshot(name, this.specs.get(name)?.version ?? ''));
  }

  sequences(model: string, version?: string): SequenceStatus {
    this.spec(model, version);
    const s = this.schedulers.get(model);
    if (!(s instanceof SequenceScheduler)) throw new BrokerError('INVALID_ARGUMENT', `model '${model}' is stateless: it has no sequences`);
    return s.status();
  }

  repositoryIndex(): RepositoryEntry[] {
    return [...this.specs.values()].map((s) => {
      const r = this.opts.pool.readiness(s.name);
      const state = r.ready ? 'READY' : r.state === 'starting' ? 'LOADING' : r.reason === 'unloaded' ? 'UNLOADED' : 'UNAVAILABLE';
      return { name: s.name, version: s.version, state, reason: r.ready ? '' : (r.reason ?? '') };
    });
  }

  async loadModel(model: string): Promise<void> {
    this.spec(model);
    if (!this.opts.control) throw new BrokerError('UNAVAILABLE', 'this broker cannot load models');
    await this.opts.control.load(model);
  }

  async unloadModel(model: string): Promise<void> {
    this.spec(model);
    if (!this.opts.control) throw new BrokerError('UNAVAILABLE', 'this broker cannot unload models');
    await this.opts.control.unload(model);
  }

  /** Queue depth and running requests per model, for metrics and autoscaling. */
  load(): { model: string; queued: number; running: number }[] {
    return [...this.schedulers.entries()].map(([model, s]) => ({ model, queued: s.depth, running: s.inFlight }));
  }

  /**
   * Graceful stop: refuse new work, fail what is still queued, let running
   * batches finish within graceMs, then fail whatever is left (the pool's
   * close settles those).
   */
  async close(graceMs: number): Promise<void> {
    this.accepting = false;
    this.opts.registry.off('change', this.onChange);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((r) => (timer = setTimeout(r, graceMs)));
    // Queued requests may still be served while the copies run: they get the same grace.
    await Promise.race([Promise.all([...this.schedulers.values()].map((s) => s.idle())), timeout]);
    clearTimeout(timer);
    this.opts.pool.off('capacity', this.onCapacity);
    this.opts.pool.off('copy-gone', this.onCopyGone);
    for (const s of this.schedulers.values()) s.close(new BrokerError('UNAVAILABLE', 'the broker is shutting down'));
  }

  private apply(e: RegistryEvent): void {
    if (e.type === 'delete') {
      this.schedulers.get(e.name)?.close(new BrokerError('NOT_FOUND', `model '${e.name}' was removed`));
      this.schedulers.delete(e.name);
      this.specs.delete(e.name);
      return;
    }
    this.specs.set(e.name, e.spec);
    const config = schedulerConfig(e.spec);
    const existing = this.schedulers.get(e.name);
    const stateful = !e.spec.stateless;
    if (existing && (existing instanceof SequenceScheduler) === stateful) {
      existing.configure(config);
      return;
    }
    // New model, or it changed between stateless and stateful: a new scheduler; what was queued fails.
    existing?.close(new BrokerError('UNAVAILABLE', `model '${e.name}' changed between stateless and stateful`));
    const log = this.opts.logger.child({ model: e.name });
    const { pool, observer } = this.opts;
    this.schedulers.set(e.name, stateful
      ? new SequenceScheduler(e.name, config, pool, log, observer)
      : new ModelScheduler(e.name, config, pool, log, observer));
  }
}

function schedulerConfig(spec: ModelSpec): SequenceConfig {
  return {
    version: spec.version,
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
