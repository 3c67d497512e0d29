/**
 * Runs model copies as Docker containers through the daemon's API (dockerode).
 * Images are pulled per pull_policy (image-puller.ts). Access to the Docker socket is root-equivalent.
 */
import * as path from 'node:path';
import Docker from 'dockerode';
import type { Logger } from 'pino';
import { BrokerError } from '../core/errors';
import { ImagePuller } from './image-puller';
import { SECRET_ENV, linkEnv, type CopyHandle, type CopyLaunch, type CopyLimits, type ExitInfo, type Runtime } from './runtime';

export const LABEL_OWNER = 'tensorbroker.owner';
export const LABEL_MODEL = 'tensorbroker.model';
export const LABEL_COPY = 'tensorbroker.copy';
export const LABEL_FINGERPRINT = 'tensorbroker.fingerprint';
export const LABEL_GPUS = 'tensorbroker.gpus';
/** gpuMode 'fake' only: the device request the copy would have had, as JSON. */
export const LABEL_FAKE_DEVICES = 'tensorbroker.fake-device-requests';
/** Where the link socket directory is mounted inside containers. */
export const CONTAINER_SOCKET_DIR = '/run/tensorbroker';

export interface DockerRuntimeOptions {
  /** Docker socket (default /var/run/docker.sock). Ignored when `docker` is given. */
  socketPath?: string;
  docker?: Docker;
  /** Log lines read from a container when it ends (default 50). */
  logLines?: number;
  /** Extra env passed to every container (the broker's own env is NOT passed, unlike the process runtime). */
  env?: Record<string, string>;
  /** Memory limit per container in bytes when the model sets no memory_mb (default DEFAULT_LIMITS.memoryBytes; 0 = none). */
  memoryBytes?: number;
  /** CPU limit per container (cores) when the model sets no cpus (default DEFAULT_LIMITS.cpus; 0 = none). */
  cpus?: number;
  /** json-file log rotation: size of one file (default '10m') and files kept (default 3). */
  logMaxSize?: string;
  logMaxFiles?: number;
  /**
   * 'nvidia' (default): GPU copies get HostConfig.DeviceRequests. 'fake' (tests on
   * hosts without a GPU runtime): the request is recorded in the label
   * tensorbroker.fake-device-requests and NVIDIA_VISIBLE_DEVICES is still set,
   * but no device is requested, so the container starts.
   */
  gpuMode?: 'nvidia' | 'fake';
  /** Environment used for registry credentials (default process.env). */
  credentialsEnv?: NodeJS.ProcessEnv;
  /** User to run containers as ("uid:gid"); default the image's. */
  user?: string;
  /**
   * Host path of the broker's socket folder (the link's socketDir) when the
   * broker itself runs in a container and the daemon sees that folder under
   * another host path. A copy's own folder (`copies/<id>`) is mounted from below it.
   */
  hostSocketDir?: string;
  logger?: Logger;
}

interface Entry {
  handle: CopyHandle;
  exited: Promise<ExitInfo>;
}

function statusOf(err: unknown): number | undefined {
  return (err as { statusCode?: number }).statusCode;
}

function errText(err: unknown): string {
  const e = err as { json?: { message?: string }; message?: string };
  return e.json?.message ?? e.message ?? String(err);
}

/** Splits a multiplexed (non-TTY) docker log buffer into text; tolerates a raw (TTY) one. */
export function demuxLogs(buf: Buffer): string {
  const out: Buffer[] = [];
  let pos = 0;
  while (pos + 8 <= buf.length) {
    const type = buf[pos];
    if (!(type === 0 || type === 1 || type === 2) || buf[pos + 1] !== 0 || buf[pos + 2] !== 0 || buf[pos + 3] !== 0) {
      return buf.toString('utf8'); // not multiplexed
    }
    const len = buf.readUInt32BE(pos + 4);
    out.push(buf.subarray(pos + 8, pos + 8 + len));
    pos += 8 + len;
  }
  return Buffer.concat(out).toString('utf8');
}

function sanitize(s: string): string {
  return s.toLowerCase().replace(/[^a-z0-9_.-]+/g, '-').replace(/^[^a-z0-9]+/, '').slice(0, 40) || 'model';
}

const SAFE_LIMITS: CopyLimits = { readOnlyRoot: true, tmpfsMb: 64, pidsLimit: 512 };

/** Limits of a container whose model sets none: a runaway copy must not take the host down. */
export const DEFAULT_LIMITS = { memoryBytes: 2048 * 1024 * 1024, cpus: 2, logMaxSize: '10m', logMaxFiles: 3 };

