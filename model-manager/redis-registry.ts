/**
 * The model registry over Redis, shared by every broker (deployments, several
 * brokers). Layout (keys.ts):
 *
 * - One JSON record per model at {prefix}model:{name}, the names in the set
 *   {prefix}models, change notices on the channel {prefix}events, and the
 *   mark {prefix}registry whose absence means Redis lost its data.
 * - Writes that read then write are Lua scripts (scripts.ts); a plain write is
 *   MULTI (record + set); each is followed by PUBLISH {type, name}.
 * - ioredis reconnects by itself; after a reconnect the whole registry is
 *   reloaded (pub/sub is lossy while disconnected).
 *
 * The rules (cache, validation, precedence, recovery) are in stored-registry.ts.
 */
import Redis from 'ioredis';
import type { Logger } from 'pino';
import { BrokerError } from '../core/errors';
import { registryKeys, DEFAULT_PREFIX, type RegistryKeys } from './keys';
import { createRedis, redactUrl, unreachableMessage } from './redis-connection';
import type { RecordStore, SeedStatus } from './record-store';
import { COMPARE_AND_SET, DELETE_FILE_MODEL, SEED_MODEL } from './scripts';
import { StoredRegistry, type RegistryFile, type RegistryOptions } from './stored-registry';

export { ModelValidationError, type RegistryFile } from './stored-registry';

export interface OpenOptions extends RegistryOptions {
  /** redis:// or rediss:// URL; may carry an ACL user and password. */
  redisUrl: string;
  /** CA certificate (PEM file) for rediss:// servers with a private CA. */
  redisCaFile?: string;
  /** Key prefix, default 'tb:'. */
  prefix?: string;
  /** Never write Redis: the registry is read (and watched) only. */
  readOnly?: boolean;
  /** How long open() waits for Redis, default 10 s. */
  connectTimeoutMs?: number;
  file?: RegistryFile;
}

type Scripted = Redis & {
  tbSeed(model: string, models: string, raw: string, name: string, replaceable: string): Promise<[SeedStatus, string]>;
  tbDeleteFile(model: string, models: string, name: string): Promise<number>;
  tbCompareAndSet(model: string, models: string, raw: string, name: string, expected: string): Promise<number>;
};

function scripted(redis: Redis): Scripted {
  redis.defineCommand('tbSeed', { numberOfKeys: 2, lua: SEED_MODEL });
  redis.defineCommand('tbDeleteFile', { numberOfKeys: 2, lua: DELETE_FILE_MODEL });
  redis.defineCommand('tbCompareAndSet', { numberOfKeys: 2, lua: COMPARE_AND_SET });
  return redis as Scripted;
}

export class RedisRecordStore implements RecordStore {
  readonly kind = 'redis' as const;
  private listener: (name?: string) => void = () => undefined;
  private healthy = true;
  private opened = false;
  private closed = false;

  constructor(
    private readonly redis: Scripted,
    private readonly sub: Redis,
    private readonly keys: RegistryKeys,
    readonly writable: boolean,
    private readonly log: Logger,
  ) {
    this.watchConnection(redis, 'commands');
    this.watchConnection(sub, 'subscriber');
    sub.on('message', (channel: string, message: string) => this.onMessage(channel, message));
  }

  /** Connect both connections and subscribe; a failure names the fix. */
  async connect(url: string, timeoutMs: number): Promise<void> {
    let lastError: Error | undefined;
    const note = (err: Error) => (lastError = err);
    this.redis.on('error', note);
    this.sub.on('error', note);
    try {
      await withTimeout(Promise.all([this.redis.connect(), this.sub.connect()]), timeoutMs, 'no answer within ' + timeoutMs + ' ms');
      await this.sub.subscribe(this.keys.events);
      await this.redis.ping();
    } catch (err) {
      this.redis.disconnect();
      this.sub.disconnect();
      const why = (lastError ?? (err as Error)).message;
      if (/WRONGPASS|NOAUTH|NOPERM|invalid password|invalid username/i.test(why)) {
        throw new BrokerError('UNAVAILABLE', `Redis at ${redactUrl(url)} refused the credentials (${why}): fix the user and password in --redis-url / TB_REDIS_URL`);
      }
      throw new BrokerError('UNAVAILABLE', unreachableMessage(url, why));
    } finally {
      this.redis.off('error', note);
      this.sub.off('error', note);
    }
    this.opened = true;
    // After a reconnect, notices may have been missed (and Redis may have come back empty): reload everything.
    const onReady = () => {
      if (!this.closed) this.listener(undefined);
    };
    this.redis.on('ready', onReady);
    this.sub.on('ready', onReady);
  }

  onNotice(listener: (name?: string) => void): void {
    this.listener = listener;
  }

  read(name: string): Promise<string | null> {
    return this.redis.get(this.keys.model(name));
  }

  async readAll(): Promise<Map<string, string>> {
    const names = (await this.redis.smembers(this.keys.models)).filter((n) => n.length > 0 && !n.includes(':'));
    const out = new Map<string, string>();
    if (names.length === 0) return out;
    const raws = await this.redis.mget(...names.map((n) => this.keys.model(n)));
    names.forEach((n, i) => {
      const raw = raws[i];
      if (raw !== null && raw !== undefined) out.set(n, raw);
    });
    return out;
  }

