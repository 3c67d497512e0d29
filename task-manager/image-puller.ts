/**
 * Makes an image present before a container is created, per pull_policy:
 * `never` (must be local), `if-missing` (pull when absent), `always` (pull on
 * every start; concurrent starts share one pull). Credentials come from the
 * environment (TB_REGISTRY_USERNAME / TB_REGISTRY_PASSWORD, sent only to
 * TB_REGISTRY_SERVER) or a docker config.json ($DOCKER_CONFIG/config.json,
 * else ~/.docker/config.json, `auths` entries). Progress goes to the log.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type Docker from 'dockerode';
import type { Logger } from 'pino';
import { BrokerError } from '../core/errors';

export type PullPolicy = 'always' | 'if-missing' | 'never';

export interface RegistryAuth {
  username: string;
  password: string;
  serveraddress: string;
}

const DOCKER_HUB = 'https://index.docker.io/v1/';

/** The registry host of an image reference ("docker.io" style names map to Docker Hub). */
export function registryOf(image: string): string {
  const first = image.split('/')[0];
  if (image.includes('/') && (first.includes('.') || first.includes(':') || first === 'localhost')) return first;
  return 'docker.io';
}

function hubKeys(host: string): string[] {
  return host === 'docker.io' ? [DOCKER_HUB, 'docker.io', 'index.docker.io', 'https://index.docker.io/v1', 'registry-1.docker.io'] : [host, `https://${host}`, `http://${host}`];
}

/**
 * Credentials for `image`; undefined = anonymous. They go only where they belong:
 * TB_REGISTRY_USERNAME / TB_REGISTRY_PASSWORD only to the registry named by
 * TB_REGISTRY_SERVER (unset: to no registry at all, since a model entry may name
 * any host), and a docker config.json entry only to the exact registry it names.
 */
