/**
 * The task manager of `--runtime kubernetes`: one KubeModel (a Deployment) per
 * model, the link they share (CURVE over TCP), the autoscale ticker, and the
 * same views and operator actions as TaskManager, so the admin API, metrics
 * and the start table work unchanged. It is the core's CopySource.
 *
 * Garbage collection of the Deployments of a broker that died is behind
 * BrokerLiveness: the broker directory in Redis (live brokers with heartbeats)
 * answers it; without one nothing is collected.
 */
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { BrokerError } from '../../core/errors';
import type { CopySource } from '../../core/model-copies';
import type { ModelSpec } from '../../core/model-spec';
import type { ModelMetadata, ModelReadiness } from '../../core/types';
import type { CopyBudget, TaskEvents } from '../controller-host';
import type { GpuUse } from '../gpu-allocator';
import type { LinkServer } from '../link-server';
import type { CopyInfo, ModelStats, ModelStatus } from '../views';
import { KubeModel, type KubeApi, type KubeModelHost } from './kube-model';
import { ANNOTATIONS, LABELS } from './manifests';

/** Is broker X alive? (the broker directory answers; wired at the merge). */
export interface BrokerLiveness {
  isAlive(brokerId: string): Promise<boolean>;
}

/** What garbage collection lists and removes (KubeDeployments implements it). */
export interface KubeCollector {
  deployments(matchLabels: Record<string, string>): Promise<{ name: string; labels: Record<string, string>; annotations: Record<string, string> }[]>;
  remove(name: string): Promise<boolean>;
  removeSecret(name: string): Promise<boolean>;
}

export interface KubeTaskManagerOptions {
  kube: KubeApi & KubeCollector;
  link: LinkServer;
  brokerId: string;
  namespace: string;
  logger: Logger;
  heartbeatMs?: number;
  stopGraceMs?: number;
  autoscaleIntervalMs?: number;
  /** When set, Deployments of brokers it says are dead are removed (every gcIntervalMs). */
  liveness?: BrokerLiveness;
  gcIntervalMs?: number;
  /** Several brokers on one Redis: max_replicas counts over all of them. */
  budget?: CopyBudget;
}

export class KubeTaskManager extends EventEmitter<TaskEvents> implements CopySource {
  private readonly models = new Map<string, KubeModel>();
  private readonly host: KubeModelHost;
  private readonly log: Logger;
  private ticker?: NodeJS.Timeout;
  private gc?: NodeJS.Timeout;
  private started = false;
  private closing = false;
  private starting?: Promise<void>;

  constructor(private readonly opts: KubeTaskManagerOptions) {
    super();
    this.log = opts.logger.child({ component: 'task-manager', runtime: 'kubernetes' });
    this.host = {
      kube: opts.kube, link: opts.link, brokerId: opts.brokerId, namespace: opts.namespace,
      heartbeatMs: opts.heartbeatMs ?? opts.link.heartbeatMs, stopGraceMs: opts.stopGraceMs ?? 10_000,
      events: this, log: this.log, budget: opts.budget, canStart: () => this.started && !this.closing,
      closed: (model) => {
        const m = this.models.get(model);
        if (m && m.readiness().phase === 'draining') this.models.delete(model);
      },
    };
  }

  forModel(spec: ModelSpec): KubeModel {
    let m = this.models.get(spec.name);
    if (!m || m.readiness().phase === 'draining') {
      m = new KubeModel(spec, this.host);
      this.models.set(spec.name, m);
      if (this.started) void m.start().catch(() => undefined);
    } else m.update(spec);
    return m;
  }

