/**
 * ModelRegistry over Redis, shared by every broker.
 *
 * - One JSON record per model at {prefix}model:{name}, the names in the set
 *   {prefix}models, and change notices on the channel {prefix}events.
 * - Reads (get/list) come from an in-memory cache, so serving goes on through
 *   a Redis outage; ioredis reconnects by itself and the cache is resynced
 *   when it does (pub/sub is lossy while disconnected).
 * - Every write is MULTI (record + set) then PUBLISH {type, name}. Every
 *   broker applies a notice by re-reading the record, and emits one 'change'
 *   only if the spec actually changed. The writer re-reads at once (so its own
 *   answers are current) and its echo then finds nothing new: exactly one
 *   'change' per effective write per process, none for a no-op write.
 * - `command`/`cwd` are never stored: they are kept in memory from the local
 *   models.yaml and merged into returned specs by model name.
 */
import { EventEmitter } from 'node:events';
import Redis from 'ioredis';
import type { Logger } from 'pino';
import { BrokerError } from '../core/errors';
import { registryKeys, DEFAULT_PREFIX, type RegistryKeys } from './keys';
import { redactSpec, specToEntry, validateEntry, checkModelName } from './schema';
import type { ModelRegistry, ModelSpec, RegistryEvent, SavedMetadata } from '../core/model-spec';

/** What the registry takes from models.yaml (see models-file.ts). */
export interface RegistryFile {
  specs: ModelSpec[];
  path: string;
  /** Names of invalid entries in the file: their Redis records are left alone rather than deleted. */
  invalid?: string[];
}

export interface OpenOptions {
  redisUrl: string;
  /** Key prefix, default 'tb:'. */
  prefix?: string;
  logger: Logger;
  /** Seed Redis from this file (precedence in README). Omit to only read the shared registry. */
  file?: RegistryFile;
  /** How long open() waits for Redis, default 10 s. */
  connectTimeoutMs?: number;
}

/** A write rejected by validation; `errors` holds one message per problem. */
export class ModelValidationError extends BrokerError {
  constructor(readonly errors: string[]) {
    super('INVALID_ARGUMENT', errors.join('; '));
    this.name = 'ModelValidationError';
  }
}

type StoredRecord = Omit<ModelSpec, 'command' | 'cwd'>;

type Launch = { command: string[]; cwd?: string };

/** JSON with sorted keys, to compare specs. */
function canonical(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) =>
    v && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : v,
  );
}

function toRecord(spec: ModelSpec, source: ModelSpec['source']): StoredRecord {
  const { command: _c, cwd: _d, ...rest } = spec;
  return { ...rest, env: { ...spec.env }, source };
}

/** RFC 7386 JSON merge patch: objects merge, null removes, anything else replaces. */
function mergePatch(target: Record<string, unknown>, patch: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...target };
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else if (typeof v === 'object' && !Array.isArray(v) && typeof out[k] === 'object' && out[k] !== null && !Array.isArray(out[k])) {
      out[k] = mergePatch(out[k] as Record<string, unknown>, v as Record<string, unknown>);
    } else out[k] = v;
  }
  return out;
}

export class RedisModelRegistry extends EventEmitter implements ModelRegistry {
  /** Specs as stored in Redis (no command/cwd). */
  private readonly cache = new Map<string, ModelSpec>();
  /** command/cwd from the local models.yaml, by model name. */
  private launch = new Map<string, Launch>();
  /** Serialises refreshes so events for one name apply in order. */
  private chain: Promise<void> = Promise.resolve();
  private healthy = true;
  private closed = false;

  private constructor(
    private readonly redis: Redis,
    private readonly sub: Redis,
    private readonly keys: RegistryKeys,
    private readonly log: Logger,
  ) {
    super();
  }

