/**
 * One typed configuration. Precedence: command-line flag > environment
 * variable > default. Secrets (SECRETS below) come from the environment only.
 */
import os from 'node:os';
import path from 'node:path';
import { JOB_OPTIONS } from './job-options';
import type { WebhookOptions } from '../jobs/webhooks';

export type RuntimeKind = 'docker' | 'process' | 'kubernetes' | 'auto';

/**
 * Every option: flag, env variable, default, parser, help. `BrokerConfig` is
 * derived from this table (each key typed by what its parser returns), and
 * the CLI's flags are generated from it (app/cli.ts).
 */
export const OPTIONS = {
  modelsPath: ['--models <file>', 'TB_MODELS', './models.yaml', String, 'models.yaml to seed the registry from (watched: edits apply live)'],
  watchModels: ['--watch-models <bool>', 'TB_WATCH_MODELS', true, parseBool, 'apply edits of the models file while running'],
  redisUrl: ['--redis-url <url>', 'TB_REDIS_URL', '', String, 'Redis holding a registry shared by several brokers (redis:// or rediss://, may carry user:password@); empty = the embedded registry'],
  redisPrefix: ['--redis-prefix <prefix>', 'TB_REDIS_PREFIX', 'tb:', String, 'prefix of every Redis key'],
  redisCaFile: ['--redis-ca-file <pem>', 'TB_REDIS_CA_FILE', '', String, 'CA certificate of a rediss:// server with a private CA'],
  redisReadOnly: ['--redis-read-only <bool>', 'TB_REDIS_READ_ONLY', false, parseBool, 'never write Redis: models.yaml gives commands only, the admin API cannot change models'],
  registryFile: ['--registry-file <file>', 'TB_REGISTRY_FILE', '', String, 'embedded registry only: persist it to this JSON file (admin API changes survive a restart)'],
  runtime: ['--runtime <kind>', 'TB_RUNTIME', 'auto', parseRuntime, 'docker | process | kubernetes (auto: docker when the socket answers)'],
  linkTransport: ['--link-transport <t>', 'TB_LINK_TRANSPORT', 'ipc', parseTransport, 'model link: ipc (one box) or tcp (kubernetes always uses tcp)'],
  linkHost: ['--link-host <addr>', 'TB_LINK_HOST', '127.0.0.1', String, 'tcp link: the address the link binds (0.0.0.0 in a pod)'],
  linkPort: ['--link-port <port>', 'TB_LINK_PORT', 0, parsePort, 'tcp link: port (0 = any free port)'],
  linkAdvertise: ['--link-advertise <endpoint>', 'TB_LINK_ADVERTISE', '', String, 'tcp link: the endpoint copies dial, e.g. tcp://$(POD_IP):7788 (default: the bound one)'],
  linkCurve: ['--link-curve <bool>', 'TB_LINK_CURVE', false, parseBool, 'tcp link: ZeroMQ CURVE (always on with the kubernetes runtime); the key pair from TB_CURVE_PUBLIC_KEY / TB_CURVE_SECRET_KEY, else generated'],
  k8sNamespace: ['--k8s-namespace <ns>', 'TB_K8S_NAMESPACE', '', String, 'kubernetes runtime: namespace of the model Deployments (default: the pod\'s own, else default)'],
  k8sApiServer: ['--k8s-api-server <url>', 'TB_K8S_API_SERVER', '', String, 'kubernetes runtime: API server URL without a kubeconfig (default: in-cluster, else the kubeconfig)'],
  k8sKubeconfig: ['--k8s-kubeconfig <file>', 'TB_K8S_KUBECONFIG', '', String, 'kubernetes runtime: a kubeconfig file'],
  host: ['--host <addr>', 'TB_HOST', '127.0.0.1', String, 'address the HTTP, gRPC, metrics and ZeroMQ ports bind'],
  httpPort: ['--http-port <port>', 'TB_HTTP_PORT', 8000, parsePort, 'KServe v2 REST + admin API'],
  grpcPort: ['--grpc-port <port>', 'TB_GRPC_PORT', 8001, parsePort, 'KServe v2 gRPC'],
  metricsPort: ['--metrics-port <port>', 'TB_METRICS_PORT', 8002, parsePort, 'Prometheus metrics'],
  zmqPort: ['--zmq-port <port>', 'TB_ZMQ_PORT', 7787, parsePort, 'ZeroMQ client bridge'],
  brokerId: ['--broker-id <id>', 'TB_BROKER_ID', `tb-${os.hostname()}`, String, 'owner label of the containers this broker starts'],
  socketDir: ['--socket-dir <dir>', 'TB_SOCKET_DIR', path.join(os.tmpdir(), 'tensorbroker'), String, 'folder of the model-link ipc socket'],
  dockerSocket: ['--docker-socket <path>', 'TB_DOCKER_SOCKET', '/var/run/docker.sock', String, 'Docker API socket'],
  bodyLimit: ['--body-limit <bytes>', 'TB_BODY_LIMIT', 64 * 1024 * 1024, parsePositive, 'largest request body (413 beyond)'],
  maxVideoBytes: ['--max-video-bytes <bytes>', 'TB_MAX_VIDEO_BYTES', 1024 * 1024 * 1024, parsePositive, 'largest video upload (streamed to ffmpeg; 413 beyond)'],
  ffmpeg: ['--ffmpeg <path>', 'TB_FFMPEG', 'ffmpeg', String, 'ffmpeg binary that decodes video uploads'],
  bodyIdleTimeoutMs: ['--body-idle-timeout-ms <ms>', 'TB_BODY_IDLE_TIMEOUT_MS', 10_000, parsePositive, 'longest gap in a REST request body (408 and the connection closed beyond)'],
  bodyTimeoutMs: ['--body-timeout-ms <ms>', 'TB_BODY_TIMEOUT_MS', 60_000, parseCount, 'longest time to receive a REST request body, video uploads excepted (0 = no limit)'],
  compressThreshold: ['--compress-threshold <bytes>', 'TB_COMPRESS_THRESHOLD', 1024, parseCount, 'REST responses this large or larger are gzip/deflate-compressed when the client asks'],
  grpcMaxMessageBytes: ['--grpc-max-message-bytes <bytes>', 'TB_GRPC_MAX_MESSAGE_BYTES', 64 * 1024 * 1024, parsePositive, 'largest gRPC message each way'],
  maxTensors: ['--max-tensors <n>', 'TB_MAX_TENSORS', 64, parsePositive, 'input tensors per request'],
  maxElements: ['--max-elements <n>', 'TB_MAX_ELEMENTS', 64 * 1024 * 1024, parsePositive, 'elements per input tensor'],
  maxStringBytes: ['--max-string-bytes <n>', 'TB_MAX_STRING_BYTES', 16 * 1024 * 1024, parsePositive, 'bytes per BYTES element'],
  heartbeatMs: ['--heartbeat-ms <ms>', 'TB_HEARTBEAT_MS', 1000, parsePositive, 'link heartbeat interval'],
  shutdownGraceMs: ['--shutdown-grace-ms <ms>', 'TB_SHUTDOWN_GRACE_MS', 10_000, parsePositive, 'time in-flight requests get on SIGTERM'],
  zmqCloseGraceMs: ['--zmq-close-grace-ms <ms>', 'TB_ZMQ_CLOSE_GRACE_MS', 5000, parsePositive, 'time the ZeroMQ bridge gives its answers in flight on shutdown'],
  zmqMaxConnections: ['--zmq-max-connections <n>', 'TB_ZMQ_MAX_CONNECTIONS', 1024, parsePositive, 'ZeroMQ client bridge: connections at once (more are closed at accept)'],
  logLevel: ['--log-level <level>', 'TB_LOG_LEVEL', 'info', String, 'pino log level'],
  gpus: ['--gpus <ids>', 'TB_GPUS', [] as string[], parseList, 'GPU ids when nvidia-smi is absent, e.g. 0,1,2,3'],
  gpuMode: ['--gpu-mode <mode>', 'TB_GPU_MODE', 'nvidia', parseGpuMode, 'nvidia | fake (record GPU requests without sending them: tests only)'],
  maxCopies: ['--max-copies <n>', 'TB_MAX_COPIES', 0, parseCount, 'global cap on model copies (0 = none)'],
  maxMemoryMb: ['--max-memory-mb <mb>', 'TB_MAX_MEMORY_MB', 0, parseCount, 'global cap on the sum of memory_mb of copies (0 = none)'],
  autoscaleIntervalMs: ['--autoscale-interval-ms <ms>', 'TB_AUTOSCALE_INTERVAL_MS', 1000, parsePositive, 'how often the autoscaler looks at the queues'],
  jobsEnabled: ['--jobs <bool>', 'TB_JOBS', false, parseBool, 'asynchronous jobs on Redis Streams (POST /v2/models/{m}/jobs; needs --redis-url)'],
  jobsWebhookHosts: ['--jobs-webhook-hosts <hosts>', 'TB_JOBS_WEBHOOK_HOSTS', [] as string[], parseList, 'hosts job webhooks may go to: names, IPs or CIDRs (none: webhook_url is refused)'],
  registryServer: ['--registry-server <host>', 'TB_REGISTRY_SERVER', '', String, 'the only Docker registry host that gets the credentials TB_REGISTRY_USERNAME / TB_REGISTRY_PASSWORD'],
  registryUsername: ['--registry-username <user>', 'TB_REGISTRY_USERNAME', '', String, 'Docker registry user for image pulls (the password: env TB_REGISTRY_PASSWORD only)'],
  cluster: ['--cluster <bool>', 'TB_CLUSTER', true, parseBool, 'with a writable --redis-url: join the broker directory and share stateful sequences with the other brokers on that Redis (README "Several brokers")'],
  advertiseUrl: ['--advertise-url <url>', 'TB_ADVERTISE_URL', '', String, 'URL of this broker\'s HTTP port as other brokers reach it, for forwarding (default http://<host>:<http port>; on Kubernetes the pod IP)'],
  clusterLeaseMs: ['--cluster-lease-ms <ms>', 'TB_CLUSTER_LEASE_MS', 3000, parsePositive, 'a broker counts as gone this long after its last directory heartbeat (sent every third of it)'],
  tlsCert: ['--tls-cert <file>', 'TB_TLS_CERT', '', String, 'PEM certificate (chain): REST and gRPC serve TLS (with --tls-key)'],
  tlsKey: ['--tls-key <file>', 'TB_TLS_KEY', '', String, 'PEM private key of --tls-cert'],
  ...JOB_OPTIONS,
} as const;

