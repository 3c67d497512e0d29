/**
 * The model registry over a RecordStore (Redis or embedded): the rules that
 * do not depend on where records live.
 *
 * - Reads (get/list) come from an in-memory cache, so serving goes on through
 *   a store outage.
 * - Every write goes to the store, then a notice; every broker applies a
 *   notice by re-reading the record and emits one 'change' only if the spec
 *   changed. The writer re-reads at once (its answers are current when the
 *   write resolves) and its echo then finds nothing new.
 * - Records read back are untrusted: decoded and validated by record.ts
 *   (and signature-checked when a signing key is set). A bad one is logged
 *   and ignored; the cached spec, if any, is kept.
 * - A store that comes back without its data (Redis restarted without
 *   persistence, FLUSHALL, failover to an empty replica) deletes nothing: the
 *   cached models are written back and models.yaml is seeded again. A
 *   read-only broker keeps its cache until the store has the records again.
 * - `command`/`cwd` are never stored: they are kept from the local models.yaml
 *   and merged into returned specs by model name.
 */
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { BrokerError } from '../core/errors';
import type { ModelRegistry, ModelSpec, RegistryEvent, SavedMetadata } from '../core/model-spec';
import { canonical, decodeRecord, encodeRecord } from './record';
import type { RecordStore } from './record-store';
import { checkModelName, redactSpec, specToEntry, validateEntry } from './schema';

/** What the registry takes from models.yaml (see models-file.ts). */
export interface RegistryFile {
  specs: ModelSpec[];
  path: string;
  /** Names of invalid entries in the file: their stored records are left alone rather than deleted. */
  invalid?: string[];
}

export interface RegistryOptions {
  logger: Logger;
  /** Seed the store from this file (precedence in README). Omit to only read the registry. */
  file?: RegistryFile;
  /** HMAC-SHA256 key: records are signed on write, and unsigned or wrongly signed records are refused. */
  signingKey?: string;
  /** How often to check that the store still holds its data (ms); 0 = never. Default 5000. */
  checkIntervalMs?: number;
}

/** A write rejected by validation; `errors` holds one message per problem. */
export class ModelValidationError extends BrokerError {
  constructor(readonly errors: string[]) {
    super('INVALID_ARGUMENT', errors.join('; '));
    this.name = 'ModelValidationError';
  }
}

type Launch = { command: string[]; cwd?: string };

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

/** A patch that lost the race reads and merges again, after a short random wait (others are writing too). */
const PATCH_ATTEMPTS = 20;

export class StoredRegistry extends EventEmitter implements ModelRegistry {
  /** Specs as stored (no command/cwd). */
  private readonly cache = new Map<string, ModelSpec>();
  private readonly metadata = new Map<string, unknown>();
  /** The last spec (with command) each 'put' event carried, to notice launch-only changes on reload. */
  private readonly emitted = new Map<string, string>();
  /** command/cwd from the local models.yaml, by model name. */
  private launch = new Map<string, Launch>();
  private file: RegistryFile | undefined;
  /** Serialises refreshes so events for one name apply in order. */
  private chain: Promise<void> = Promise.resolve();
  /** The store held its mark once: a missing mark now means it lost its data. */
  private sawMark = false;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly log: Logger;
  private readonly signingKey: string | undefined;

  constructor(
    readonly store: RecordStore,
    private readonly opts: RegistryOptions,
  ) {
    super();
    this.log = opts.logger.child({ component: 'model-registry' });
    this.signingKey = opts.signingKey || undefined;
  }

  /** Seed from the file (if any), load every record, start watching the store. */
  async start(): Promise<this> {
    this.store.onNotice((name) => this.onNotice(name));
    if (this.opts.file) await this.seed(this.opts.file);
    else if (this.store.writable) await this.store.mark();
    await this.resync();
    const every = this.opts.checkIntervalMs ?? 5000;
    if (every > 0) {
      this.timer = setInterval(() => {
        void this.checkMark().catch((err: unknown) => this.log.debug({ err }, 'registry check failed'));
      }, every);
      this.timer.unref();
    }
    return this;
  }

