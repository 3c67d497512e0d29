/**
 * KubeModel: one model's copies as the pods of one Deployment per model and
 * broker (`--runtime kubernetes`). It implements the core's ModelCopies
 * directly instead of being a Runtime under ModelController: a Deployment owns
 * its pods (it names them, replaces deleted ones, rolls them on a template
 * change), so the model's scale is the Deployment's `replicas`, written through
 * /scale, and each pod the ReplicaSet creates is a copy. A per-copy Runtime
 * (start one, stop that one) would fight the ReplicaSet over which pods exist.
 *
 * A copy serves only after its READY on the link (CURVE over TCP, its pod name
 * as routing id, the Deployment's secret); the pod's phase only explains why
 * a copy is not there: Unschedulable, ImagePullBackOff, CrashLoopBackOff and
 * OOMKilled show in the model's readiness reason in Kubernetes' words.
 */
import { chooseCopy } from '../copy-choice';
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import * as zmq from 'zeromq';
import type { Logger } from 'pino';
import { BrokerError } from '../../core/errors';
import type { ModelCopies, ModelCopiesEvents, ModelCopy } from '../../core/model-copies';
import type { ModelSpec } from '../../core/model-spec';
import type { ModelMetadata, ModelPhase, ModelReadiness } from '../../core/types';
import { decideScale, type ScaleInput } from '../autoscaler';
import type { CopyBudget, TaskEvents } from '../controller-host';
import { CopyConnection } from '../copy-connection';
import { batchTimeoutMs } from '../health';
import type { LinkServer } from '../link-server';
import { fingerprint } from '../model-state';
import type { CopyInfo, ModelStatus } from '../views';
import type { CopyPod } from './kube-deployments';
import { LABELS, buildModelDeployment, deploymentName, selectorLabels, type KubeDeployment, type KubeModelSpec } from './manifests';
import { labelValue } from './names';

/** The Kubernetes calls a KubeModel makes (KubeDeployments implements them). */
export interface KubeApi {
  ensure(d: KubeDeployment): Promise<'created' | 'updated'>;
  scale(name: string, replicas: number): Promise<void>;
  replicas(name: string): Promise<number>;
  watchPods(matchLabels: Record<string, string>, onPod: (change: 'add' | 'update' | 'delete', pod: CopyPod) => void, onError: (err: unknown) => void): Promise<() => Promise<void>>;
  markForRemoval(pod: string): Promise<void>;
  deletePod(pod: string): Promise<boolean>;
  remove(name: string): Promise<boolean>;
  readSecret(name: string): Promise<Record<string, string> | undefined>;
  createSecret(name: string, data: Record<string, string>, labels: Record<string, string>): Promise<void>;
  removeSecret(name: string): Promise<boolean>;
}

export interface KubeModelHost {
  readonly kube: KubeApi;
  readonly link: LinkServer;
  readonly brokerId: string;
  readonly namespace: string;
  readonly heartbeatMs: number;
  readonly stopGraceMs: number;
  readonly events: EventEmitter<TaskEvents>;
  readonly log: Logger;
  /** Several brokers on one Redis: the shared copy budget (README "Several brokers"); one place per replica. */
  readonly budget?: CopyBudget;
  /** False until the link is bound. */
  canStart(): boolean;
  closed(model: string): void;
}

interface Copy {
  pod: string;
  conn: CopyConnection;
  fingerprint: string;
  restarts: number;
  startedAt: number;
  readyAt?: number;
  problem?: string;
  stuck?: boolean;
  stopping?: boolean;
  gone?: boolean;
  /** When its container was first seen running (startup_timeout_ms counts from here). */
  runningSince?: number;
  startupTimer?: NodeJS.Timeout;
}