  async put(name: string, raw: string): Promise<boolean> {
    const key = this.keys.model(name);
    const res = await this.redis.multi().get(key).set(key, raw).sadd(this.keys.models, name).exec();
    if (!res) throw new Error('transaction aborted');
    return res[0][1] == null;
  }

  async remove(name: string): Promise<boolean> {
    const res = await this.redis.multi().del(this.keys.model(name)).srem(this.keys.models, name).exec();
    if (!res) throw new Error('transaction aborted');
    return Number(res[0][1] ?? 0) > 0;
  }

  async seed(name: string, raw: string, replaceable = ''): Promise<{ status: SeedStatus; current?: string }> {
    const [status, current] = await this.redis.tbSeed(this.keys.model(name), this.keys.models, raw, name, replaceable);
    return status === 'shadowed' ? { status, current } : { status };
  }

  async removeFileRecord(name: string): Promise<boolean> {
    return (await this.redis.tbDeleteFile(this.keys.model(name), this.keys.models, name)) === 1;
  }

  async compareAndSet(name: string, raw: string, expected: string | null): Promise<boolean> {
    return (await this.redis.tbCompareAndSet(this.keys.model(name), this.keys.models, raw, name, expected ?? '')) === 1;
  }

  async publish(type: 'put' | 'delete', name: string): Promise<void> {
    await this.redis.publish(this.keys.events, JSON.stringify({ type, name }));
  }

  async hasMark(): Promise<boolean> {
    return (await this.redis.exists(this.keys.mark)) === 1;
  }

  async mark(): Promise<void> {
    await this.redis.set(this.keys.mark, JSON.stringify({ since: new Date().toISOString() }), 'NX');
  }

  async saveMetadata(name: string, json: string): Promise<void> {
    await this.redis.set(this.keys.metadata(name), json);
  }

  async readMetadata(names: string[]): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    if (names.length === 0) return out;
    const raws = await this.redis.mget(...names.map((n) => this.keys.metadata(n)));
    names.forEach((n, i) => {
      const raw = raws[i];
      if (raw !== null && raw !== undefined) out.set(n, raw);
    });
    return out;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // QUIT only over a live connection: while Redis is down it would wait for a reconnect.
    const end = async (c: Redis) => {
      if (c.status === 'ready') await c.quit().catch(() => undefined);
      if (c.status !== 'end') c.disconnect();
    };
    await Promise.all([end(this.sub), end(this.redis)]);
  }

  private watchConnection(conn: Redis, role: string): void {
    conn.on('error', (err: Error) => {
      // Before open() succeeds, connect() reports the failure once, with the fix.
      if (this.closed || !this.opened) return;
      if (this.healthy) this.log.error({ err, role }, 'redis connection error; serving from the cached registry');
      else this.log.debug({ err, role }, 'redis still unavailable');
      this.healthy = false;
    });
    let readies = 0;
    conn.on('ready', () => {
      // The first 'ready' is open(); every later one is a reconnect.
      if (++readies > 1 && !this.closed) this.log.info({ role }, 'redis connection back; reloading the registry');
      this.healthy = true;
    });
  }

  private onMessage(channel: string, message: string): void {
    if (channel !== this.keys.events || this.closed) return;
    let name: unknown;
    try {
      name = (JSON.parse(message) as { name?: unknown }).name;
    } catch {
      name = undefined;
    }
    if (typeof name !== 'string') {
      this.log.warn({ message: message.slice(0, 200) }, 'ignoring a malformed registry event');
      return;
    }
    this.listener(name);
  }
}

export class RedisModelRegistry extends StoredRegistry {
  static async open(opts: OpenOptions): Promise<RedisModelRegistry> {
    const keys = registryKeys(opts.prefix ?? DEFAULT_PREFIX);
    const log = opts.logger.child({ component: 'redis-registry' });
    const redisOpts = {
      // Fail a command after one reconnect attempt instead of queueing it for long:
      // an admin write during an outage answers 503 quickly.
      maxRetriesPerRequest: 1,
      retryStrategy: (times: number) => Math.min(100 * times, 2000),
      lazyConnect: true,
      // On close during an outage ioredis waits this long for a dead socket to close (default 2 s).
      disconnectTimeout: 200,
    };
    const settings = { url: opts.redisUrl, caFile: opts.redisCaFile };
    const redis = scripted(createRedis(settings, redisOpts));
    const sub = createRedis(settings, { ...redisOpts, maxRetriesPerRequest: null });
    const store = new RedisRecordStore(redis, sub, keys, !opts.readOnly, log);
    await store.connect(opts.redisUrl, opts.connectTimeoutMs ?? 10_000);
    const reg = new RedisModelRegistry(store, opts);
    try {
      await reg.start();
    } catch (err) {
      await store.close();
      throw err;
    }
    log.info({ models: reg.list().length, prefix: keys.prefix, url: redactUrl(opts.redisUrl), readOnly: !!opts.readOnly, signed: !!opts.signingKey }, 'model registry open (Redis)');
    return reg;
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(message)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}
