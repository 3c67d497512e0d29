/**
 * TaskManager: one ModelController per model (model-controller.ts), and what
 * they share: the runtime, the link, the placement store, the GPU allocator
 * and global caps (placement.ts), the autoscale ticker, adoption of an
 * earlier run's copies (adoption.ts), and views for the admin API. It is the
 * core's CopySource: the Broker asks it for one model's copies on each
 * registry put. It does not subscribe to the registry itself.
 */
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { BrokerError } from '../core/errors';
import type { CopySource } from '../core/model-copies';
import type { ModelSpec, RegistryEvent } from '../core/model-spec';
import type { ModelMetadata, ModelReadiness } from '../core/types';
import { clearLeftovers } from './adoption';
import type { GlobalCaps } from './autoscaler';
import type { ControllerHost, CopyBudget, TaskEvents } from './controller-host';
import { GpuAllocator, type GpuUse } from './gpu-allocator';
import type { LinkServer } from './link-server';
import { ModelController } from './model-controller';
import { MemoryPlacementStore, type PlacementStore } from './placement-store';
import { Placer } from './placement';
import type { Runtime } from './runtime';
import type { CopyInfo, ModelStats, ModelStatus } from './views';

export type { CopyInfo, ModelStats, ModelStatus } from './views';
export type { TaskEvents } from './controller-host';

export interface TaskManagerOptions {
  runtime: Runtime;
  link: LinkServer;
  /** Owner label of this broker's copies; two brokers on one host need different ids. */
  brokerId: string;
  logger: Logger;
  /** Link heartbeat interval (default: the link server's). */
  heartbeatMs?: number;
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
  /** Several brokers on one Redis: copies start only within the shared per-model budget (max_replicas over all brokers). */
  budget?: CopyBudget;
}

export class TaskManager extends EventEmitter<TaskEvents> implements CopySource {
  private readonly controllers = new Map<string, ModelController>();
  private readonly host: ControllerHost;
  private readonly log: Logger;
  readonly gpus: GpuAllocator;
  readonly store: PlacementStore;
  private ticker?: NodeJS.Timeout;
  private started = false;
  private closing = false;
  private starting?: Promise<void>;

  constructor(private readonly opts: TaskManagerOptions) {
    super();
    this.log = opts.logger.child({ component: 'task-manager' });
    this.gpus = new GpuAllocator(opts.gpus ?? []);
    this.store = opts.store ?? new MemoryPlacementStore();
    const placer = new Placer({
      models: () => this.controllers.values(), gpus: this.gpus, caps: opts.caps, log: this.log,
      refused: (model, cap, reason) => this.emit('scale-refused', model, cap, reason),
    });
    this.host = {
      budget: opts.budget,
      runtime: opts.runtime,
      link: opts.link,
      store: this.store,
      gpus: this.gpus,
      placer,
      events: this,
      log: this.log,
      brokerId: opts.brokerId,
      cwd: opts.cwd,
      heartbeatMs: opts.heartbeatMs ?? opts.link.heartbeatMs,
      backoff: { initialMs: opts.backoffInitialMs ?? 500, maxMs: opts.backoffMaxMs ?? 30_000, resetMs: opts.backoffResetMs ?? 60_000 },
      stopGraceMs: opts.stopGraceMs ?? 10_000,
      canStart: () => this.started && !this.closing,
      copyEnded: () => this.kick(),
      closed: (model) => {
        const c = this.controllers.get(model);
        if (c && c.readiness().phase === 'draining') this.controllers.delete(model);
      },
    };
  }

  // ---- CopySource ----

  /** The controller of `spec.name`, created or brought in line with `spec`. */
  forModel(spec: ModelSpec): ModelController {
    let c = this.controllers.get(spec.name);
    if (!c || c.readiness().phase === 'draining') {
      c = new ModelController(spec, this.host);
      this.controllers.set(spec.name, c);
      c.reconcile();
    } else c.update(spec);
    return c;
  }

  /**
   * Adopts the running copies an earlier run of this broker left (placements in
   * the store, same spec), removes the other containers labelled with its id,
   * binds the link, then lets every controller start its copies.
   */
  start(specs: ModelSpec[] = []): Promise<void> {
    this.starting ??= this.doStart(specs);
    return this.starting;
  }