/**
 * Secrets: from the environment only (never a flag, which `ps` shows), never logged.
 * TB_REDIS_SIGNING_KEY: HMAC key of registry records (see model-manager/README.md).
 */
export const SECRETS = {
  adminToken: 'TB_ADMIN_TOKEN',
  redisSigningKey: 'TB_REDIS_SIGNING_KEY',
  registryPassword: 'TB_REGISTRY_PASSWORD',
  jobsWebhookSecret: 'TB_JOBS_WEBHOOK_SECRET',
  /** Shared by the brokers of one Redis: requests forwarded between them carry it (default: TB_ADMIN_TOKEN). */
  clusterToken: 'TB_CLUSTER_TOKEN',
  /** The link's CURVE key pair (Z85): the public key goes to copies, the secret key never leaves the broker. */
  curvePublicKey: 'TB_CURVE_PUBLIC_KEY',
  curveSecretKey: 'TB_CURVE_SECRET_KEY',
} as const;

type Options = typeof OPTIONS;

/** The resolved configuration: one field per row of OPTIONS, typed by its parser, plus the secrets. */
/** Asynchronous jobs (jobs/README.md): on with --jobs (or `enabled: true` here) and a Redis URL; these knobs are for embedders and tests. */
export interface JobsConfig {
  enabled?: boolean;
  /** Folder of large job inputs and results (default: <tmp>/tensorbroker-jobs/<brokerId>). */
  blobDir?: string;
  leaseMs?: number;
  resultTtlMs?: number;
  maxInFlight?: number;
  inlineMaxBytes?: number;
  /** e.g. '0.25,ocr=0.5' (see --jobs-live-reserve). */
  liveReserve?: string;
  deadMaxLen?: number;
  maxQueued?: number;
  backlogIntervalMs?: number;
  /** Webhooks (jobs/webhooks.ts); allowHosts and secret default to TB_JOBS_WEBHOOK_HOSTS and TB_JOBS_WEBHOOK_SECRET. */
  webhooks?: WebhookOptions;
  /** SSE heartbeat of GET /v2/jobs/{id}/events. Default 15 s. */
  sseHeartbeatMs?: number;
  /** Idle consumers (no entry held) are removed from the job streams' groups after this. Default 1 h. */
  consumerIdleMs?: number;
}