  start(specs: ModelSpec[] = []): Promise<void> {
    this.starting ??= (async () => {
      await this.opts.link.start();
      for (const s of specs) if (!this.models.has(s.name)) this.forModel(s);
      this.started = true;
      await Promise.all([...this.models.values()].map((m) => m.start().catch(() => undefined)));
      this.ticker = setInterval(() => {
        if (!this.closing) for (const m of this.models.values()) m.tick();
      }, this.opts.autoscaleIntervalMs ?? 1000);
      this.ticker.unref();
      if (this.opts.liveness) {
        this.gc = setInterval(() => void this.collect().catch((err: unknown) => this.log.warn({ err }, 'garbage collection failed')), this.opts.gcIntervalMs ?? 30_000);
        this.gc.unref();
      }
    })();
    return this.starting;
  }

  /**
   * Removes the Deployments (and link Secrets) of brokers the liveness source
   * says are dead. Returns the names removed.
   */
  async collect(): Promise<string[]> {
    const liveness = this.opts.liveness;
    if (!liveness) return [];
    const removed: string[] = [];
    for (const d of await this.opts.kube.deployments({ [LABELS.managedBy]: 'tensorbroker', [LABELS.name]: 'tensorbroker-model' })) {
      const owner = d.annotations[ANNOTATIONS.owner] ?? d.labels[LABELS.owner];
      if (!owner || owner === this.opts.brokerId || (await liveness.isAlive(owner))) continue;
      this.log.info({ deployment: d.name, owner }, 'removing the Deployment of a dead broker');
      await this.opts.kube.remove(d.name);
      await this.opts.kube.removeSecret(d.name).catch(() => false);
      removed.push(d.name);
    }
    return removed;
  }

  /** Jobs waiting per model (jobs/backlog.ts), for the autoscaler. */
  setBacklog(model: string, waiting: number): void {
    this.models.get(model)?.backlog(waiting);
  }

  controller(model: string): KubeModel | undefined {
    return this.models.get(model);
  }

  readiness(model: string): ModelReadiness {
    return this.models.get(model)?.readiness() ?? { ready: false, phase: 'unloaded', reason: `model ${model} is not managed here` };
  }

  metadata(model: string): ModelMetadata | undefined {
    return this.models.get(model)?.metadata;
  }

  scale(model: string, replicas: number, by = 'operator'): { from: number; to: number } {
    const m = this.models.get(model);
    if (!m) throw new BrokerError('NOT_FOUND', `unknown model '${model}'`);
    return m.scale(replicas, by);
  }

  copies(): CopyInfo[] {
    return [...this.models.values()].flatMap((m) => m.copyInfos());
  }

  instances(): { broker: string; gpus: GpuUse[]; instances: CopyInfo[] } {
    return { broker: this.opts.brokerId, gpus: [], instances: this.copies() };
  }

  /** Kubernetes places GPUs (nvidia.com/gpu requests): the broker keeps no GPU table. */
  gpuUsage(): GpuUse[] {
    return [];
  }

  status(model: string): ModelStatus | undefined {
    return this.models.get(model)?.status();
  }

  stats(): ModelStats[] {
    return [...this.models.values()].map((m) => {
      const st = m.status();
      const copies = { starting: 0, ready: 0, draining: 0, failed: 0, stopped: 0 };
      for (const c of st.copies) copies[c.state === 'draining' ? 'draining' : c.state === 'ready' || c.state === 'busy' ? 'ready' : c.state === 'failed' ? 'failed' : 'starting']++;
      return { model: m.model, copies, inFlight: st.copies.reduce((n, c) => n + c.inFlight, 0), restarts: st.restarts, ready: st.readiness.ready, reason: st.readiness.reason };
    });
  }

  unavailableModels(): string[] {
    return [...this.models.values()].filter((m) => m.readiness().phase === 'failed').map((m) => m.model);
  }

  /**
   * Stops serving: every model's Deployment is removed (its pods drain on
   * SIGTERM), then the link closes. A broker's copies do not outlive it.
   */
  async close(_graceMs?: number): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    clearInterval(this.ticker);
    clearInterval(this.gc);
    await this.starting?.catch(() => undefined);
    await Promise.all([...this.models.values()].map((m) => m.close('broker shutting down')));
    this.models.clear();
    await this.opts.link.close();
  }
}
