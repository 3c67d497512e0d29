/**
 * The embedded registry store: records live in the broker process, and
 * optionally in a JSON file (`--registry-file`) so that models made through
 * the admin API survive a restart. One broker only: use Redis to share a
 * registry between brokers.
 *
 * The file is rewritten whole after each change (write to a temporary file,
 * then rename, so a crash leaves the old or the new file, never half of one).
 * Its records are decoded and validated like Redis records when read back.
 */
import { readFileSync } from 'node:fs';
import { rename, writeFile } from 'node:fs/promises';
import type { Logger } from 'pino';
import type { RecordStore, SeedStatus } from './record-store';
import { StoredRegistry, type RegistryFile, type RegistryOptions } from './stored-registry';

interface Persisted {
  version: 1;
  models: Record<string, string>;
  metadata: Record<string, string>;
}

function sourceOf(raw: string): unknown {
  try {
    return (JSON.parse(raw) as { source?: unknown }).source;
  } catch {
    return undefined;
  }
}

export class MemoryRecordStore implements RecordStore {
  readonly kind = 'embedded' as const;
  readonly writable = true;
  private readonly records = new Map<string, string>();
  private readonly metadata = new Map<string, string>();
  private listener: (name?: string) => void = () => undefined;
  /** Serialises file writes; each write takes the latest state. */
  private saving: Promise<void> = Promise.resolve();

  /** `path`: persist to this JSON file (read now if it exists). */
  constructor(private readonly path?: string) {
    if (!path) return;
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw new Error(`registry file ${path} cannot be read: ${(err as Error).message}`);
    }
    let data: Persisted;
    try {
      data = JSON.parse(text) as Persisted;
    } catch {
      throw new Error(`registry file ${path} is not JSON: fix or remove it (it holds the models made through the admin API)`);
    }
    for (const [k, v] of Object.entries(data.models ?? {})) if (typeof v === 'string') this.records.set(k, v);
    for (const [k, v] of Object.entries(data.metadata ?? {})) if (typeof v === 'string') this.metadata.set(k, v);
  }

  onNotice(listener: (name?: string) => void): void {
    this.listener = listener;
  }

  async read(name: string): Promise<string | null> {
    return this.records.get(name) ?? null;
  }

  async readAll(): Promise<Map<string, string>> {
    return new Map(this.records);
  }

  async put(name: string, raw: string): Promise<boolean> {
    const created = !this.records.has(name);
    this.records.set(name, raw);
    await this.save();
    return created;
  }

  async remove(name: string): Promise<boolean> {
    const existed = this.records.delete(name);
    this.metadata.delete(name);
    if (existed) await this.save();
    return existed;
  }

  async seed(name: string, raw: string, replaceable = ''): Promise<{ status: SeedStatus; current?: string }> {
    const cur = this.records.get(name);
    if (cur === raw) return { status: 'same' };
    if (cur !== undefined && cur !== replaceable && sourceOf(cur) === 'api') return { status: 'shadowed', current: cur };
    this.records.set(name, raw);
    await this.save();
    return { status: 'put' };
  }

  async removeFileRecord(name: string): Promise<boolean> {
    const cur = this.records.get(name);
    if (cur === undefined || sourceOf(cur) !== 'file') return false;
    this.records.delete(name);
    await this.save();
    return true;
  }

  async compareAndSet(name: string, raw: string, expected: string | null): Promise<boolean> {
    if ((this.records.get(name) ?? null) !== expected) return false;
    this.records.set(name, raw);
    await this.save();
    return true;
  }

  async publish(_type: 'put' | 'delete', name: string): Promise<void> {
    // One process: the writer already refreshed; a notice keeps the contract (an echo finds nothing new).
    queueMicrotask(() => this.listener(name));
  }

  async hasMark(): Promise<boolean> {
    return true;
  }

  async mark(): Promise<void> {}

  async saveMetadata(name: string, json: string): Promise<void> {
    this.metadata.set(name, json);
    await this.save();
  }

  async readMetadata(names: string[]): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    for (const n of names) {
      const m = this.metadata.get(n);
      if (m !== undefined) out.set(n, m);
    }
    return out;
  }

  async close(): Promise<void> {
    await this.saving;
  }

  private save(): Promise<void> {
    const path = this.path;
    if (!path) return Promise.resolve();
    const next = this.saving.then(async () => {
      const data: Persisted = { version: 1, models: Object.fromEntries(this.records), metadata: Object.fromEntries(this.metadata) };
      const tmp = `${path}.${process.pid}.tmp`;
      await writeFile(tmp, JSON.stringify(data, null, 1), { mode: 0o600 });
      await rename(tmp, path);
    });
    this.saving = next.catch(() => undefined);
    return next;
  }
}

export interface EmbeddedOptions extends RegistryOptions {
  /** Persist the registry to this JSON file; without it the registry lives in memory only. */
  registryFile?: string;
  file?: RegistryFile;
}

/** The registry inside the broker process (the default without --redis-url). */
export class EmbeddedModelRegistry extends StoredRegistry {
  static async open(opts: EmbeddedOptions): Promise<EmbeddedModelRegistry> {
    const log: Logger = opts.logger.child({ component: 'embedded-registry' });
    const reg = new EmbeddedModelRegistry(new MemoryRecordStore(opts.registryFile), { checkIntervalMs: 0, ...opts });
    await reg.start();
    log.info({ models: reg.list().length, file: opts.registryFile ?? null }, opts.registryFile ? 'model registry open (embedded, persisted to a file)' : 'model registry open (embedded, in memory)');
    return reg;
  }
}