  private async doStart(specs: ModelSpec[]): Promise<void> {
    // First: refuses to start when another live broker holds this broker's socket (same id), before touching any copy.
    await this.opts.link.start();
    for (const { handle, placement, spec } of await clearLeftovers(this.opts.runtime, this.store, this.opts.brokerId, specs, this.log)) {
      const c = this.controllers.get(spec.name) ?? this.forModel(spec);
      c.adopt(handle, placement);
    }
    if (this.closing) return;
    this.started = true;
    for (const c of this.controllers.values()) c.update(c.spec); // adopted copies count toward desired
    this.ticker = setInterval(() => {
      if (this.closing) return;
      for (const c of this.controllers.values()) c.tick();
    }, this.opts.autoscaleIntervalMs ?? 1000);
    this.ticker.unref();
  }

  /** Without a Broker (tests, tools): runs exactly `specs`, stopping the models not in it. */
  async reconcile(specs: ModelSpec[]): Promise<void> {
    for (const spec of specs) this.forModel(spec);
    await this.start(specs);
    const names = new Set(specs.map((s) => s.name));
    await Promise.all([...this.controllers.values()].filter((c) => !names.has(c.model)).map((c) => c.close('model removed')));
  }

  /** Without a Broker (tests, tools): applies one registry event. */
  async applyChange(event: RegistryEvent): Promise<void> {
    if (event.type === 'delete') {
      await this.controllers.get(event.name)?.close('model removed');
      return;
    }
    this.forModel(event.spec);
    await this.start([event.spec]);
  }

  // ---- operator actions and views (by name: the admin API and tests) ----

  /** A model's job backlog (jobs waiting), for its autoscaler; unknown models are ignored. */
  setBacklog(model: string, waiting: number): void {
    if (!this.closing) this.controllers.get(model)?.backlog(waiting);
  }

  controller(model: string): ModelController | undefined {
    return this.controllers.get(model);
  }

  readiness(model: string): ModelReadiness {
    return this.controllers.get(model)?.readiness() ?? { ready: false, phase: 'unloaded', reason: `model ${model} is not managed here` };
  }

  metadata(model: string): ModelMetadata | undefined {
    return this.controllers.get(model)?.metadata;
  }

  /** POST /admin/models/{m}/scale. */
  scale(model: string, replicas: number, by = 'operator'): { from: number; to: number } {
    const c = this.controllers.get(model);
    if (!c) throw new BrokerError('NOT_FOUND', `unknown model '${model}'`);
    return c.scale(replicas, by);
  }

  copies(): CopyInfo[] {
    return [...this.controllers.values()].flatMap((c) => c.copyInfos());
  }

  /** GET /admin/instances: every copy with its container and GPUs, and the GPU table. */
  instances(): { broker: string; gpus: GpuUse[]; instances: (CopyInfo | { model: string; state: 'waiting'; reason: string })[] } {
    const waiting = [...this.controllers.values()]
      .filter((c) => c.waiting)
      .map((c) => ({ model: c.model, state: 'waiting' as const, reason: c.waiting! }));
    return { broker: this.opts.brokerId, gpus: this.gpus.usage(), instances: [...this.copies(), ...waiting] };
  }

  gpuUsage(): GpuUse[] {
    return this.gpus.usage();
  }

  status(model: string): ModelStatus | undefined {
    return this.controllers.get(model)?.status();
  }

  stats(): ModelStats[] {
    return [...this.controllers.values()].map((c) => c.stats());
  }

  /** Models marked unavailable (for metrics). */
  unavailableModels(): string[] {
    return [...this.controllers.values()].filter((c) => c.health.unavailable).map((c) => c.model);
  }

  /** SHUTDOWN to every copy, stops and removes them; every batch in flight settles. Then closes link, runtime and store. */
  async close(graceMs = this.host.stopGraceMs): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    clearInterval(this.ticker);
    await this.starting?.catch(() => undefined);
    await Promise.all([...this.controllers.values()].map((c) => c.close('broker shutting down', graceMs)));
    this.controllers.clear();
    await this.opts.link.close();
    await this.opts.runtime.close();
    await this.store.close();
  }

  /** A copy ended: models waiting for a GPU or a cap may fit now. */
  private kick(): void {
    if (this.closing) return;
    for (const c of this.controllers.values()) if (c.waiting) c.reconcile();
  }
}