export type BrokerConfig = { -readonly [K in keyof Options]: ReturnType<Options[K][3]> } & {
  -readonly [K in keyof typeof SECRETS]?: string;
} & {
  /** TB_API_KEYS (comma-separated, environment only, never logged): when set, inference on every bridge needs one of them. */
  apiKeys: string[];
  jobs?: JobsConfig;
};

type Key = keyof typeof OPTIONS;

function parseBool(v: string): boolean {
  if (/^(1|true|yes|on)$/i.test(v)) return true;
  if (/^(0|false|no|off)$/i.test(v)) return false;
  throw new Error(`'${v}' is not a boolean (true or false)`);
}

function parseRuntime(v: string): RuntimeKind {
  if (v !== 'docker' && v !== 'process' && v !== 'kubernetes' && v !== 'auto') throw new Error(`runtime must be docker, process, kubernetes or auto (got '${v}')`);
  return v;
}

function parseTransport(v: string): 'ipc' | 'tcp' {
  if (v !== 'ipc' && v !== 'tcp') throw new Error(`link transport must be ipc or tcp (got '${v}')`);
  return v;
}

function parseList(v: string): string[] {
  return [...new Set(v.split(',').map((s) => s.trim()).filter(Boolean))];
}

function parseGpuMode(v: string): 'nvidia' | 'fake' {
  if (v !== 'nvidia' && v !== 'fake') throw new Error(`gpu mode must be nvidia or fake (got '${v}')`);
  return v;
}

