/**
 * The Deployment that runs one model's copies for one broker (pure: spec in,
 * manifest out). The Kubernetes runtime (not built yet) creates it, patches its
 * template on a spec change and its replicas when it scales.
 *
 * Names and the selector depend only on (model, broker): a spec change rolls
 * the pods of the same Deployment and never changes the selector, which the
 * API server refuses to change.
 */
import type { ModelSpec } from '../../core/model-spec';
import { dnsName, labelValue, shortHash } from './names';

/** A toleration as in a pod spec. */
export interface KubeToleration {
  key?: string;
  operator?: 'Exists' | 'Equal';
  value?: string;
  effect?: 'NoSchedule' | 'PreferNoSchedule' | 'NoExecute';
  tolerationSeconds?: number;
}

/**
 * Per-model fields the Kubernetes runtime reads, to be added to the registry
 * schema (model-manager/schema.ts) — all optional, ignored by the Docker and
 * process runtimes.
 */
export interface KubernetesModelFields {
  /** Node labels a copy's pod must match (a GPU pool, a GPU type). */
  node_selector?: Record<string, string>;
  /** Taints a copy's pod tolerates (GPU pools are usually tainted). */
  tolerations?: KubeToleration[];
  /** Names of docker-registry Secrets in the broker's namespace, for private images. */
  image_pull_secrets?: string[];
}

export type KubeModelSpec = ModelSpec & KubernetesModelFields;

export interface DeploymentInput {
  spec: KubeModelSpec;
  /** The broker that owns the copies (its pod name). */
  brokerId: string;
  /** The spec fingerprint (task-manager/model-state.ts `fingerprint()`). */
  fingerprint: string;
  /** Where copies dial the broker's link, e.g. tcp://10.0.3.7:7788. */
  linkEndpoint: string;
  /** The broker's CURVE public key (Z85), given to the copies. */
  curvePublicKey: string;
  /**
   * The Secret holding the copies' link credentials (keys `copy-secret`,
   * `curve-public-key`, `curve-secret-key`): given to the copies as env from the
   * Secret, so they never appear in the Deployment itself.
   */
  linkSecret?: string;
  heartbeatMs: number;
  replicas: number;
  namespace?: string;
  /** uid/gid the copy runs as (default 1000): non-root even when the image says root. */
  runAsUser?: number;
}

