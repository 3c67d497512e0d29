/**
 * The Kubernetes API calls of the Kubernetes runtime (kube-model.ts), through
 * the official @kubernetes/client-node: one model's Deployment created or
 * updated, scaled through /scale, its pods listed with their problem in
 * Kubernetes' words and followed by an informer (list + watch, re-list on 410
 * Gone), one pod marked as the next to go on a scale-down, the copies' link
 * Secret, removed. No copy bookkeeping here.
 *
 * @kubernetes/client-node 2 is ESM and needs Node ≥ 22.19; it is loaded on
 * first use only, so nothing else in the broker depends on it.
 */
import type { AppsV1Api, CoreV1Api, KubeConfig, V1Deployment, V1Pod } from '@kubernetes/client-node';
import type { KubeDeployment } from './manifests';
import { podProblem, type PodProblem, type PodStatusLike } from './pod-status';

type ClientModule = typeof import('@kubernetes/client-node');

export interface KubeConnectOptions {
  namespace: string;
  /** API server URL without a kubeconfig (tests, the fake API server). */
  server?: string;
  token?: string;
  /** A kubeconfig file; default: in-cluster service account, else ~/.kube/config. */
  kubeconfig?: string;
}

export interface CopyPod {
  name: string;
  /** The pod's labels (the fingerprint label tells a roll's old pods from new ones). */
  labels: Record<string, string>;
  /** Container restarts (kubelet restarts a copy in place: a new process, a new READY). */
  restarts: number;
  /** The container runs now. */
  running: boolean;
  /** Being deleted (deletionTimestamp set). */
  terminating: boolean;
  /** The pod's Ready condition: never enough for a copy to serve (READY on the link is). */
  podReady: boolean;
  ip?: string;
  problem?: PodProblem;
}

/** A failed API call, with the API server's Status reason and message. */
export class KubeApiError extends Error {
  constructor(readonly code: number, readonly reason: string, message: string) {
    super(message);
    this.name = 'KubeApiError';
  }
}

export async function loadClient(): Promise<ClientModule> {
  return import('@kubernetes/client-node');
}

export class KubeDeployments {
  private constructor(
    private readonly k8s: ClientModule,
    private readonly apps: AppsV1Api,
    private readonly core: CoreV1Api,
    private readonly kc: KubeConfig,
    readonly namespace: string,
  ) {}

  static async connect(opts: KubeConnectOptions): Promise<KubeDeployments> {
    const k8s = await loadClient();
    const kc: KubeConfig = new k8s.KubeConfig();
    if (opts.server) {
      kc.loadFromOptions({
        // Plain http (the fake API server on loopback): the client allows it only with skipTLSVerify.
        clusters: [{ name: 'target', server: opts.server, skipTLSVerify: opts.server.startsWith('http://') }],
        users: [{ name: 'broker', ...(opts.token ? { token: opts.token } : {}) }],
        contexts: [{ name: 'target', cluster: 'target', user: 'broker', namespace: opts.namespace }],
        currentContext: 'target',
      });
    } else if (opts.kubeconfig) kc.loadFromFile(opts.kubeconfig);
    else kc.loadFromDefault();
    return new KubeDeployments(k8s, kc.makeApiClient(k8s.AppsV1Api), kc.makeApiClient(k8s.CoreV1Api), kc, opts.namespace);
  }

  /**
   * Creates the Deployment, or replaces its labels, annotations and template
   * when it exists (a spec change rolls its pods). The replicas are kept when
   * it exists: scaling is scale()'s job. The selector never changes.
   */
  async ensure(d: KubeDeployment): Promise<'created' | 'updated'> {
    const body = d as unknown as V1Deployment;
    try {
      await this.call(() => this.apps.createNamespacedDeployment({ namespace: this.namespace, body }));
      return 'created';
    } catch (err) {
      if (!(err instanceof KubeApiError) || err.code !== 409) throw err;
    }
    // Another writer may change it between read and replace: retry on 409 Conflict.
    for (let attempt = 0; ; attempt++) {
      const cur = await this.call(() => this.apps.readNamespacedDeployment({ name: d.metadata.name, namespace: this.namespace }));
      const next = {
        ...body,
        metadata: { ...body.metadata, resourceVersion: cur.metadata?.resourceVersion },
        spec: { ...body.spec!, replicas: cur.spec?.replicas },
      } as V1Deployment;
      try {
        await this.call(() => this.apps.replaceNamespacedDeployment({ name: d.metadata.name, namespace: this.namespace, body: next }));
        return 'updated';
      } catch (err) {
        if (!(err instanceof KubeApiError) || err.code !== 409 || attempt >= 4) throw err;
      }
    }
  }

  /** Sets the replicas only (the autoscaler's one write), through the /scale subresource. */
  async scale(name: string, replicas: number): Promise<void> {
    const options = this.k8s.setHeaderOptions('Content-Type', this.k8s.PatchStrategy.MergePatch);
    await this.call(() =>
      this.apps.patchNamespacedDeploymentScale({ name, namespace: this.namespace, body: { spec: { replicas } } }, options),
    );
  }

  async replicas(name: string): Promise<number> {
    const s = await this.call(() => this.apps.readNamespacedDeploymentScale({ name, namespace: this.namespace }));
    return s.spec?.replicas ?? 0;
  }

  /** The copies' pods of a Deployment (by its selector), each with what is wrong with it, if anything. */
  async pods(matchLabels: Record<string, string>): Promise<CopyPod[]> {
    const labelSelector = selectorString(matchLabels);
    const list = await this.call(() => this.core.listNamespacedPod({ namespace: this.namespace, labelSelector }));
    return list.items.map(copyPod);
  }