  static async open(opts: OpenOptions): Promise<RedisModelRegistry> {
    const keys = registryKeys(opts.prefix ?? DEFAULT_PREFIX);
    const log = opts.logger.child({ component: 'model-registry' });
    const redisOpts = {
      // Fail a command after one reconnect attempt instead of queueing it for long:
      // an admin write during an outage answers 503 quickly.
      maxRetriesPerRequest: 1,
      retryStrategy: (times: number) => Math.min(100 * times, 2000),
      lazyConnect: true,
      // On close during an outage ioredis waits this long for a dead socket to close (default 2 s).
      disconnectTimeout: 200,
    };
    const redis = new Redis(opts.redisUrl, redisOpts);
    const sub = new Redis(opts.redisUrl, { ...redisOpts, maxRetriesPerRequest: null });
    const reg = new RedisModelRegistry(redis, sub, keys, log);
    reg.watchConnection(redis, 'commands');
    reg.watchConnection(sub, 'subscriber');
    try {
      const timeout = opts.connectTimeoutMs ?? 10_000;
      await withTimeout(Promise.all([redis.connect(), sub.connect()]), timeout, `redis at ${opts.redisUrl} did not answer within ${timeout} ms`);
      sub.on('message', (channel: string, message: string) => reg.onMessage(channel, message));
      await sub.subscribe(keys.events);
      if (opts.file) await reg.seed(opts.file);
      await reg.resync();
    } catch (err) {
      redis.disconnect();
      sub.disconnect();
      throw err;
    }
    // After a reconnect, notices may have been missed: reload everything.
    const onReady = () => {
      if (!reg.closed) void reg.resync().catch((err: unknown) => reg.log.error({ err }, 'registry resync failed'));
    };
    redis.on('ready', onReady);
    sub.on('ready', onReady);
    log.info({ models: reg.cache.size, prefix: keys.prefix }, 'model registry open');
    return reg;
  }

  get(name: string): ModelSpec | undefined {
    const spec = this.cache.get(name);
    return spec && this.withLaunch(spec);
  }

  /** {prefix}model:{name}:last-ready (names hold no ':', so it never meets a model key): the model's last READY metadata. */
  async saveMetadata(name: string, saved: SavedMetadata): Promise<void> {
    await this.redis.set(`${this.keys.model(name)}:last-ready`, JSON.stringify(saved));
  }

  async lastMetadata(name: string): Promise<SavedMetadata | undefined> {
    const raw = await this.redis.get(`${this.keys.model(name)}:last-ready`);
    return raw ? (JSON.parse(raw) as SavedMetadata) : undefined;
  }

  list(): ModelSpec[] {
    return [...this.cache.values()].map((s) => this.withLaunch(s)).sort((a, b) => (a.name < b.name ? -1 : 1));
  }

  /** True when the local models.yaml gives this name a command (it then needs no image). */
  hasFileCommand(name: string): boolean {
    return this.launch.has(name);
  }

  /**
   * Create or replace a model. `command`/`cwd` in `spec` are ignored (never
   * stored). Resolves once this broker's cache holds the new spec.
   */
  async put(spec: ModelSpec, source: ModelSpec['source']): Promise<{ created: boolean; spec: ModelSpec }> {
    const v = validateEntry(spec.name, specToEntry(spec), { allowCommand: false, requireLaunch: false, source });
    if (v.errors) throw new ModelValidationError(v.errors);
    const key = this.keys.model(spec.name);
    const record = toRecord(v.spec, source);
    const res = await this.run(() =>
      this.redis.multi().get(key).set(key, JSON.stringify(record)).sadd(this.keys.models, spec.name).exec(),
    );
    const created = res?.[0]?.[1] == null;
    await this.publish('put', spec.name);
    await this.enqueue(() => this.refresh(spec.name));
    this.log.info({ model: spec.name, source, created, spec: redactSpec(record) }, created ? 'model created' : 'model replaced');
    return { created, spec: this.get(spec.name) ?? this.withLaunch({ ...v.spec, source }) };
  }

  /**
   * Merge `partial` (JSON merge patch: null removes a field, `env` merges key
   * by key) into the current entry, validate the result, store it with
   * source 'api'. Throws BrokerError NOT_FOUND or ModelValidationError.
   */
  async patch(name: string, partial: Record<string, unknown>): Promise<ModelSpec> {
    const current = await this.readRecord(name);
    if (!current) throw new BrokerError('NOT_FOUND', `model "${name}" not found`);
    const base = specToEntry(current);
    const p = { ...partial };
    // `address` is Inferoxy's name for `image`: patch the image.
    if ('address' in p && !('image' in p)) {
      p.image = p.address;
      delete p.address;
    }
    const merged = mergePatch(base, p);
    const v = validateEntry(name, merged, { allowCommand: false, requireLaunch: !this.hasFileCommand(name), source: 'api' });
    if (v.errors) throw new ModelValidationError(v.errors);
    return (await this.put(v.spec, 'api')).spec;
  }