function parseCount(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`'${v}' is not a whole number >= 0`);
  return n;
}

function parsePort(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new Error(`'${v}' is not a port number`);
  return n;
}

function parsePositive(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`'${v}' is not a positive number`);
  return n;
}

/** Builds the config from parsed flags (undefined = not given), the environment and defaults. */
export function resolveConfig(flags: Partial<Record<Key, string>>, env: NodeJS.ProcessEnv = process.env): BrokerConfig {
  const out: Record<string, unknown> = {};
  for (const [key, [flag, envName, def, parse]] of Object.entries(OPTIONS) as [Key, (typeof OPTIONS)[Key]][]) {
    const raw = flags[key] ?? env[envName];
    try {
      out[key] = raw === undefined || raw === '' ? def : (parse as (s: string) => unknown)(raw);
    } catch (e) {
      throw new Error(`${flag.split(' ')[0]} / ${envName}: ${(e as Error).message}`);
    }
  }
  for (const [key, envName] of Object.entries(SECRETS)) out[key] = env[envName] || undefined;
  out.apiKeys = parseList(env.TB_API_KEYS ?? '');
  if (!out.tlsCert !== !out.tlsKey) throw new Error('--tls-cert / TB_TLS_CERT and --tls-key / TB_TLS_KEY go together: give both or neither');
  return out as unknown as BrokerConfig;
}
