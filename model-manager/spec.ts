/**
 * A model's registry entry, after validation and defaults. The same shape is
 * read from models.yaml, accepted by the admin API (minus `command`), and
 * stored in Redis (minus `command`, which only ever comes from the file).
 */
export interface ModelSpec {
  name: string;
  /** Docker image (Inferoxy's `address` is accepted as an alias). */
  image?: string;
  version: string;
  /** Max rows per batch. */
  batch_size: number;
  run_on_gpu: boolean;
  stateless: boolean;
  /** How long the batcher may hold the oldest queued request waiting for more rows. */
  max_wait_ms: number;
  /** Queued requests beyond this are rejected at once (429). */
  queue_capacity: number;
  /** Default per-request deadline, queue wait + compute. */
  timeout_ms: number;
  /** Time a new copy has to send READY. */
  startup_timeout_ms: number;
  min_replicas: number;
  max_replicas: number;
  /** Process runtime only: argv, from models.yaml on disk only. Relative paths resolve against the file's folder. */
  command?: string[];
  /**
   * Process runtime only: the folder of the models.yaml that supplied `command`
   * (absolute), to use as the child's cwd. Never stored in Redis nor accepted
   * from the API; merged in by the registry together with `command`.
   */
  cwd?: string;
  env: Record<string, string>;
  /** Where the entry came from; entries from the API survive a restart (see README, precedence). */
  source: 'file' | 'api';
}

export const SPEC_DEFAULTS = {
  version: '1',
  batch_size: 1,
  run_on_gpu: false,
  stateless: true,
  max_wait_ms: 0,
  queue_capacity: 1024,
  timeout_ms: 30_000,
  startup_timeout_ms: 60_000,
  min_replicas: 1,
  max_replicas: 1,
} as const;

export type RegistryEvent =
  | { type: 'put'; name: string; spec: ModelSpec; previous?: ModelSpec }
  | { type: 'delete'; name: string; previous: ModelSpec };

/**
 * What the rest of the broker knows of the registry: current specs from an
 * in-memory cache (serving goes on through a Redis outage) and change events.
 * Emits 'change' (RegistryEvent) for changes made by this or any other broker.
 */
export interface ModelRegistry {
  get(name: string): ModelSpec | undefined;
  list(): ModelSpec[];
  on(event: 'change', listener: (e: RegistryEvent) => void): this;
  off(event: 'change', listener: (e: RegistryEvent) => void): this;
}