  get(name: string): ModelSpec | undefined {
    const spec = this.cache.get(name);
    return spec && this.withLaunch(spec);
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
    this.writable();
    const v = validateEntry(spec.name, specToEntry(spec), { allowCommand: false, requireLaunch: false, source });
    if (v.errors) throw new ModelValidationError(v.errors);
    const created = await this.run(() => this.store.put(spec.name, encodeRecord(v.spec, source, this.signingKey)));
    await this.publish('put', spec.name);
    await this.enqueue(() => this.refresh(spec.name));
    this.log.info({ model: spec.name, source, created, spec: redactSpec(v.spec) }, created ? 'model created' : 'model replaced');
    return { created, spec: this.get(spec.name) ?? this.withLaunch({ ...v.spec, source }) };
  }

  /**
   * Merge `partial` (JSON merge patch: null removes a field, `env` merges key
   * by key) into the stored entry, validate the result, store it with source
   * 'api' only if the entry did not change meanwhile (else read and merge
   * again). Throws BrokerError NOT_FOUND or ModelValidationError.
   */
  async patch(name: string, partial: Record<string, unknown>): Promise<ModelSpec> {
    this.writable();
    const p = { ...partial };
    // `address` is Inferoxy's name for `image`: patch the image.
    if ('address' in p && !('image' in p)) {
      p.image = p.address;
      delete p.address;
    }
    for (let attempt = 0; attempt < PATCH_ATTEMPTS; attempt++) {
      if (attempt > 0) await new Promise((r) => setTimeout(r, Math.random() * 5 * attempt));
      const raw = await this.run(() => this.store.read(name));
      const current = raw === null ? undefined : this.decode(name, raw);
      if (!current) throw new BrokerError('NOT_FOUND', `model "${name}" not found`);
      const merged = mergePatch(specToEntry(current), p);
      const v = validateEntry(name, merged, { allowCommand: false, requireLaunch: !this.hasFileCommand(name), source: 'api' });
      if (v.errors) throw new ModelValidationError(v.errors);
      const next = encodeRecord(v.spec, 'api', this.signingKey);
      if (await this.run(() => this.store.compareAndSet(name, next, raw))) {
        await this.publish('put', name);
        await this.enqueue(() => this.refresh(name));
        this.log.info({ model: name, spec: redactSpec(v.spec) }, 'model patched');
        return this.get(name) ?? this.withLaunch(v.spec);
      }
    }
    throw new BrokerError('UNAVAILABLE', `model "${name}" kept changing during the patch; try again`);
  }

  /** Remove a model. Resolves false if it did not exist. */
  async delete(name: string): Promise<boolean> {
    this.writable();
    const existed = await this.run(() => this.store.remove(name));
    if (existed) {
      await this.publish('delete', name);
      this.log.info({ model: name }, 'model deleted');
    }
    await this.enqueue(() => this.refresh(name));
    return existed;
  }

  /** Re-apply a (re)loaded models.yaml (SIGHUP, file watch). Same precedence as at startup. */
  async reload(file: RegistryFile): Promise<void> {
    const before = new Map(this.list().map((s) => [s.name, s]));
    await this.seed(file);
    await this.resync();
    // A new command or cwd in the file changes no stored record: tell the listeners here.
    await this.enqueue(async () => {
      for (const spec of this.list()) {
        const previous = before.get(spec.name);
        if (previous && this.emitted.get(spec.name) !== canonical(spec)) this.emitChange({ type: 'put', name: spec.name, spec, previous });
      }
    });
  }

  /** Keep a model's metadata from its last READY, to answer for it while it runs no copy. */
  async saveMetadata(name: string, metadata: SavedMetadata): Promise<void> {
    this.metadata.set(name, metadata);
    if (!this.store.writable) return;
    await this.run(() => this.store.saveMetadata(name, JSON.stringify(metadata)));
  }

  /**
   * The metadata saved for `name` (by this broker or, as of the last resync,
   * another), if any. What came from the store is untrusted: a record of the
   * wrong shape counts as none.
   */
  async lastMetadata(name: string): Promise<SavedMetadata | undefined> {
    const m = this.metadata.get(name) as Partial<SavedMetadata> | undefined;
    const md = m?.metadata as Partial<SavedMetadata['metadata']> | undefined;
    if (!m || typeof m.version !== 'string' || typeof m.savedAt !== 'number' || !md || !Array.isArray(md.inputs) || !Array.isArray(md.outputs)) return undefined;
    return m as SavedMetadata;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    await this.chain;
    await this.store.close();
  }