  /** Remove a model. Resolves false if it did not exist. */
  async delete(name: string): Promise<boolean> {
    const key = this.keys.model(name);
    const res = await this.run(() => this.redis.multi().del(key).srem(this.keys.models, name).exec());
    const existed = Number(res?.[0]?.[1] ?? 0) > 0;
    if (existed) {
      await this.publish('delete', name);
      this.log.info({ model: name }, 'model deleted');
    }
    await this.enqueue(() => this.refresh(name));
    return existed;
  }

  /** Re-apply a (re)loaded models.yaml, e.g. on SIGHUP. Same precedence as at startup. */
  async reload(file: RegistryFile): Promise<void> {
    await this.seed(file);
    await this.resync();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.chain;
    // QUIT only over a live connection: while Redis is down it would wait for a reconnect.
    const end = async (c: Redis) => {
      if (c.status === 'ready') await c.quit().catch(() => undefined);
      if (c.status !== 'end') c.disconnect();
    };
    await Promise.all([end(this.sub), end(this.redis)]);
  }

  // ---- internals ----

  private withLaunch(spec: ModelSpec): ModelSpec {
    const l = this.launch.get(spec.name);
    const out: ModelSpec = { ...spec, env: { ...spec.env } };
    if (l) {
      out.command = [...l.command];
      if (l.cwd !== undefined) out.cwd = l.cwd;
    }
    return out;
  }

  private watchConnection(conn: Redis, role: string): void {
    conn.on('error', (err: Error) => {
      if (this.closed) return;
      if (this.healthy) this.log.error({ err: err.message, role }, 'redis connection error; serving from the cached registry');
      else this.log.debug({ err: err.message, role }, 'redis still unavailable');
      this.healthy = false;
    });
    conn.on('ready', () => {
      if (!this.healthy) this.log.info({ role }, 'redis connection back');
      this.healthy = true;
    });
  }