  /**
   * Follows the copies' pods: the client's informer lists, then watches from
   * the list's resourceVersion, and lists again when the API server answers
   * 410 Gone (history compacted). Returns the function that stops it.
   */
  async watchPods(
    matchLabels: Record<string, string>,
    onPod: (change: 'add' | 'update' | 'delete', pod: CopyPod) => void,
    onError: (err: unknown) => void,
  ): Promise<() => Promise<void>> {
    const labelSelector = selectorString(matchLabels);
    const informer = this.k8s.makeInformer<V1Pod>(
      this.kc,
      `/api/v1/namespaces/${this.namespace}/pods`,
      () => this.core.listNamespacedPod({ namespace: this.namespace, labelSelector }),
      labelSelector,
    );
    informer.on('add', (p) => onPod('add', copyPod(p)));
    informer.on('update', (p) => onPod('update', copyPod(p)));
    informer.on('delete', (p) => onPod('delete', copyPod(p)));
    informer.on('error', onError);
    await informer.start();
    return () => informer.stop();
  }

  /** The Deployments with these labels (a dead broker's, for garbage collection). */
  async deployments(matchLabels: Record<string, string>): Promise<{ name: string; labels: Record<string, string>; annotations: Record<string, string> }[]> {
    const list = await this.call(() => this.apps.listNamespacedDeployment({ namespace: this.namespace, labelSelector: selectorString(matchLabels) }));
    return list.items.map((d) => ({ name: d.metadata?.name ?? '', labels: d.metadata?.labels ?? {}, annotations: d.metadata?.annotations ?? {} }));
  }

  /**
   * Makes this pod the one a scale-down removes (the ReplicaSet removes pods
   * with the lowest `controller.kubernetes.io/pod-deletion-cost` first).
   */
  async markForRemoval(pod: string): Promise<void> {
    const options = this.k8s.setHeaderOptions('Content-Type', this.k8s.PatchStrategy.MergePatch);
    await this.call(() =>
      this.core.patchNamespacedPod({ name: pod, namespace: this.namespace, body: { metadata: { annotations: { 'controller.kubernetes.io/pod-deletion-cost': '-1000' } } } }, options),
    );
  }

  /** Deletes one pod (a hung copy): its ReplicaSet starts a replacement. False when it was already gone. */
  async deletePod(pod: string): Promise<boolean> {
    try {
      await this.call(() => this.core.deleteNamespacedPod({ name: pod, namespace: this.namespace }));
      return true;
    } catch (err) {
      if (err instanceof KubeApiError && err.code === 404) return false;
      throw err;
    }
  }

  /** The Secret's string data, or undefined when it does not exist. */
  async readSecret(name: string): Promise<Record<string, string> | undefined> {
    try {
      const s = await this.call(() => this.core.readNamespacedSecret({ name, namespace: this.namespace }));
      return Object.fromEntries(Object.entries(s.data ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')]));
    } catch (err) {
      if (err instanceof KubeApiError && err.code === 404) return undefined;
      throw err;
    }
  }

  async createSecret(name: string, data: Record<string, string>, labels: Record<string, string>): Promise<void> {
    await this.call(() =>
      this.core.createNamespacedSecret({ namespace: this.namespace, body: { apiVersion: 'v1', kind: 'Secret', type: 'Opaque', metadata: { name, labels }, stringData: data } }),
    );
  }

  /** False when it was already gone. */
  async removeSecret(name: string): Promise<boolean> {
    try {
      await this.call(() => this.core.deleteNamespacedSecret({ name, namespace: this.namespace }));
      return true;
    } catch (err) {
      if (err instanceof KubeApiError && err.code === 404) return false;
      throw err;
    }
  }

  /** Removes the Deployment (and so its pods). False when it was already gone. */
  async remove(name: string): Promise<boolean> {
    try {
      await this.call(() => this.apps.deleteNamespacedDeployment({ name, namespace: this.namespace }));
      return true;
    } catch (err) {
      if (err instanceof KubeApiError && err.code === 404) return false;
      throw err;
    }
  }

  /** Runs an API call; a failure becomes a KubeApiError with the Status reason and message. */
  private async call<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof this.k8s.ApiException) {
        const status = parseStatus(err.body);
        throw new KubeApiError(err.code, status.reason ?? 'Unknown', `kubernetes API ${err.code} ${status.reason ?? ''}: ${status.message ?? String(err.body)}`);
      }
      throw err;
    }
  }
}

function selectorString(matchLabels: Record<string, string>): string {
  return Object.entries(matchLabels).map(([k, v]) => `${k}=${v}`).join(',');
}

function copyPod(p: V1Pod): CopyPod {
  const problem = podProblem(p as unknown as PodStatusLike);
  const cs = p.status?.containerStatuses?.[0];
  return {
    name: p.metadata?.name ?? '',
    labels: p.metadata?.labels ?? {},
    restarts: cs?.restartCount ?? 0,
    running: !!cs?.state?.running,
    terminating: !!p.metadata?.deletionTimestamp,
    podReady: (p.status?.conditions ?? []).some((c) => c.type === 'Ready' && c.status === 'True'),
    ...(p.status?.podIP ? { ip: p.status.podIP } : {}),
    ...(problem ? { problem } : {}),
  };
}

function parseStatus(body: unknown): { reason?: string; message?: string } {
  try {
    const s = (typeof body === 'string' ? JSON.parse(body) : body) as { reason?: string; message?: string };
    return { reason: s?.reason, message: s?.message };
  } catch {
    return {};
  }
}