  // ---- internals ----

  private writable(): void {
    if (!this.store.writable) {
      throw new BrokerError('PERMISSION_DENIED', 'the model registry is read-only on this broker (--redis-read-only): change it from a writer broker');
    }
  }

  private withLaunch(spec: ModelSpec): ModelSpec {
    const l = this.launch.get(spec.name);
    const out: ModelSpec = { ...spec, env: { ...spec.env } };
    // `source: 'file'` is only a claim of the store (anyone who can write Redis can make it):
    // what the process runtime lets load code (env) is trusted only when this broker's own
    // file has the same entry env; otherwise the entry counts as API-made.
    if (out.source === 'file' && !this.backedByFile(out)) out.source = 'api';
    if (l) {
      out.command = [...l.command];
      if (l.cwd !== undefined) out.cwd = l.cwd;
    }
    return out;
  }

  private backedByFile(spec: ModelSpec): boolean {
    const f = this.file?.specs.find((x) => x.name === spec.name);
    return f !== undefined && JSON.stringify(Object.entries(f.env).sort()) === JSON.stringify(Object.entries(spec.env).sort());
  }

  /** Run a store call, turning connection failures into UNAVAILABLE. */
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
      await this.store.publish(type, name);
    } catch (err) {
      // The write is done; other brokers catch up on their next resync.
      this.log.error({ err, model: name }, 'could not publish a registry event');
    }
  }

  private onNotice(name?: string): void {
    if (this.closed) return;
    if (name === undefined) {
      void this.resync().catch((err: unknown) => this.log.error({ err }, 'registry resync failed'));
      return;
    }
    if (checkModelName(name)) {
      this.log.warn({ name: name.slice(0, 200) }, 'ignoring a malformed registry event');
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

  /** Decode one stored record; undefined (and a log line) if it is bad. */
  private decode(name: string, raw: string): ModelSpec | undefined {
    const d = decodeRecord(name, raw, this.signingKey);
    if (d.error !== undefined) {
      this.log.error({ model: name, errors: d.details }, d.error);
      return undefined;
    }
    return d.spec;
  }

  /** Bring one name of the cache in line with the store; emit 'change' if it changed. */
  private async refresh(name: string): Promise<void> {
    const raw = await this.run(() => this.store.read(name));
    if (raw === null) {
      // Absent while the store lost its data: keep serving the cached spec.
      if (this.cache.has(name) && !(await this.markHeld())) return;
      this.apply(name, undefined);
      return;
    }
    const spec = this.decode(name, raw);
    if (spec !== undefined) this.apply(name, spec); // invalid record: keep what we had
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
    if (e.type === 'put') this.emitted.set(e.name, canonical(e.spec));
    else this.emitted.delete(e.name);
    try {
      this.emit('change', e);
    } catch (err) {
      this.log.error({ err, model: e.name }, "a registry 'change' listener threw");
    }
  }

  /** True if the store holds its mark (it has not lost its data since we saw it). */
  private async markHeld(): Promise<boolean> {
    const held = await this.run(() => this.store.hasMark());
    if (held) this.sawMark = true;
    return held || (!this.sawMark && this.cache.size === 0);
  }

  /** Periodic: a FLUSHALL drops no connection, so look for the mark. */
  private async checkMark(): Promise<void> {
    if (this.closed) return;
    if (!(await this.markHeld())) await this.resync();
  }

  /** Reload every record (after open, after a reconnect, after data loss). */
  private resync(): Promise<void> {
    return this.enqueue(async () => {
      let held = await this.markHeld();
      if (!held) held = await this.recover();
      const raws = await this.run(() => this.store.readAll());
      const seen = new Set<string>();
      for (const [name, raw] of raws) {
        if (checkModelName(name)) continue;
        const spec = this.decode(name, raw);
        if (this.cache.has(name)) seen.add(name); // an invalid record keeps the cached spec
        if (spec === undefined) continue;
        seen.add(name);
        this.apply(name, spec);
      }
      const metadata = await this.run(() => this.store.readMetadata([...raws.keys()]));
      for (const [name, json] of metadata) this.setMetadata(name, json);
      // A store that lost its data (and could not be refilled) deletes nothing.
      if (!held) return;
      for (const name of [...this.cache.keys()]) if (!seen.has(name)) this.apply(name, undefined);
    });
  }

  private setMetadata(name: string, json: string): void {
    try {
      this.metadata.set(name, JSON.parse(json));
    } catch {
      this.log.warn({ model: name }, 'stored model metadata is not JSON; ignored');
    }
  }

  /**
   * The store came back without its data. Write back the cached models (only
   * where the store has nothing: another broker may be doing the same), then
   * seed models.yaml again. Returns true when the store is whole again.
   */
  private async recover(): Promise<boolean> {
    const why = 'restarted without persistence, FLUSHALL, or failover to an empty replica';
    if (!this.store.writable) {
      this.log.warn(
        { models: this.cache.size },
        `the registry store came back without the model registry (${why}); read-only broker: keeping the ${this.cache.size} cached models until the store has them again`,
      );
      return false;
    }
    let restored = 0;
    for (const spec of this.cache.values()) {
      const raw = encodeRecord(spec, spec.source, this.signingKey);
      if (await this.run(() => this.store.compareAndSet(spec.name, raw, null))) {
        restored++;
        await this.publish('put', spec.name);
      }
      const md = this.metadata.get(spec.name);
      if (md !== undefined) await this.run(() => this.store.saveMetadata(spec.name, JSON.stringify(md)));
    }
    if (this.file) await this.seed(this.file, true);
    else await this.store.mark();
    this.log.warn(
      { restored, cached: this.cache.size, file: this.file?.path },
      `the registry store came back without the model registry (${why}): wrote back ${restored} models from this broker's cache` +
        (this.file ? ' and seeded models.yaml again' : '') +
        '; no model was removed',
    );
    return true;
  }

  /**
   * Seed the store from models.yaml, one atomic script per name:
   *  - an entry with source 'api' wins over the file entry of the same name (warning logged);
   *  - file entries overwrite entries with source 'file';
   *  - entries with source 'file' no longer in the file are deleted
   *    (except names of invalid entries in the file, which are left alone).
   * Commands from the file are kept in memory for every name in it.
   */
  private async seed(file: RegistryFile, quiet = false): Promise<void> {
    this.file = file;
    const launch = new Map<string, Launch>(
      file.specs.filter((s) => s.command).map((s): [string, Launch] => [s.name, { command: [...s.command!], cwd: s.cwd }]),
    );
    // An entry that is now invalid keeps its last good command, as its record is kept.
    for (const name of file.invalid ?? []) {
      const previous = this.launch.get(name);
      if (previous && !launch.has(name)) launch.set(name, previous);
    }
    this.launch = launch;
    if (!this.store.writable) {
      this.log.info({ file: file.path }, 'read-only registry: models.yaml gives commands only; its entries are not written');
      return;
    }
    const keep = new Set([...file.specs.map((s) => s.name), ...(file.invalid ?? [])]);
    const changed: { type: 'put' | 'delete'; name: string }[] = [];

    for (const spec of file.specs) {
      const raw = encodeRecord(spec, 'file', this.signingKey);
      let r = await this.run(() => this.store.seed(spec.name, raw));
      if (r.status === 'shadowed' && this.decode(spec.name, r.current!) === undefined) {
        this.log.warn({ model: spec.name, file: file.path }, 'replacing a bad registry record with the models.yaml entry');
        r = await this.run(() => this.store.seed(spec.name, raw, r.current));
      }
      if (r.status === 'shadowed') {
        if (!quiet) {
          this.log.warn(
            { model: spec.name, file: file.path },
            `models.yaml entry "${spec.name}" is shadowed by an entry created through the admin API; delete that entry to use the file's`,
          );
        }
      } else if (r.status === 'put') changed.push({ type: 'put', name: spec.name });
    }

    const stored = await this.run(() => this.store.readAll());
    for (const name of stored.keys()) {
      if (keep.has(name) || checkModelName(name)) continue;
      if (await this.run(() => this.store.removeFileRecord(name))) {
        changed.push({ type: 'delete', name });
        this.log.info({ model: name, file: file.path }, 'model removed: no longer in models.yaml');
      }
    }
    await this.run(() => this.store.mark());
    this.sawMark = true;
    for (const c of changed) await this.publish(c.type, c.name);
    this.log.info({ file: file.path, models: file.specs.length, changed: changed.length }, 'registry seeded from models.yaml');
  }
}
