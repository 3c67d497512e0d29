/**
 * Where model copies run. The task manager only ever talks to this interface;
 * `ProcessRuntime` (child processes) and `DockerRuntime` (containers) implement it.
 */

/** How a copy reaches the broker's link server. */
export interface LinkInfo {
  /** The endpoint the broker bound, as seen from the host (ipc:///..., tcp://127.0.0.1:port). */
  endpoint: string;
  /** For ipc endpoints: the host directory holding the socket (bind-mounted into containers). */
  socketDir?: string;
  /** For ipc endpoints: the socket file name inside socketDir. */
  socketName?: string;
  /** For a copy's own ipc socket: its folder relative to the broker's socket folder (`copies/<id>`). */
  copyDir?: string;
  heartbeatMs: number;
  /** The copy's DEALER routing id (TB_ROUTING_ID): `<copy id>.<token>`, unguessable, never listed or logged. */
  routingId?: string;
  /** The copy's secret (TB_COPY_SECRET), sent back in READY. Never listed or logged. */
  secret?: string;
  /** CURVE: the broker's public key (TB_CURVE_SERVER_KEY) and the copy's key pair (never listed or logged). */
  curveServerKey?: string;
  curvePublicKey?: string;
  curveSecretKey?: string;
}

export interface CopyLaunch {
  copyId: string;
  model: string;
  version: string;
  /** Docker runtime: image to run. */
  image?: string;
  /** Docker runtime: when to pull the image (default if-missing). */
  pullPolicy?: 'always' | 'if-missing' | 'never';
  /** Docker runtime: time a pull may take (default 10 min). */
  pullTimeoutMs?: number;
  /** Docker runtime: container limits and hardening (safe defaults when absent). */
  limits?: CopyLimits;
  /** What makes this copy (image, version, env...): stored as a label, compared on adoption. */
  fingerprint?: string;
  /** Process runtime: argv, no shell. */
  command?: string[];
  /** Process runtime: working directory (default: the runtime's cwd option, else process.cwd()). */
  cwd?: string;
  /** The spec's env. */
  env: Record<string, string>;
  /** Where the spec came from: env names that can load code are refused from 'api' under the process runtime. */
  envSource?: 'file' | 'api';
  /** Broker id; containers are labelled with it. */
  owner: string;
  /** Host GPU ids to give the copy; ['all'] = every GPU. */
  gpus?: string[];
  /** Rows per batch from the registry, passed to the copy as TB_BATCH_SIZE. */
  batchSize?: number;
  link: LinkInfo;
}

export interface CopyLimits {
  memoryMb?: number;
  cpus?: number;
  readOnlyRoot: boolean;
  /** tmpfs at /tmp (MB) when the root is read-only; 0 = none. */
  tmpfsMb: number;
  pidsLimit: number;
}

export interface CopyHandle {
  readonly kind: 'docker' | 'process';
  readonly copyId: string;
  readonly model: string;
  readonly owner: string;
  /** Container id or pid (as a string). */
  readonly runtimeId: string;
  /** Container name or the command's program. */
  readonly name: string;
  readonly pid?: number;
  /** list(): whether the container is running (adoptable) or exited/created (stale). */
  readonly running?: boolean;
  /** list(): the fingerprint and GPUs labels the copy was started with. */
  readonly fingerprint?: string;
  readonly gpus?: string[];
}

export interface ExitInfo {
  /** Exit code, or null when killed by a signal (process runtime). */
  code: number | null;
  signal: string | null;
  oomKilled?: boolean;
  /** One line for humans: "exited with code 3", "killed by SIGKILL", "OOM killed", ... */
  reason: string;
  /** Last log lines of the copy (stdout and stderr interleaved), oldest first. */
  lastLines: string[];
}

export interface Runtime {
  readonly kind: 'docker' | 'process';
  /** Starts a copy. Rejects with a clear message when it cannot (missing image, no GPU runtime, bad command). */
  start(spec: CopyLaunch): Promise<CopyHandle>;
  /** Asks the copy to stop (SIGTERM / docker stop), kills it after graceMs, and cleans it up. Idempotent. */
  stop(h: CopyHandle, graceMs: number): Promise<void>;
  /** Kills the copy at once. Idempotent. */
  kill(h: CopyHandle): Promise<void>;
  /** Resolves once, when the copy has ended (and its logs were read). Never rejects. */
  exited(h: CopyHandle): Promise<ExitInfo>;
  /** Last `tail` log lines. */
  logs(h: CopyHandle, tail: number): Promise<string[]>;
  /** Copies this runtime knows of that belong to `owner`. */
  list(owner: string): Promise<CopyHandle[]>;
  /** Removes leftovers of an earlier run of broker `owner` (containers labelled with it). Returns how many. */
  removeStale(owner: string): Promise<number>;
  /** Takes over a running copy found by list() (broker restart): watches it like one it started. */
  adopt?(h: CopyHandle): void;
  /** Stops (if running) and removes one copy found by list(). */
  remove?(h: CopyHandle): Promise<void>;
  close(): Promise<void>;
}