export class KubeModel extends EventEmitter<ModelCopiesEvents> implements ModelCopies {
  readonly model: string;
  spec: ModelSpec;
  metadata?: ModelMetadata;
  /** The Deployment's replicas as this broker last set them. */
  desired: number;
  readonly name: string;
  private readonly copies = new Map<string, Copy>();
  private fp: string;
  private lastDemand = { queued: 0, running: 0 };
  private claiming = false;
  /** Jobs waiting for this model (jobs/backlog.ts): counted by the autoscaler like queued requests. */
  private jobBacklog = 0;
  private lastScaleUpAt = 0;
  private lastScaleDownAt = 0;
  lastDecision?: string;
  private unloaded = false;
  private closing = false;
  private closed?: Promise<void>;
  /** The last failed API call, for the readiness reason. */
  private apiError?: string;
  private writes: Promise<unknown> = Promise.resolve();
  private started?: Promise<void>;
  private stopWatch?: () => Promise<void>;
  private credentials?: { secret: string; curvePublicKey: string };
  private withdrawKey?: () => void;
  private phaseSeen?: string;
  private readonly log: Logger;

  constructor(spec: ModelSpec, private readonly host: KubeModelHost) {
    super();
    this.model = spec.name;
    this.spec = spec;
    this.fp = fingerprint(spec);
    this.desired = spec.min_replicas;
    this.name = deploymentName(spec.name, host.brokerId);
    this.log = host.log.child({ model: spec.name, deployment: this.name });
  }

  // ---- ModelCopies ----

  available(): ModelCopy | undefined {
    return chooseCopy(this.copies.values(), this.fp);
  }

  ready(): ModelCopy[] {
    return [...this.copies.values()].filter((c) => !c.stopping && c.conn.state === 'ready').map((c) => c.conn);
  }

  requestCopy(reason: string): boolean {
    if (this.closing || this.unloaded) return false;
    if (this.desired > this.serving().length) return true; // one is on its way
    if (this.desired >= this.spec.max_replicas) return false;
    this.setReplicas(this.desired + 1, 'up', `asked: ${reason}`);
    return true;
  }

  /** The model's job backlog, as on one box (ModelController.backlog): a backlog at zero replicas starts one. */
  backlog(waiting: number): void {
    this.jobBacklog = Math.max(0, waiting);
    if (waiting > 0 && this.desired === 0 && !this.closing && !this.unloaded && this.spec.max_replicas > 0) {
      this.setReplicas(1, 'up', `cold start: ${waiting} job(s) waiting and the model has no copy`);
    }
  }

  demand(queued: number, running: number): void {
    this.lastDemand = { queued, running };
    if (queued > 0 && this.desired === 0 && !this.closing && !this.unloaded && this.spec.max_replicas > 0) {
      this.setReplicas(1, 'up', `cold start: ${queued} request(s) queued and the model has no copy`);
    }
  }

  readiness(): ModelReadiness {
    const out = (phase: ModelPhase, reason?: string): ModelReadiness => {
      const r: ModelReadiness = { ready: phase === 'ready' || phase === 'degraded', phase };
      const starting = Math.max(0, this.desired - this.serving().length);
      if (starting > 0 && phase !== 'at-zero') r.starting = starting;
      if (reason !== undefined) r.reason = reason;
      return r;
    };
    if (this.closing) return out('draining', 'the model is being removed or the broker stops');
    if (this.unloaded) return out('unloaded', 'unloaded through the repository API; load it to serve again');
    const serving = this.serving().length;
    const problems = this.problems();
    const why = problems.length > 0 ? problems.join('; ') : this.apiError;
    if (serving > 0) return serving < this.desired && why ? out('degraded', `${serving} of ${this.desired} copies serve; ${why}`) : out('ready');
    if (this.desired === 0) return out('at-zero', 'scaled to zero (min_replicas 0): the next request starts a copy');
    // A copy Kubernetes cannot start without help (image, crash loop, OOM) fails the model at once; Unschedulable waits for room.
    // One OOM kill is a restart (the kubelet starts the container again at once); repeated ones are stuck.
    const stuck = [...this.copies.values()].filter((c) => c.stuck && c.problem && !/^Unschedulable/.test(c.problem) && !(/^OOMKilled/.test(c.problem) && c.restarts < 2));
    if (stuck.length > 0 && stuck.length >= this.live().length) return out('failed', why);
    if (why) return out('starting', why);
    return out('starting', this.copies.size > 0 ? 'a copy is starting: waiting for its READY on the link' : 'waiting for the Deployment\'s pods');
  }