export interface HostDefaults {
  /** Memory when the model sets no memory_mb (0 = no limit). */
  memoryBytes?: number;
  /** CPUs when the model sets no cpus (0 = no limit). */
  cpus?: number;
  logMaxSize?: string;
  logMaxFiles?: number;
}

/**
 * HostConfig hardening: limits (the model's, else the defaults), no-new-privileges, no
 * capabilities, read-only root + tmpfs, pids limit, rotated json-file logs.
 */
export function hardenedHostConfig(limits: CopyLimits = SAFE_LIMITS, defaults: HostDefaults = {}): Docker.HostConfig {
  const hc: Docker.HostConfig = {
    SecurityOpt: ['no-new-privileges:true'],
    CapDrop: ['ALL'],
    ReadonlyRootfs: limits.readOnlyRoot,
    PidsLimit: limits.pidsLimit,
    LogConfig: {
      Type: 'json-file',
      Config: { 'max-size': defaults.logMaxSize ?? DEFAULT_LIMITS.logMaxSize, 'max-file': String(defaults.logMaxFiles ?? DEFAULT_LIMITS.logMaxFiles) },
    },
  };
  const mem = limits.memoryMb !== undefined ? limits.memoryMb * 1024 * 1024 : (defaults.memoryBytes ?? DEFAULT_LIMITS.memoryBytes);
  if (mem) {
    hc.Memory = mem;
    hc.MemorySwap = mem; // no swap on top
  }
  const cpus = limits.cpus ?? defaults.cpus ?? DEFAULT_LIMITS.cpus;
  if (cpus) hc.NanoCpus = Math.round(cpus * 1e9);
  if (limits.readOnlyRoot && limits.tmpfsMb > 0) hc.Tmpfs = { '/tmp': `rw,nosuid,nodev,noexec,size=${limits.tmpfsMb}m` };
  return hc;
}

/**
 * Container defaults from the broker's env: TB_COPY_MEMORY_MB (0 = none),
 * TB_COPY_CPUS (0 = none), TB_COPY_LOG_MAX_SIZE (e.g. 10m), TB_COPY_LOG_MAX_FILES.
 * Unset or invalid values keep DEFAULT_LIMITS.
 */
export function hostDefaultsFromEnv(env: NodeJS.ProcessEnv): HostDefaults {
  const num = (v: string | undefined) => (v !== undefined && v.trim() !== '' && Number.isFinite(Number(v)) && Number(v) >= 0 ? Number(v) : undefined);
  const out: HostDefaults = {};
  const mem = num(env.TB_COPY_MEMORY_MB);
  if (mem !== undefined) out.memoryBytes = Math.round(mem * 1024 * 1024);
  const cpus = num(env.TB_COPY_CPUS);
  if (cpus !== undefined) out.cpus = cpus;
  if (env.TB_COPY_LOG_MAX_SIZE && /^\d+[kmg]?$/i.test(env.TB_COPY_LOG_MAX_SIZE)) out.logMaxSize = env.TB_COPY_LOG_MAX_SIZE;
  const files = num(env.TB_COPY_LOG_MAX_FILES);
  if (files !== undefined && Number.isInteger(files) && files >= 1) out.logMaxFiles = files;
  return out;
}

/**
 * The bind of a copy's link folder: its own folder only (`copies/<id>`, never the
 * broker's folder or another copy's), read-only so a process in the container
 * cannot rename or replace the socket (connecting to a socket needs no write access
 * to the mount).
 */
export function linkBind(link: { socketDir?: string; copyDir?: string }, hostSocketDir?: string): string {
  if (!link.socketDir) throw new BrokerError('INTERNAL', 'ipc link without socketDir');
  const host = hostSocketDir ? (link.copyDir ? path.join(hostSocketDir, link.copyDir) : hostSocketDir) : link.socketDir;
  return `${host}:${CONTAINER_SOCKET_DIR}:ro`;
}

export class DockerRuntime implements Runtime {
  readonly kind = 'docker' as const;
  readonly docker: Docker;
  readonly puller: ImagePuller;
  private readonly entries = new Map<string, Entry>();
  private readonly logLines: number;

  private readonly defaults: HostDefaults;

  constructor(private readonly opts: DockerRuntimeOptions = {}) {
    const fromEnv = hostDefaultsFromEnv(process.env);
    this.defaults = {
      memoryBytes: opts.memoryBytes ?? fromEnv.memoryBytes,
      cpus: opts.cpus ?? fromEnv.cpus,
      logMaxSize: opts.logMaxSize ?? fromEnv.logMaxSize,
      logMaxFiles: opts.logMaxFiles ?? fromEnv.logMaxFiles,
    };
    this.docker = opts.docker ?? new Docker({ socketPath: opts.socketPath ?? '/var/run/docker.sock' });
    this.logLines = opts.logLines ?? 50;
    this.puller = new ImagePuller(this.docker, opts.logger, opts.credentialsEnv);
  }

