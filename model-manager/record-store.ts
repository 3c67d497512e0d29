/**
 * Where registry records live. Two implementations pass the same contract
 * tests (tests/e2e/registry-contract.test.ts): `RedisRecordStore` (shared by
 * several brokers) and `MemoryRecordStore` (embedded in one broker, optionally
 * persisted to a file). `StoredRegistry` holds every rule above them:
 * validation, precedence, events, recovery.
 *
 * Every method that reads then writes is atomic in the store.
 */
export type SeedStatus = 'put' | 'same' | 'shadowed';

export interface RecordStore {
  readonly kind: 'redis' | 'embedded';
  /** False in read-only mode: the broker never writes the store. */
  readonly writable: boolean;
  /**
   * The store calls this when a record may have changed (`name`), or when
   * everything must be reloaded (no name: after a reconnect).
   */
  onNotice(listener: (name?: string) => void): void;
  /** One stored record, or null. */
  read(name: string): Promise<string | null>;
  /** Every stored record by name. */
  readAll(): Promise<Map<string, string>>;
  /** Create or replace; resolves true if the name was new. */
  put(name: string, raw: string): Promise<boolean>;
  /** Resolves true if the name existed. */
  remove(name: string): Promise<boolean>;
  /**
   * Write a models.yaml record unless an admin-API record holds the name
   * (then 'shadowed' with that record as `current`). `replaceable`: a stored
   * value found invalid, which may be overwritten whatever its source.
   */
  seed(name: string, raw: string, replaceable?: string): Promise<{ status: SeedStatus; current?: string }>;
  /** Delete a record only if its source is 'file'. */
  removeFileRecord(name: string): Promise<boolean>;
  /** Write `raw` only if the stored value is still `expected` (null: absent). */
  compareAndSet(name: string, raw: string, expected: string | null): Promise<boolean>;
  /** Tell every broker of the store that `name` changed. */
  publish(type: 'put' | 'delete', name: string): Promise<void>;
  /** False when the store holds no registry mark: it lost its data (or was never written). */
  hasMark(): Promise<boolean>;
  /** Set the mark (idempotent). */
  mark(): Promise<void>;
  /** Metadata of a model's last READY (JSON), kept for models at zero. */
  saveMetadata(name: string, json: string): Promise<void>;
  readMetadata(names: string[]): Promise<Map<string, string>>;
  close(): Promise<void>;
}
