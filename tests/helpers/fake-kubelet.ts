/**
 * A FAKE kubelet for the FAKE API server (fake-kube-api.ts) — not Kubernetes.
 * When the fake API creates a pod, this runs it as a real local process: the
 * pod's image is looked up in a table (image → argv; no image is pulled), its
 * env is resolved as a kubelet does (values, the downward API's pod name,
 * Secret keys), and the pod's status follows the process: Pending while it
 * starts, Running/Ready while it runs, CrashLoopBackOff (restarted after a
 * backoff, restartCount + 1) when it exits, OOMKilled when oomKill() killed it.
 * A pod asking for more nvidia.com/gpu than the fake node has stays
 * Unschedulable; an image missing from the table is ImagePullBackOff. A
 * deleted pod's process gets SIGTERM, then SIGKILL after the grace.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { FakeKubeApi } from './fake-kube-api';
import type { KubeObject } from './kustomize-lite';

export interface FakeKubeletOptions {
  /** image → argv of the process that plays the container. */
  images: Record<string, string[]>;
  /** nvidia.com/gpu the fake node has (default 0). */
  gpus?: number;
  /** Env every container gets besides its own (PATH for the interpreter, say). */
  baseEnv?: Record<string, string>;
  /** First restart backoff (default 200 ms, doubling to 2 s). */
  backoffMs?: number;
  graceMs?: number;
}

interface Running {
  pod: string;
  ns: string;
  child?: ChildProcess;
  restarts: number;
  deleted: boolean;
  oom: boolean;
  timer?: NodeJS.Timeout;
  output: string;
}

export class FakeKubelet {
  private readonly pods = new Map<string, Running>();
  private gpusUsed = 0;
  /** Every env a container was started with, by pod name (the last start). */
  readonly envs = new Map<string, Record<string, string>>();

  constructor(private readonly api: FakeKubeApi, private readonly opts: FakeKubeletOptions) {
    api.on('pod-added', (pod) => this.added(pod));
    api.on('pod-deleted', (pod) => this.deleted(pod));
  }

  /** The pods whose process runs now. */
  running(): string[] {
    return [...this.pods.values()].filter((r) => r.child && r.child.exitCode === null && r.child.signalCode === null).map((r) => r.pod);
  }

  /** Kills a container as the kernel's OOM killer would: SIGKILL, then the pod reports OOMKilled. */
  oomKill(pod: string): void {
    const r = this.pods.get(pod);
    if (!r?.child) throw new Error(`fake kubelet: pod ${pod} runs no process`);
    r.oom = true;
    r.child.kill('SIGKILL');
  }

  /** Stops every process (end of a test). */
  async close(): Promise<void> {
    await Promise.all([...this.pods.values()].map((r) => this.stop(r, 0)));
  }

  private added(pod: KubeObject): void {
    const ns = pod.metadata.namespace as string;
    const name = pod.metadata.name as string;
    const container = pod.spec.containers[0];
    const gpus = Number(container.resources?.limits?.['nvidia.com/gpu'] ?? 0);
    if (gpus > 0 && this.gpusUsed + gpus > (this.opts.gpus ?? 0)) {
      this.api.setPodState(ns, name, 'Unschedulable');
      return;
    }
    this.gpusUsed += gpus;
    const r: Running = { pod: name, ns, restarts: 0, deleted: false, oom: false, output: '' };
    this.pods.set(name, r);
    if (!this.opts.images[container.image]) {
      this.api.setPodState(ns, name, 'ImagePullBackOff');
      return;
    }
    this.api.setPodState(ns, name, 'Pending');
    this.run(r, pod);
  }

  private run(r: Running, pod: KubeObject): void {
    const container = pod.spec.containers[0];
    const env = this.resolveEnv(pod);
    this.envs.set(r.pod, env);
    const [cmd, ...args] = this.opts.images[container.image];
    const child = spawn(cmd, args, { env: { ...this.opts.baseEnv, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    r.child = child;
    const keep = (d: Buffer) => (r.output = (r.output + d.toString()).slice(-4000));
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    child.once('spawn', () => {
      if (!r.deleted && this.api.pod(r.ns, r.pod)) this.api.setPodState(r.ns, r.pod, 'Ready');
    });
    child.once('exit', () => {
      if (r.deleted || !this.api.pod(r.ns, r.pod)) return;
      // restartPolicy Always: report the exit, restart after a backoff.
      this.api.setPodState(r.ns, r.pod, r.oom ? 'OOMKilled' : 'CrashLoopBackOff');
      r.oom = false;
      r.restarts++;
      const delay = Math.min(2000, (this.opts.backoffMs ?? 200) * 2 ** (r.restarts - 1));
      r.timer = setTimeout(() => {
        const now = this.api.pod(r.ns, r.pod);
        if (!r.deleted && now) this.run(r, now);
      }, delay);
    });
  }

  private deleted(pod: KubeObject): void {
    const r = this.pods.get(pod.metadata.name as string);
    if (!r) return;
    this.gpusUsed -= Number(pod.spec.containers[0].resources?.limits?.['nvidia.com/gpu'] ?? 0);
    void this.stop(r, this.opts.graceMs ?? 5000);
  }

  private stop(r: Running, graceMs: number): Promise<void> {
    r.deleted = true;
    clearTimeout(r.timer);
    this.pods.delete(r.pod);
    const child = r.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const kill = setTimeout(() => child.kill('SIGKILL'), graceMs);
      child.once('exit', () => {
        clearTimeout(kill);
        resolve();
      });
      child.kill(graceMs > 0 ? 'SIGTERM' : 'SIGKILL');
    });
  }

  /** The container's env as a kubelet resolves it: values, the pod name (downward API), Secret keys. */
  private resolveEnv(pod: KubeObject): Record<string, string> {
    const env: Record<string, string> = {};
    for (const e of pod.spec.containers[0].env ?? []) {
      if (e.value !== undefined) env[e.name] = String(e.value);
      else if (e.valueFrom?.fieldRef?.fieldPath === 'metadata.name') env[e.name] = pod.metadata.name;
      else if (e.valueFrom?.secretKeyRef) {
        const { name, key } = e.valueFrom.secretKeyRef;
        const v = this.api.secret(pod.metadata.namespace, name)?.[key];
        if (v === undefined) throw new Error(`fake kubelet: Secret ${name} has no key ${key} (a kubelet reports CreateContainerConfigError)`);
        env[e.name] = v;
      }
    }
    return env;
  }
}