  async start(launch: CopyLaunch): Promise<CopyHandle> {
    const image = launch.image;
    if (!image) throw new BrokerError('INVALID_ARGUMENT', `model ${launch.model} has no image (the docker runtime needs one)`);
    await this.puller.ensure(image, launch.pullPolicy ?? 'if-missing', launch.pullTimeoutMs ?? 600_000);

    const link = launch.link;
    const ipc = link.endpoint.startsWith('ipc://');
    let endpoint = link.endpoint;
    const binds: string[] = [];
    if (ipc) {
      if (!link.socketDir || !link.socketName) throw new BrokerError('INTERNAL', 'ipc link without socketDir/socketName');
      // The only host path a copy sees: its own link socket folder, read-only.
      binds.push(linkBind(link, this.opts.hostSocketDir));
      endpoint = `ipc://${CONTAINER_SOCKET_DIR}/${link.socketName}`;
    }
    const env = { ...(this.opts.env ?? {}), ...launch.env, ...linkEnv(launch, endpoint) };
    for (const k of Object.keys(this.opts.env ?? {})) if (SECRET_ENV.test(k)) delete env[k];
    // Inside the container the visible GPUs are renumbered from 0: a host index here would hide them.
    delete env.CUDA_VISIBLE_DEVICES;

    const hostConfig: Docker.ContainerCreateOptions['HostConfig'] = {
      ...hardenedHostConfig(launch.limits, this.defaults),
      NetworkMode: ipc ? 'none' : 'host',
      Binds: binds,
      AutoRemove: false,
      RestartPolicy: { Name: 'no' },
    };
    const labels: Record<string, string> = { [LABEL_OWNER]: launch.owner, [LABEL_MODEL]: launch.model, [LABEL_COPY]: launch.copyId };
    if (launch.fingerprint) labels[LABEL_FINGERPRINT] = launch.fingerprint;
    if (launch.gpus && launch.gpus.length > 0) {
      labels[LABEL_GPUS] = launch.gpus.join(',');
      const req = launch.gpus.includes('all')
        ? [{ Driver: 'nvidia', Count: -1, Capabilities: [['gpu']] }]
        : [{ Driver: 'nvidia', DeviceIDs: launch.gpus, Capabilities: [['gpu']] }];
      if (this.opts.gpuMode === 'fake') labels[LABEL_FAKE_DEVICES] = JSON.stringify(req);
      else hostConfig.DeviceRequests = req;
    }
    const name = `tb-${sanitize(launch.model)}-${launch.copyId.slice(0, 12)}`;
    let container: Docker.Container;
    try {
      container = await this.docker.createContainer({
        name,
        Image: image,
        Env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
        Labels: labels,
        ...(this.opts.user ? { User: this.opts.user } : {}),
        HostConfig: hostConfig,
      });
    } catch (err) {
      throw new BrokerError('UNAVAILABLE', `cannot create container for model ${launch.model}: ${errText(err)}`);
    }
    try {
      await container.start();
    } catch (err) {
      await container.remove({ force: true }).catch(() => undefined);
      const text = errText(err);
      if (/could not select device driver/i.test(text)) {
        throw new BrokerError('UNAVAILABLE', `no GPU runtime on this host (model ${launch.model} asks for GPUs ${launch.gpus?.join(',')}): ${text}`);
      }
      throw new BrokerError('UNAVAILABLE', `cannot start container ${name}: ${text}`);
    }
    const handle: CopyHandle = {
      kind: 'docker',
      copyId: launch.copyId,
      model: launch.model,
      owner: launch.owner,
      runtimeId: container.id,
      name,
      running: true,
      fingerprint: launch.fingerprint,
      gpus: launch.gpus,
    };
    this.entries.set(launch.copyId, { handle, exited: this.watch(handle) });
    return handle;
  }

  adopt(h: CopyHandle): void {
    if (this.entries.has(h.copyId)) return;
    this.entries.set(h.copyId, { handle: h, exited: this.watch(h) });
  }

  async remove(h: CopyHandle): Promise<void> {
    const c = this.docker.getContainer(h.runtimeId);
    await this.unpause(c);
    await c.remove({ force: true }).catch((err) => {
      if (statusOf(err) !== 404) this.opts.logger?.warn({ container: h.name, err: errText(err) }, 'cannot remove container');
    });
  }