/** Minimal typed shape of what we build (validated in tests against the OpenAPI schemas). */
export interface KubeObjectMeta {
  name: string;
  namespace?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

export type EnvVar =
  | { name: string; value: string }
  | { name: string; valueFrom: { fieldRef: { fieldPath: string } } }
  | { name: string; valueFrom: { secretKeyRef: { name: string; key: string } } };

/** The keys of the copies' link Secret, and the env variable each becomes. */
export const LINK_SECRET_KEYS = { 'copy-secret': 'TB_COPY_SECRET', 'curve-public-key': 'TB_CURVE_PUBLIC_KEY', 'curve-secret-key': 'TB_CURVE_SECRET_KEY' } as const;

export interface KubeDeployment {
  apiVersion: 'apps/v1';
  kind: 'Deployment';
  metadata: KubeObjectMeta;
  spec: {
    replicas: number;
    selector: { matchLabels: Record<string, string> };
    strategy: { type: 'RollingUpdate'; rollingUpdate: { maxSurge: number; maxUnavailable: number } };
    template: { metadata: { labels: Record<string, string>; annotations: Record<string, string> }; spec: Record<string, unknown> };
  };
}

export const LABELS = {
  name: 'app.kubernetes.io/name',
  managedBy: 'app.kubernetes.io/managed-by',
  model: 'tensorbroker.io/model',
  version: 'tensorbroker.io/version',
  owner: 'tensorbroker.io/owner',
  fingerprint: 'tensorbroker.io/fingerprint',
  /** Hash of (model, owner): the selector key, fixed for the Deployment's life. */
  copies: 'tensorbroker.io/copies',
} as const;

/** Annotations keep the exact values that labels may have had to shorten. */
export const ANNOTATIONS = {
  model: 'tensorbroker.io/model-name',
  version: 'tensorbroker.io/model-version',
  owner: 'tensorbroker.io/owner-id',
  fingerprint: 'tensorbroker.io/fingerprint',
} as const;

/** Room left for the ReplicaSet hash and pod suffix: pod names (copy ids) stay ≤ 63. */
const DEPLOYMENT_NAME_MAX = 46;

export function deploymentName(model: string, brokerId: string): string {
  return dnsName('tb', [model, brokerId], DEPLOYMENT_NAME_MAX);
}

/** The Service through which a broker's copies reach its link (DNS-1035). */
export function linkServiceName(brokerId: string): string {
  return dnsName('tb-link', [brokerId]);
}

/** The selector: only what never changes for a (model, broker). */
export function selectorLabels(model: string, brokerId: string): Record<string, string> {
  return {
    [LABELS.name]: 'tensorbroker-model',
    [LABELS.copies]: shortHash(JSON.stringify([model, brokerId]), 16),
  };
}

const PULL_POLICY = { always: 'Always', 'if-missing': 'IfNotPresent', never: 'Never' } as const;

/** Kubernetes memory and CPU quantities from the spec's MB and cores. */
export function memoryQuantity(mb: number): string {
  return `${Math.ceil(mb)}Mi`;
}
export function cpuQuantity(cores: number): string {
  return `${Math.max(1, Math.round(cores * 1000))}m`;
}

export function buildModelDeployment(input: DeploymentInput): KubeDeployment {
  const { spec, brokerId } = input;
  if (!spec.image) throw new Error(`model '${spec.name}' has no image: the Kubernetes runtime runs images only`);
  if (!Number.isInteger(input.replicas) || input.replicas < 0) throw new Error(`replicas must be an integer ≥ 0, got ${input.replicas}`);
  const selector = selectorLabels(spec.name, brokerId);
  const labels = {
    ...selector,
    [LABELS.managedBy]: 'tensorbroker',
    [LABELS.model]: labelValue(spec.name),
    [LABELS.version]: labelValue(spec.version),
    [LABELS.owner]: labelValue(brokerId),
    [LABELS.fingerprint]: labelValue(input.fingerprint),
  };
  const annotations = {
    [ANNOTATIONS.model]: spec.name,
    [ANNOTATIONS.version]: spec.version,
    [ANNOTATIONS.owner]: brokerId,
    [ANNOTATIONS.fingerprint]: input.fingerprint,
  };
  const uid = input.runAsUser ?? 1000;

  const limits: Record<string, string> = {};
  if (spec.memory_mb !== undefined) limits.memory = memoryQuantity(spec.memory_mb);
  if (spec.cpus !== undefined) limits.cpu = cpuQuantity(spec.cpus);
  // Extended resources cannot be overcommitted: requests must equal limits.
  if (spec.run_on_gpu) limits['nvidia.com/gpu'] = String(spec.gpus_per_copy);
  const resources = Object.keys(limits).length > 0 ? { requests: { ...limits }, limits } : {};

  const volumeMounts = spec.read_only_root && spec.tmpfs_mb > 0 ? [{ name: 'scratch', mountPath: '/tmp' }] : [];
  const volumes =
    volumeMounts.length > 0 ? [{ name: 'scratch', emptyDir: { medium: 'Memory', sizeLimit: memoryQuantity(spec.tmpfs_mb) } }] : [];

  const podSpec: Record<string, unknown> = {
    // Copies never talk to the API server.
    automountServiceAccountToken: false,
    enableServiceLinks: false,
    securityContext: {
      runAsNonRoot: true,
      runAsUser: uid,
      runAsGroup: uid,
      seccompProfile: { type: 'RuntimeDefault' },
    },
    containers: [
      {
        name: 'model',
        image: spec.image,
        imagePullPolicy: PULL_POLICY[spec.pull_policy],
        env: copyEnv(input),
        resources,
        securityContext: {
          allowPrivilegeEscalation: false,
          privileged: false,
          readOnlyRootFilesystem: spec.read_only_root,
          capabilities: { drop: ['ALL'] },
        },
        volumeMounts,
      },
    ],
    volumes,
  };
  if (spec.node_selector && Object.keys(spec.node_selector).length > 0) podSpec.nodeSelector = { ...spec.node_selector };
  if (spec.tolerations && spec.tolerations.length > 0) podSpec.tolerations = spec.tolerations.map((t) => ({ ...t }));
  if (spec.image_pull_secrets && spec.image_pull_secrets.length > 0) {
    podSpec.imagePullSecrets = spec.image_pull_secrets.map((name) => ({ name }));
  }

  return {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: {
      name: deploymentName(spec.name, brokerId),
      ...(input.namespace ? { namespace: input.namespace } : {}),
      labels,
      annotations,
    },
    spec: {
      replicas: input.replicas,
      selector: { matchLabels: selector },
      // A GPU pool rarely has a spare GPU: replace a copy before starting its successor.
      strategy: { type: 'RollingUpdate', rollingUpdate: spec.run_on_gpu ? { maxSurge: 0, maxUnavailable: 1 } : { maxSurge: 1, maxUnavailable: 0 } },
      template: { metadata: { labels, annotations }, spec: podSpec },
    },
  };
}

/**
 * The copy's env: the spec's env, then the link's (which wins). The copy id is
 * the pod name (downward API), unique per copy without the broker naming pods.
 */
function copyEnv(input: DeploymentInput): EnvVar[] {
  const { spec } = input;
  const link: Record<string, string> = {
    TB_ENDPOINT: input.linkEndpoint,
    TB_MODEL: spec.name,
    TB_MODEL_VERSION: spec.version,
    TB_HEARTBEAT_MS: String(input.heartbeatMs),
    TB_BATCH_SIZE: String(spec.batch_size),
    TB_CURVE_SERVER_KEY: input.curvePublicKey,
  };
  const fromSecret = Object.values(LINK_SECRET_KEYS) as string[];
  const env: EnvVar[] = Object.entries(spec.env)
    .filter(([name]) => !(name in link) && name !== 'TB_COPY_ID' && !fromSecret.includes(name))
    .map(([name, value]) => ({ name, value }));
  for (const [name, value] of Object.entries(link)) env.push({ name, value });
  env.push({ name: 'TB_COPY_ID', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } });
  if (input.linkSecret) {
    for (const [key, name] of Object.entries(LINK_SECRET_KEYS)) env.push({ name, valueFrom: { secretKeyRef: { name: input.linkSecret, key } } });
  }
  return env;
}