/** Env names never passed from the broker's environment to a container (DockerRuntime `env` option). */
export const SECRET_ENV = /(^TB_ADMIN_TOKEN$|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE_KEY)/i;

/**
 * The broker's environment a process copy gets: only these names (an
 * allow-list; anything else, e.g. TB_REDIS_URL, DATABASE_URL or *_API_KEY, stays
 * with the broker). The link variables (linkEnv) and the spec's env come on top.
 */
export const PASSED_ENV = /^(PATH|HOME|USER|LOGNAME|SHELL|LANG|LANGUAGE|LC_[A-Z_]+|TZ|TMPDIR|TMP|TEMP|TERM|SYSTEMROOT)$/;

/**
 * Env names that make a process load or run code, or escape its GPU pinning:
 * under the process runtime they are taken only from the models file, never
 * from the admin API (or a registry record it wrote).
 */
export const CODE_LOADING_ENV =
  /^(PATH|HOME|NODE_.*|NPM_CONFIG_.*|LD_.*|DYLD_.*|PYTHON.*|PERL.*|RUBY.*|GEM_.*|BUNDLE_.*|JAVA_TOOL_OPTIONS|_JAVA_OPTIONS|JDK_JAVA_OPTIONS|CLASSPATH|BASH_ENV|ENV|SHELLOPTS|BASHOPTS|PS4|IFS|CDPATH|GCONV_PATH|GLIBC_TUNABLES|LOCPATH|NLSPATH|MALLOC_.*|OPENSSL_CONF|OPENSSL_ENGINES|OPENSSL_MODULES|LUA_.*|TCLLIBPATH|XDG_.*|CUDA_.*|NVIDIA_.*|TB_.*)$/i;

/** The spec env names the process runtime refuses when the spec comes from the admin API. */
export function refusedApiEnv(env: Record<string, string>, source: 'file' | 'api' | undefined): string[] {
  if (source === 'file') return [];
  return Object.keys(env).filter((k) => CODE_LOADING_ENV.test(k));
}

/** The broker's env names that pass PASSED_ENV (plus `extra` names). */
export function passedEnv(from: NodeJS.ProcessEnv, extra: readonly string[] = []): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(from)) if (v !== undefined && (PASSED_ENV.test(k) || extra.includes(k))) env[k] = v;
  return env;
}

/** The env every copy gets on top of the spec's env: how to reach the broker and who it is. */
export function linkEnv(launch: CopyLaunch, endpoint: string): Record<string, string> {
  const env: Record<string, string> = {
    TB_ENDPOINT: endpoint,
    TB_COPY_ID: launch.copyId,
    TB_MODEL: launch.model,
    TB_MODEL_VERSION: launch.version,
    TB_HEARTBEAT_MS: String(launch.link.heartbeatMs),
  };
  if (launch.link.routingId) env.TB_ROUTING_ID = launch.link.routingId;
  if (launch.link.secret) env.TB_COPY_SECRET = launch.link.secret;
  if (launch.link.curveServerKey) {
    env.TB_CURVE_SERVER_KEY = launch.link.curveServerKey;
    if (launch.link.curvePublicKey) env.TB_CURVE_PUBLIC_KEY = launch.link.curvePublicKey;
    if (launch.link.curveSecretKey) env.TB_CURVE_SECRET_KEY = launch.link.curveSecretKey;
  }
  if (launch.batchSize !== undefined) env.TB_BATCH_SIZE = String(launch.batchSize);
  if (launch.gpus && launch.gpus.length > 0) {
    env.NVIDIA_VISIBLE_DEVICES = launch.gpus.join(',');
    if (!launch.gpus.includes('all')) env.CUDA_VISIBLE_DEVICES = launch.gpus.join(',');
  }
  return env;
}

/** Keeps the last `size` lines of a stream of chunks. */
export class LineRing {
  private readonly lines: string[] = [];
  private partial = '';

  constructor(private readonly size = 50) {}

  push(chunk: Buffer | string): string[] {
    const text = this.partial + chunk.toString();
    const parts = text.split(/\r?\n/);
    this.partial = parts.pop() ?? '';
    if (this.partial.length > 4096) {
      parts.push(this.partial);
      this.partial = '';
    }
    for (const p of parts) this.add(p);
    return parts;
  }

  /** Flushes a trailing line without newline. */
  end(): void {
    if (this.partial) this.add(this.partial);
    this.partial = '';
  }

  tail(n = this.size): string[] {
    const all = this.partial ? [...this.lines, this.partial] : this.lines;
    return all.slice(Math.max(0, all.length - n));
  }

  private add(line: string): void {
    if (line.length > 2000) line = line.slice(0, 2000) + '…';
    this.lines.push(line);
    if (this.lines.length > this.size) this.lines.shift();
  }
}

/** The last non-empty line of a log tail, for error messages. */
export function lastLine(lines: readonly string[]): string {
  for (let i = lines.length - 1; i >= 0; i--) {
    const l = lines[i].trim();
    if (l) return l;
  }
  return '';
}