export function findAuth(image: string, env: NodeJS.ProcessEnv = process.env): RegistryAuth | undefined {
  const host = registryOf(image);
  const server = host === 'docker.io' ? DOCKER_HUB : host;
  const only = env.TB_REGISTRY_SERVER;
  if (env.TB_REGISTRY_USERNAME && env.TB_REGISTRY_PASSWORD && only && (only === host || hubKeys(host).includes(only))) {
    return { username: env.TB_REGISTRY_USERNAME, password: env.TB_REGISTRY_PASSWORD, serveraddress: server };
  }
  const file = path.join(env.DOCKER_CONFIG ?? path.join(env.HOME ?? os.homedir(), '.docker'), 'config.json');
  let cfg: { auths?: Record<string, { auth?: string; username?: string; password?: string }> };
  try {
    cfg = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch {
    return undefined;
  }
  for (const key of hubKeys(host)) {
    const a = cfg.auths?.[key];
    if (!a) continue;
    if (a.username && a.password) return { username: a.username, password: a.password, serveraddress: server };
    if (a.auth) {
      const text = Buffer.from(a.auth, 'base64').toString('utf8');
      const i = text.indexOf(':');
      if (i > 0) return { username: text.slice(0, i), password: text.slice(i + 1), serveraddress: server };
    }
  }
  return undefined;
}

interface Progress {
  status?: string;
  id?: string;
  progress?: string;
  error?: string;
  errorDetail?: { message?: string };
}

export class ImagePuller {
  private readonly pulls = new Map<string, Promise<void>>();

  constructor(
    private readonly docker: Docker,
    private readonly logger?: Logger,
    private readonly env: NodeJS.ProcessEnv = process.env,
    /** Minimum time between two progress log lines of one pull. */
    private readonly progressEveryMs = 2000,
  ) {}

  async present(image: string): Promise<boolean> {
    try {
      await this.docker.getImage(image).inspect();
      return true;
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode === 404) return false;
      throw new BrokerError('UNAVAILABLE', `cannot inspect image ${image}: ${(err as Error).message}`);
    }
  }

  /** Resolves once `image` is usable under `policy`; rejects with a clear BrokerError. */
  async ensure(image: string, policy: PullPolicy, timeoutMs: number): Promise<void> {
    if (policy !== 'always' && (await this.present(image))) return;
    if (policy === 'never') {
      throw new BrokerError('UNAVAILABLE', `image ${image} not found locally and pull_policy is never (load or build it on this host)`);
    }
    let p = this.pulls.get(image);
    if (!p) {
      p = this.pull(image, timeoutMs).finally(() => this.pulls.delete(image));
      this.pulls.set(image, p);
    }
    await p;
  }

  private async pull(image: string, timeoutMs: number): Promise<void> {
    const auth = findAuth(image, this.env);
    const log = this.logger?.child({ image, registry: registryOf(image), authenticated: !!auth });
    log?.info({ timeoutMs }, 'pulling image');
    const t0 = Date.now();
    const hint = auth
      ? ' (credentials were sent: check them)'
      : ` (no credentials for ${registryOf(image)}: set TB_REGISTRY_SERVER=${registryOf(image)} with TB_REGISTRY_USERNAME/TB_REGISTRY_PASSWORD, or docker login ${registryOf(image)})`;
    let stream: (NodeJS.ReadableStream & { destroy?: () => void }) | undefined;
    let timer: NodeJS.Timeout | undefined;
    // Aborting the API request makes the daemon give the pull up too.
    const abort = new AbortController();
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        abort.abort();
        reject(new BrokerError('UNAVAILABLE', `pull of image ${image} timed out after ${timeoutMs} ms (pull_timeout_ms)`));
      }, timeoutMs);
    });
    try {
      const opened = this.docker.pull(image, { ...(auth ? { authconfig: auth } : {}), abortSignal: abort.signal }) as Promise<NodeJS.ReadableStream>;
      opened.catch(() => undefined); // settled by the race below
      const s = await Promise.race([opened, timedOut]);
      stream = s;
      const done = new Promise<void>((resolve, reject) => {
        let last = 0;
        let layersDone = 0;
        this.docker.modem.followProgress(
          s,
          (err: Error | null, out: Progress[]) => {
            const bad = (out ?? []).find((o) => o.error);
            if (err || bad) reject(new Error(err?.message ?? bad?.errorDetail?.message ?? bad?.error));
            else resolve();
          },
          (ev: Progress) => {
            if (ev.status === 'Pull complete' || ev.status === 'Already exists') layersDone++;
            const now = Date.now();
            if (now - last >= this.progressEveryMs || ev.status?.startsWith('Status:') || ev.status?.startsWith('Digest:')) {
              last = now;
              log?.info({ status: ev.status, layer: ev.id, progress: ev.progress, layersDone, ms: now - t0 }, 'pull progress');
            }
          },
        );
      });
      await Promise.race([done, timedOut]);
      log?.info({ ms: Date.now() - t0 }, 'image pulled');
    } catch (err) {
      stream?.destroy?.();
      if (err instanceof BrokerError) {
        log?.error({ err: err.message }, 'pull failed');
        throw err;
      }
      const e = err as { statusCode?: number; json?: { message?: string }; message?: string };
      const text = e.json?.message ?? e.message ?? String(err);
      const authish = e.statusCode === 401 || e.statusCode === 403 || /unauthorized|denied|authentication|credentials/i.test(text);
      const missing = e.statusCode === 404 || /not found|manifest unknown/i.test(text);
      const msg = authish
        ? `cannot pull image ${image}: access denied by the registry${hint}: ${text}`
        : missing
          ? `cannot pull image ${image}: it does not exist in the registry: ${text}`
          : `cannot pull image ${image}: ${text}` +
            // Offline (a registry that does not resolve or answer): say how to get the image without one.
            (/ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ETIMEDOUT|no such host|dial tcp|lookup /i.test(text)
              ? ' (the registry cannot be reached: build the image on this host, e.g. `tensorbroker build <project>` or `npm run images`, or set pull_policy: never)'
              : '');
      log?.error({ err: text, ms: Date.now() - t0 }, 'pull failed');
      throw new BrokerError('UNAVAILABLE', msg);
    } finally {
      clearTimeout(timer);
    }
  }
}
