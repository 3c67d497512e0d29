/**
 * One typed configuration. Precedence: command-line flag > environment
 * variable > default. Secrets (TB_ADMIN_TOKEN) come from the environment only.
 */
import os from 'node:os';
import path from 'node:path';

export type RuntimeKind = 'docker' | 'process' | 'auto';

export interface BrokerConfig {
  modelsPath: string;
  redisUrl: string;
  redisPrefix: string;
  runtime: RuntimeKind;
  host: string;
  httpPort: number;
  grpcPort: number;
  metricsPort: number;
  zmqPort: number;
  /** Names this broker's containers (label tensorbroker.owner); two brokers on one host need different ids. */
  brokerId: string;
  /** Directory of the ipc:// socket model copies connect to (bind-mounted into containers). */
  socketDir: string;
  dockerSocket: string;
  bodyLimit: number;
  /** Largest gRPC message, each way (gRPC's own default is 4 MiB: too small for images). */
  grpcMaxMessageBytes: number;
  maxTensors: number;
  maxElements: number;
  maxStringBytes: number;
  heartbeatMs: number;
  shutdownGraceMs: number;
  logLevel: string;
  adminToken?: string;
  /** GPU ids used when nvidia-smi is absent (TB_GPUS=0,1,2,3). */
  gpus: string[];
  /** 'fake': GPU requests are recorded on containers but not sent (tests on hosts without a GPU runtime). */
  gpuMode: 'nvidia' | 'fake';
  /** Global caps: copies and memory (MB, sum of memory_mb) on this box; 0 = none. */
  maxCopies: number;
  maxMemoryMb: number;
  autoscaleIntervalMs: number;
  /** Asynchronous jobs (jobs/README.md): on by default with these defaults; set by embedders and tests. */
  jobs?: JobsConfig;
}

export interface JobsConfig {
  enabled?: boolean;
  /** Folder of large job inputs and results (default: <tmp>/tensorbroker-jobs/<brokerId>). */
  blobDir?: string;
  leaseMs?: number;
  resultTtlMs?: number;
  maxInFlight?: number;
  inlineMaxBytes?: number;
}

/** Flag name, env variable, default, parser. */
export const OPTIONS = {
  modelsPath: ['--models <file>', 'TB_MODELS', './models.yaml', String, 'models.yaml to seed the registry from'],
  redisUrl: ['--redis-url <url>', 'TB_REDIS_URL', 'redis://127.0.0.1:6379', String, 'Redis holding the model registry'],
  redisPrefix: ['--redis-prefix <prefix>', 'TB_REDIS_PREFIX', 'tb:', String, 'prefix of every Redis key'],
  runtime: ['--runtime <kind>', 'TB_RUNTIME', 'auto', parseRuntime, 'docker | process (auto: docker when the socket answers)'],
  host: ['--host <addr>', 'TB_HOST', '127.0.0.1', String, 'address the HTTP, gRPC, metrics and ZeroMQ ports bind'],
  httpPort: ['--http-port <port>', 'TB_HTTP_PORT', 8000, parsePort, 'KServe v2 REST + admin API'],
  grpcPort: ['--grpc-port <port>', 'TB_GRPC_PORT', 8001, parsePort, 'KServe v2 gRPC'],
  metricsPort: ['--metrics-port <port>', 'TB_METRICS_PORT', 8002, parsePort, 'Prometheus metrics'],
  zmqPort: ['--zmq-port <port>', 'TB_ZMQ_PORT', 7787, parsePort, 'ZeroMQ client bridge'],
  brokerId: ['--broker-id <id>', 'TB_BROKER_ID', `tb-${os.hostname()}`, String, 'owner label of the containers this broker starts'],
  socketDir: ['--socket-dir <dir>', 'TB_SOCKET_DIR', path.join(os.tmpdir(), 'tensorbroker'), String, 'folder of the model-link ipc socket'],
  dockerSocket: ['--docker-socket <path>', 'TB_DOCKER_SOCKET', '/var/run/docker.sock', String, 'Docker API socket'],
  bodyLimit: ['--body-limit <bytes>', 'TB_BODY_LIMIT', 64 * 1024 * 1024, parsePositive, 'largest request body (413 beyond)'],
  grpcMaxMessageBytes: ['--grpc-max-message-bytes <bytes>', 'TB_GRPC_MAX_MESSAGE_BYTES', 64 * 1024 * 1024, parsePositive, 'largest gRPC message each way'],
  maxTensors: ['--max-tensors <n>', 'TB_MAX_TENSORS', 64, parsePositive, 'input tensors per request'],
  maxElements: ['--max-elements <n>', 'TB_MAX_ELEMENTS', 64 * 1024 * 1024, parsePositive, 'elements per input tensor'],
  maxStringBytes: ['--max-string-bytes <n>', 'TB_MAX_STRING_BYTES', 16 * 1024 * 1024, parsePositive, 'bytes per BYTES element'],
  heartbeatMs: ['--heartbeat-ms <ms>', 'TB_HEARTBEAT_MS', 1000, parsePositive, 'link heartbeat interval'],
  shutdownGraceMs: ['--shutdown-grace-ms <ms>', 'TB_SHUTDOWN_GRACE_MS', 10_000, parsePositive, 'time in-flight requests get on SIGTERM'],
  logLevel: ['--log-level <level>', 'TB_LOG_LEVEL', 'info', String, 'pino log level'],
  gpus: ['--gpus <ids>', 'TB_GPUS', [] as string[], parseList, 'GPU ids when nvidia-smi is absent, e.g. 0,1,2,3'],
  gpuMode: ['--gpu-mode <mode>', 'TB_GPU_MODE', 'nvidia', parseGpuMode, 'nvidia | fake (record GPU requests without sending them: tests only)'],
  maxCopies: ['--max-copies <n>', 'TB_MAX_COPIES', 0, parseCount, 'global cap on model copies (0 = none)'],
  maxMemoryMb: ['--max-memory-mb <mb>', 'TB_MAX_MEMORY_MB', 0, parseCount, 'global cap on the sum of memory_mb of copies (0 = none)'],
  autoscaleIntervalMs: ['--autoscale-interval-ms <ms>', 'TB_AUTOSCALE_INTERVAL_MS', 1000, parsePositive, 'how often the autoscaler looks at the queues'],
} as const;

type Key = keyof typeof OPTIONS;

function parseRuntime(v: string): RuntimeKind {
  if (v !== 'docker' && v !== 'process' && v !== 'auto') throw new Error(`runtime must be docker, process or auto (got '${v}')`);
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
  out.adminToken = env.TB_ADMIN_TOKEN || undefined;
  return out as unknown as BrokerConfig;
}