  async load(): Promise<void> {
    if (this.closing) throw new BrokerError('UNAVAILABLE', `model '${this.model}' is being removed`, { kind: 'model-unavailable' });
    this.unloaded = false;
    this.setReplicas(Math.max(this.desired, this.spec.min_replicas, 1), 'up', 'repository load');
    if (this.readiness().ready) return;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => done(new BrokerError('UNAVAILABLE', `model '${this.model}' did not become ready within ${this.spec.startup_timeout_ms} ms: ${this.readiness().reason ?? ''}`)), this.spec.startup_timeout_ms + 1000);
      const onPhase = (p: ModelReadiness) => {
        if (p.ready) done();
        else if (p.phase === 'failed' || p.phase === 'draining' || p.phase === 'unloaded') done(new BrokerError('UNAVAILABLE', `model '${this.model}' failed to load: ${p.reason ?? p.phase}`, { kind: 'model-unavailable' }));
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

  async unload(): Promise<void> {
    this.unloaded = true;
    this.log.info('model unloaded: scaling its Deployment to zero');
    for (const c of this.copies.values()) this.drain(c, 'model unloaded');
    this.setReplicas(0, 'down', 'model unloaded');
    this.notePhase();
    await this.writes;
  }

  close(reason: string): Promise<void> {
    this.closed ??= (async () => {
      this.closing = true;
      this.log.info({ reason }, 'removing the model\'s Deployment');
      for (const c of this.copies.values()) this.drain(c, reason);
      this.notePhase();
      await this.started?.catch(() => undefined);
      await this.writes.catch(() => undefined);
      await this.stopWatch?.().catch(() => undefined);
      // Removing the Deployment removes its pods; each copy gets SIGTERM and drains.
      await this.host.kube.remove(this.name).catch((err: unknown) => this.log.warn({ err }, 'cannot remove the Deployment'));
      await this.host.kube.removeSecret(this.name).catch((err: unknown) => this.log.warn({ err }, 'cannot remove the link Secret'));
      for (const c of [...this.copies.values()]) this.forget(c, reason);
      if (this.host.budget) for (let i = 0; i < this.desired; i++) this.host.budget.release(this.model, `${this.name}#${i}`);
      this.withdrawKey?.();
      this.host.closed(this.model);
    })();
    return this.closed;
  }

  // ---- the task manager's side ----

  /** Creates (or takes over) the Secret and the Deployment, and follows the pods. Idempotent. */
  start(): Promise<void> {
    this.started ??= this.doStart().catch((err: unknown) => {
      this.apiError = `kubernetes API: ${(err as Error).message}`;
      this.log.error({ err }, 'cannot set up the model\'s Deployment');
      this.started = undefined;
      this.notePhase();
      throw err;
    });
    return this.started;
  }

  /** A registry put: a new fingerprint changes the template (Kubernetes rolls the pods); bounds follow the spec. */
  update(spec: ModelSpec): void {
    const changed = fingerprint(spec) !== this.fp;
    this.spec = spec;
    this.fp = fingerprint(spec);
    const within = Math.min(spec.max_replicas, Math.max(spec.min_replicas, this.desired));
    if (this.started && changed) {
      this.log.info({ version: spec.version, image: spec.image }, 'model spec changed: updating the Deployment\'s template (Kubernetes rolls its pods)');
      this.write(() => this.host.kube.ensure(this.deployment(within)));
    }
    if (within !== this.desired) this.setReplicas(within, within > this.desired ? 'up' : 'down', 'spec bounds changed');
    for (const c of this.copies.values()) c.conn.setBatchSize(spec.batch_size);
    this.notePhase();
  }

  /** One autoscaler period: the same rules as on one box (autoscaler.ts), acting on the Deployment's replicas. */
  tick(now = Date.now()): void {
    if (this.closing || this.unloaded || !this.started) return;
    const serving = this.serving();
    const input: ScaleInput = {
      model: this.model, now, queued: this.lastDemand.queued + this.jobBacklog, running: this.lastDemand.running,
      ready: serving.length, starting: Math.max(0, this.desired - serving.length),
      minReplicas: this.spec.min_replicas, maxReplicas: this.spec.max_replicas, queuePerCopy: this.spec.scale_up_queue_per_copy,
      upCooldownMs: this.spec.scale_up_cooldown_ms, downCooldownMs: this.spec.scale_down_cooldown_ms, idleTtlMs: this.spec.idle_ttl_ms,
      lastScaleUpAt: this.lastScaleUpAt, lastScaleDownAt: this.lastScaleDownAt,
      idle: serving.filter((c) => c.conn.inFlight === 0 && c.conn.sequences.size === 0).map((c) => ({ copyId: c.pod, idleSinceMs: now - c.conn.lastActiveAt })),
    };
    const d = decideScale(input);
    if (d.action === 'up') this.setReplicas(Math.min(this.spec.max_replicas, this.desired + d.count), 'up', d.reason, input);
    else if (d.action === 'down') {
      const c = this.copies.get(d.copyId);
      if (c) this.removeCopy(c, d.reason, input);
    } else if (d.reason !== this.lastDecision) {
      this.log.debug({ decision: 'none', reason: d.reason, ...this.lastDemand }, 'scaling decision');
      this.lastDecision = d.reason;
    }
  }

  /** POST /admin/models/{m}/scale. */
  scale(replicas: number, by: string): { from: number; to: number } {
    const { min_replicas: min, max_replicas: max } = this.spec;
    if (!Number.isInteger(replicas) || replicas < min || replicas > max) {
      throw new BrokerError('INVALID_ARGUMENT', `replicas must be an integer from min_replicas (${min}) to max_replicas (${max}), got ${replicas}`);
    }
    const from = this.desired;
    this.unloaded = false;
    this.lastScaleUpAt = this.lastScaleDownAt = Date.now();
    if (replicas < from) {
      // The copies that go are chosen here (least loaded, idle longest), not left to the ReplicaSet.
      const live = this.live().sort((a, b) => a.conn.inFlight - b.conn.inFlight || a.conn.lastActiveAt - b.conn.lastActiveAt);
      for (const c of live.slice(0, Math.max(0, live.length - replicas))) {
        this.drain(c, `scaled down: manual (${by})`);
        this.write(() => this.host.kube.markForRemoval(c.pod));
      }
    }
    this.setReplicas(replicas, replicas > from ? 'up' : replicas < from ? 'down' : 'none', `manual (${by})`);
    return { from, to: replicas };
  }

  status(): ModelStatus {
    return {
      model: this.model, readiness: this.readiness(), desired: this.desired, minReplicas: this.spec.min_replicas, maxReplicas: this.spec.max_replicas,
      copies: this.copyInfos(), restarts: [...this.copies.values()].reduce((n, c) => n + c.restarts, 0), recentFailures: 0,
      ...(this.lastDecision ? { lastDecision: this.lastDecision } : {}),
    };
  }

  copyInfos(): CopyInfo[] {
    return [...this.copies.values()].map((c) => ({
      id: c.pod, model: this.model, state: c.stopping ? 'draining' : c.conn.state === 'ready' ? (c.conn.inFlight > 0 ? 'busy' : 'ready') : c.conn.state === 'failed' ? 'failed' : 'starting',
      inFlight: c.conn.inFlight, credits: c.conn.credits, runtimeId: c.pod, name: c.pod, fingerprint: c.fingerprint,
      version: this.spec.version, image: this.spec.image, startedAt: c.startedAt, readyAt: c.readyAt,
    }));
  }

  // ---- internals ----

  private serving(): Copy[] {
    return [...this.copies.values()].filter((c) => !c.stopping && c.conn.state === 'ready');
  }

  private live(): Copy[] {
    return [...this.copies.values()].filter((c) => !c.stopping);
  }

  private problems(now = Date.now()): string[] {
    const out: string[] = [];
    for (const c of this.copies.values()) {
      if (c.stopping) continue;
      if (c.problem) out.push(`pod ${c.pod}: ${c.problem}`);
      else if (c.conn.state === 'starting' && c.runningSince !== undefined && now - c.runningSince >= this.spec.startup_timeout_ms) {
        // Kubernetes sees nothing wrong: the process runs but never reached the broker.
        out.push(`pod ${c.pod}: running ${Math.round((now - c.runningSince) / 1000)} s without READY on the link (startup_timeout_ms ${this.spec.startup_timeout_ms}): check TB_ENDPOINT and the CURVE keys, or the model's load`);
      }
    }
    return out;
  }

  private async doStart(): Promise<void> {
    const { kube, link } = this.host;
    const labels = { ...selectorLabels(this.model, this.host.brokerId), [LABELS.managedBy]: 'tensorbroker', [LABELS.owner]: labelValue(this.host.brokerId) };
    // The copies' credentials: kept in a Secret, so a restarted broker recognises the pods it left.
    let data = await kube.readSecret(this.name);
    if (!data?.['copy-secret'] || !data['curve-public-key'] || !data['curve-secret-key']) {
      const pair = zmq.curveKeyPair();
      data = { 'copy-secret': randomBytes(32).toString('hex'), 'curve-public-key': pair.publicKey, 'curve-secret-key': pair.secretKey };
      if (await kube.readSecret(this.name)) await kube.removeSecret(this.name);
      await kube.createSecret(this.name, data, labels);
    }
    this.credentials = { secret: data['copy-secret'], curvePublicKey: data['curve-public-key'] };
    this.withdrawKey = link.allowClientKey(this.credentials.curvePublicKey);
    const result = await kube.ensure(this.deployment(this.desired));
    if (result === 'updated') {
      // A Deployment this broker made before a restart: keep its scale (within the spec's bounds).
      const had = await kube.replicas(this.name);
      const within = Math.min(this.spec.max_replicas, Math.max(this.spec.min_replicas, had));
      this.log.info({ replicas: had }, 'took over the model\'s existing Deployment');
      this.desired = within;
      if (within !== had) this.write(() => kube.scale(this.name, within));
    } else this.log.info({ replicas: this.desired }, 'created the model\'s Deployment');
    this.apiError = undefined;
    this.stopWatch = await kube.watchPods(selectorLabels(this.model, this.host.brokerId), (change, pod) => this.onPod(change, pod), (err) => {
      this.log.warn({ err }, 'pod watch failed (the informer lists and watches again)');
    });
    this.notePhase();
  }

  private deployment(replicas: number): KubeDeployment {
    return buildModelDeployment({
      spec: this.spec as KubeModelSpec, brokerId: this.host.brokerId, fingerprint: this.fp, linkEndpoint: this.host.link.endpoint,
      curvePublicKey: this.host.link.curveServerKey ?? '', heartbeatMs: this.host.heartbeatMs, replicas, namespace: this.host.namespace, linkSecret: this.name,
    });
  }

  /** Serialised API writes: the last scale wins, in order. */
  private write(fn: () => Promise<unknown>): void {
    this.writes = this.writes.then(fn).then(
      () => {
        if (this.apiError) {
          this.apiError = undefined;
          this.notePhase();
        }
      },
      (err: unknown) => {
        this.apiError = `kubernetes API: ${(err as Error).message}`;
        this.log.error({ err }, 'kubernetes API call failed');
        this.notePhase();
      },
    );
  }

  private setReplicas(to: number, direction: 'up' | 'down' | 'none', reason: string, inputs?: object): void {
    const target = Math.max(0, Math.min(this.spec.max_replicas, to));
    if (target === this.desired && direction !== 'none') return;
    const budget = this.host.budget;
    if (budget && target > this.desired) {
      void this.growWithin(budget, target, direction, reason, inputs);
      return;
    }
    this.applyReplicas(target, direction, reason, inputs);
  }

  /**
   * Scale-up with several brokers: one budget place per replica (`<deployment>#<i>`),
   * claimed before the replicas grow, so the brokers' Deployments together stay within
   * max_replicas (each broker's min_replicas always granted, as on one box). One claim
   * round at a time; the next autoscaler period asks again for what was refused.
   */
  private async growWithin(budget: CopyBudget, target: number, direction: 'up' | 'down' | 'none', reason: string, inputs?: object): Promise<void> {
    if (this.claiming) return;
    this.claiming = true;
    let granted = this.desired;
    try {
      for (let i = this.desired; i < target; i++) {
        if (!(await budget.claim(this.model, `${this.name}#${i}`, this.spec.max_replicas, i < this.spec.min_replicas))) break;
        granted = i + 1;
      }
    } catch (err) {
      // Redis cannot be asked: grow as one broker would (logged), as the one-box controller does.
      this.log.warn({ err }, 'cannot ask the shared copy budget: scaling without it');
      granted = target;
    } finally {
      this.claiming = false;
    }
    if (this.closing || this.unloaded) {
      for (let i = this.desired; i < granted; i++) budget.release(this.model, `${this.name}#${i}`);
      return;
    }
    if (granted < target) this.log.info({ wanted: target, granted, max_replicas: this.spec.max_replicas }, 'the shared copy budget (several brokers) is taken: scaling up less');
    if (granted > this.desired) this.applyReplicas(granted, direction, reason, inputs);
  }

  private applyReplicas(target: number, direction: 'up' | 'down' | 'none', reason: string, inputs?: object): void {
    if (this.host.budget) for (let i = target; i < this.desired; i++) this.host.budget.release(this.model, `${this.name}#${i}`);
    this.log.info({ decision: direction, from: this.desired, to: target, reason, ...(inputs ? { inputs } : this.lastDemand) }, 'scaling decision');
    if (target > this.desired) this.lastScaleUpAt = Date.now();
    if (target < this.desired) this.lastScaleDownAt = Date.now();
    this.desired = target;
    this.lastDecision = reason;
    this.host.events.emit('scale', this.model, direction, reason);
    if (this.started) this.write(() => this.host.kube.scale(this.name, target));
    else if (this.host.canStart()) void this.start().catch(() => undefined);
    this.notePhase();
  }

  /** Scale-down of one chosen copy: it drains, is marked as the pod to remove, and the replicas go down by one. */
  private removeCopy(c: Copy, reason: string, inputs?: object): void {
    this.drain(c, `scaled down: ${reason}`);
    this.write(() => this.host.kube.markForRemoval(c.pod));
    this.setReplicas(this.desired - 1, 'down', reason, inputs);
  }

  private drain(c: Copy, reason: string): void {
    if (c.stopping) return;
    c.stopping = true;
    if (c.conn.connected && c.conn.state !== 'failed' && c.conn.state !== 'stopped') c.conn.shutdown(this.host.stopGraceMs, reason);
    this.gone(c, `model copy ${c.pod} of ${this.model} stops: ${reason}`);
  }

  private onPod(change: 'add' | 'update' | 'delete', pod: CopyPod): void {
    let c = this.copies.get(pod.name);
    if (change === 'delete') {
      if (c) this.forget(c, pod.problem?.message ?? 'pod deleted');
      this.notePhase();
      return;
    }
    if (!c) c = this.track(pod);
    else if (pod.restarts > c.restarts) {
      // Kubelet restarted the container: a new process that will send READY again; what the old one held is lost.
      this.log.warn({ copy: pod.name, restarts: pod.restarts, problem: pod.problem?.message }, 'copy container restarted in its pod');
      this.host.events.emit('copy-failure', this.model, pod.problem?.reason === 'OOMKilled' ? 'oom' : 'crash');
      this.host.events.emit('copy-exit', this.model, `model copy ${pod.name} of ${this.model}: ${pod.problem?.message ?? 'container restarted'}`);
      this.forget(c, `model copy ${pod.name} of ${this.model} restarted: ${pod.problem?.message ?? 'container restarted'}`);
      c = this.track(pod);
    }
    c.problem = pod.problem?.message;
    c.stuck = pod.problem?.stuck;
    if (pod.running && c.runningSince === undefined) {
      c.runningSince = Date.now();
      const copy = c;
      copy.startupTimer = setTimeout(() => this.notePhase(), this.spec.startup_timeout_ms + 10);
      copy.startupTimer.unref();
    }
    if (pod.terminating) this.drain(c, 'pod terminating');
    this.notePhase();
  }

  /** A pod of the Deployment: a copy on the link, waiting for its READY. */
  private track(pod: CopyPod): Copy {
    const { link } = this.host;
    const conn = new CopyConnection({
      id: pod.name, model: this.model, link, batchSize: this.spec.batch_size, heartbeatMs: this.host.heartbeatMs,
      heartbeatTimeoutMs: this.spec.heartbeat_timeout_ms, batchTimeoutMs: (rows, left) => batchTimeoutMs(this.spec, rows, left),
      retryOnFailure: this.spec.retry_on_failure && this.spec.stateless, maxSequences: this.spec.max_sequences, logger: this.host.log,
    });
    const fp = pod.labels[LABELS.fingerprint] === labelValue(this.fp) ? this.fp : `old:${pod.labels[LABELS.fingerprint] ?? ''}`;
    const c: Copy = { pod: pod.name, conn, fingerprint: fp, restarts: pod.restarts, startedAt: Date.now() };
    this.copies.set(pod.name, c);
    link.register(pod.name, conn, { routingId: pod.name, secret: this.credentials?.secret ?? '' });
    conn.on('ready', (meta: ModelMetadata) => {
      c.readyAt ??= Date.now();
      this.log.info({ copy: pod.name, maxBatch: meta.maxBatch, ms: c.readyAt - c.startedAt }, 'copy ready');
      if (c.fingerprint === this.fp || !this.metadata) {
        this.metadata = meta;
        this.emit('metadata', meta);
        this.host.events.emit('metadata', this.model, meta);
      }
      this.notePhase();
      this.emit('capacity');
    });
    conn.on('capacity', () => {
      if (!c.stopping) this.emit('capacity');
    });
    conn.on('leaving', () => this.gone(c, `model copy ${pod.name} of ${this.model} is shutting down`));
    conn.on('failed', (reason: string) => {
      // Hung or silent: the pod goes, its ReplicaSet starts another.
      this.log.warn({ copy: pod.name, reason }, 'copy failed; deleting its pod');
      this.host.events.emit('copy-failure', this.model, conn.failKind === 'hung' ? 'hung' : 'heartbeat');
      this.gone(c, `model copy ${pod.name} of ${this.model} ${reason}`);
      this.write(() => this.host.kube.deletePod(pod.name));
    });
    return c;
  }

  /** The copy is gone for good (pod deleted, container restarted, model removed). */
  private forget(c: Copy, reason: string): void {
    clearTimeout(c.startupTimer);
    if (this.copies.get(c.pod) === c) this.copies.delete(c.pod);
    c.conn.ended(reason);
    this.gone(c, reason);
    this.host.link.unregister(c.pod);
  }

  /** Tells the core once that a ready copy is gone (its sequences with it). */
  private gone(c: Copy, reason: string): void {
    if (c.gone || !c.readyAt) return;
    c.gone = true;
    this.emit('copy-gone', c.pod, reason);
  }

  private notePhase(): void {
    const r = this.readiness();
    const key = `${r.phase}|${r.reason ?? ''}|${r.starting ?? 0}`;
    if (key === this.phaseSeen) return;
    const from = this.phaseSeen?.split('|')[0];
    this.phaseSeen = key;
    if (from !== r.phase) this.log.info({ from, phase: r.phase, reason: r.reason }, 'model phase');
    this.emit('phase', r);
  }
}