  /** Waits for the container to end, reads its state and logs, removes it. Never rejects. */
  private async watch(h: CopyHandle): Promise<ExitInfo> {
    const c = this.docker.getContainer(h.runtimeId);
    let code: number | null = null;
    try {
      const res = (await c.wait()) as { StatusCode?: number };
      code = res.StatusCode ?? null;
    } catch (err) {
      this.opts.logger?.warn({ container: h.name, err: errText(err) }, 'container wait failed');
    }
    let oomKilled: boolean | undefined;
    try {
      const st = await c.inspect();
      oomKilled = st.State.OOMKilled;
      code = st.State.ExitCode ?? code;
    } catch {
      // Already removed.
    }
    const lastLines = await this.readLogs(c, this.logLines);
    await c.remove({ force: true }).catch(() => undefined);
    this.entries.delete(h.copyId);
    const reason = oomKilled ? `was OOM killed (exit code ${code})` : `exited (code ${code})`;
    return { code, signal: null, oomKilled, reason, lastLines };
  }

  private async readLogs(c: Docker.Container, tail: number): Promise<string[]> {
    try {
      const buf = (await c.logs({ stdout: true, stderr: true, follow: false, tail })) as unknown as Buffer | string;
      const text = Buffer.isBuffer(buf) ? demuxLogs(buf) : String(buf);
      return text.split(/\r?\n/).filter((l, i, a) => l !== '' || i < a.length - 1).slice(-tail);
    } catch {
      return [];
    }
  }

  /** A paused (frozen) container cannot be stopped or killed: thaw it first. */
  private async unpause(c: Docker.Container): Promise<void> {
    try {
      const st = await c.inspect();
      if (st.State.Paused) await c.unpause();
    } catch {
      // Gone already.
    }
  }

  async stop(h: CopyHandle, graceMs: number): Promise<void> {
    const c = this.docker.getContainer(h.runtimeId);
    await this.unpause(c);
    try {
      await c.stop({ t: Math.ceil(graceMs / 1000) });
    } catch (err) {
      const s = statusOf(err);
      if (s !== 304 && s !== 404) this.opts.logger?.warn({ container: h.name, err: errText(err) }, 'container stop failed');
    }
    const e = this.entries.get(h.copyId);
    if (e) await e.exited;
    await c.remove({ force: true }).catch(() => undefined);
  }

  async kill(h: CopyHandle): Promise<void> {
    const c = this.docker.getContainer(h.runtimeId);
    await this.unpause(c);
    try {
      await c.kill();
    } catch (err) {
      const s = statusOf(err);
      if (s !== 409 && s !== 404 && s !== 304) this.opts.logger?.warn({ container: h.name, err: errText(err) }, 'container kill failed');
    }
    const e = this.entries.get(h.copyId);
    if (e) await e.exited;
  }

  exited(h: CopyHandle): Promise<ExitInfo> {
    const e = this.entries.get(h.copyId);
    if (!e) return Promise.resolve({ code: null, signal: null, reason: 'unknown container (already removed)', lastLines: [] });
    return e.exited;
  }

  async logs(h: CopyHandle, tail: number): Promise<string[]> {
    return this.readLogs(this.docker.getContainer(h.runtimeId), tail);
  }

  async list(owner: string): Promise<CopyHandle[]> {
    const cs = await this.docker.listContainers({ all: true, filters: { label: [`${LABEL_OWNER}=${owner}`] } });
    return cs.map((c) => ({
      kind: 'docker' as const,
      copyId: c.Labels[LABEL_COPY] ?? '',
      model: c.Labels[LABEL_MODEL] ?? '',
      owner,
      runtimeId: c.Id,
      name: (c.Names[0] ?? '').replace(/^\//, ''),
      running: c.State === 'running',
      fingerprint: c.Labels[LABEL_FINGERPRINT],
      gpus: c.Labels[LABEL_GPUS] ? c.Labels[LABEL_GPUS].split(',') : undefined,
    }));
  }

  async removeStale(owner: string): Promise<number> {
    const stale = (await this.list(owner)).filter((h) => !this.entries.has(h.copyId));
    await Promise.all(stale.map((h) => this.remove(h)));
    if (stale.length > 0) this.opts.logger?.info({ owner, containers: stale.map((h) => h.name) }, 'removed stale containers');
    return stale.length;
  }

  /** Kills and removes every container this runtime started and still tracks. */
  async close(): Promise<void> {
    await Promise.all([...this.entries.values()].map((e) => this.kill(e.handle)));
  }
}