  /** Run a Redis command, turning connection failures into UNAVAILABLE. */
  private async run<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof BrokerError) throw err;
      throw new BrokerError('UNAVAILABLE', `model registry unavailable: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  private async publish(type: 'put' | 'delete', name: string): Promise<void> {
    try {
      await this.redis.publish(this.keys.events, JSON.stringify({ type, name }));
    } catch (err) {
      // The write is done; other brokers catch up on their next resync.
      this.log.error({ err, model: name }, 'could not publish a registry event');
    }
  }

  private onMessage(channel: string, message: string): void {
    if (channel !== this.keys.events || this.closed) return;
    let name: unknown;
    try {
      name = (JSON.parse(message) as { name?: unknown }).name;
    } catch {
      name = undefined;
    }
    if (typeof name !== 'string' || checkModelName(name)) {
      this.log.warn({ message: message.slice(0, 200) }, 'ignoring a malformed registry event');
      return;
    }
    void this.enqueue(() => this.refresh(name)).catch((err: unknown) =>
      this.log.error({ err, model: name }, 'could not apply a registry event; keeping the cached spec'),
    );
  }

  private enqueue(task: () => Promise<void>): Promise<void> {
    const next = this.chain.then(task);
    this.chain = next.catch(() => undefined);
    return next;
  }

  /** Read and validate one record; undefined if absent. Throws on a Redis error. */
  private async readRecord(name: string): Promise<ModelSpec | undefined> {
    const raw = await this.run(() => this.redis.get(this.keys.model(name)));
    return raw === null ? undefined : this.parseRecord(name, raw);
  }

  private parseRecord(name: string, raw: string): ModelSpec | undefined {
    let rec: Record<string, unknown>;
    try {
      rec = JSON.parse(raw) as Record<string, unknown>;
    } catch {
      this.log.error({ model: name }, 'registry record is not JSON; ignored');
      return undefined;
    }
    const { source, ...entry } = rec;
    const v = validateEntry(name, entry, {
      allowCommand: false,
      requireLaunch: false,
      source: source === 'api' ? 'api' : 'file',
    });
    if (v.errors) {
      this.log.error({ model: name, errors: v.errors }, 'registry record is invalid; ignored');
      return undefined;
    }
    return v.spec;
  }

  /** Bring one name of the cache in line with Redis; emit 'change' if it changed. */
  private async refresh(name: string): Promise<void> {
    const raw = await this.run(() => this.redis.get(this.keys.model(name)));
    const spec = raw === null ? undefined : this.parseRecord(name, raw);
    if (raw !== null && spec === undefined) return; // invalid record: keep what we had
    this.apply(name, spec);
  }

  private apply(name: string, spec: ModelSpec | undefined): void {
    const previous = this.cache.get(name);
    if (spec === undefined) {
      if (!previous) return;
      this.cache.delete(name);
      this.emitChange({ type: 'delete', name, previous: this.withLaunch(previous) });
      return;
    }
    if (previous && canonical(previous) === canonical(spec)) return;
    this.cache.set(name, spec);
    const e: RegistryEvent = { type: 'put', name, spec: this.withLaunch(spec) };
    if (previous) e.previous = this.withLaunch(previous);
    this.emitChange(e);
  }

  private emitChange(e: RegistryEvent): void {
    try {
      this.emit('change', e);
    } catch (err) {
      this.log.error({ err, model: e.name }, "a registry 'change' listener threw");
    }
  }

  /** Reload every record (after open and after a reconnect). */
  private resync(): Promise<void> {
    return this.enqueue(async () => {
      const names = await this.run(() => this.redis.smembers(this.keys.models));
      const valid = names.filter((n) => !checkModelName(n));
      const raws = valid.length > 0 ? await this.run(() => this.redis.mget(...valid.map((n) => this.keys.model(n)))) : [];
      const seen = new Set<string>();
      valid.forEach((name, i) => {
        const raw = raws[i];
        if (raw === null || raw === undefined) return;
        const spec = this.parseRecord(name, raw);
        if (spec === undefined) {
          if (this.cache.has(name)) seen.add(name); // keep the cached one
          return;
        }
        seen.add(name);
        this.apply(name, spec);
      });
      for (const name of [...this.cache.keys()]) if (!seen.has(name)) this.apply(name, undefined);
    });
  }

  /**
   * Seed Redis from models.yaml:
   *  - a Redis entry with source 'api' wins over the file entry of the same name (warning logged);
   *  - file entries overwrite Redis entries with source 'file';
   *  - Redis entries with source 'file' no longer in the file are deleted
   *    (except names of invalid entries in the file, which are left alone).
   * Commands from the file are kept in memory for every name in it.
   */
  private async seed(file: RegistryFile): Promise<void> {
    this.launch = new Map(
      file.specs.filter((s) => s.command).map((s) => [s.name, { command: [...s.command!], cwd: s.cwd }] as const),
    );
    const inFile = new Set(file.specs.map((s) => s.name));
    const keep = new Set([...inFile, ...(file.invalid ?? [])]);
    const changed: { type: 'put' | 'delete'; name: string }[] = [];

    for (const spec of file.specs) {
      const key = this.keys.model(spec.name);
      const raw = await this.run(() => this.redis.get(key));
      const existing = raw === null ? undefined : this.parseRecord(spec.name, raw);
      if (existing?.source === 'api') {
        this.log.warn(
          { model: spec.name, file: file.path },
          `models.yaml entry "${spec.name}" is shadowed by an entry created through the admin API; delete that entry to use the file's`,
        );
        continue;
      }
      const record = JSON.stringify(toRecord(spec, 'file'));
      if (raw !== null && existing && canonical(existing) === canonical(toRecord(spec, 'file'))) {
        await this.run(() => this.redis.sadd(this.keys.models, spec.name));
        continue;
      }
      await this.run(() => this.redis.multi().set(key, record).sadd(this.keys.models, spec.name).exec());
      changed.push({ type: 'put', name: spec.name });
    }

    const names = await this.run(() => this.redis.smembers(this.keys.models));
    for (const name of names) {
      if (keep.has(name) || checkModelName(name)) continue;
      const key = this.keys.model(name);
      const raw = await this.run(() => this.redis.get(key));
      if (raw === null) {
        await this.run(() => this.redis.srem(this.keys.models, name));
        continue;
      }
      let source: unknown;
      try {
        source = (JSON.parse(raw) as { source?: unknown }).source;
      } catch {
        source = undefined;
      }
      if (source !== 'file') continue;
      await this.run(() => this.redis.multi().del(key).srem(this.keys.models, name).exec());
      changed.push({ type: 'delete', name });
      this.log.info({ model: name, file: file.path }, 'model removed: no longer in models.yaml');
    }
    for (const c of changed) await this.publish(c.type, c.name);
    this.log.info({ file: file.path, models: file.specs.length, changed: changed.length }, 'registry seeded from models.yaml');
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new BrokerError('UNAVAILABLE', message)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}
