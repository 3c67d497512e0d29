/**
 * A model's registry entry, after validation and defaults. The same shape is
 * read from models.yaml, accepted by the admin API (minus `command`), and
 * stored in Redis (minus `command`, which only ever comes from the file).
 */
import type { ModelMetadata } from './types';

export interface ModelSpec {
  name: string;
  /** Docker image (Inferoxy's `address` is accepted as an alias). */
  image?: string;
  version: string;
  /** Max rows per batch; 0 = no batch dimension (Triton max_batch_size 0): shapes are whole, one request per run. */
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

  // Stateful models (stateless: false): sequences pinned to a copy and slot.
  /** Sequence slots per copy; default: the batch size. */
  max_sequences?: number;
  /** A sequence with no request for this long is ended (reason idle) and its slot freed. */
  sequence_idle_ms: number;
  /** Sequences waiting for a free slot; beyond it new sequences are refused (429). */
  sequence_backlog: number;
  /** When every slot is taken, start another copy (up to max_replicas) instead of only waiting. */
  sequence_scale_up: boolean;

  // Placement, health and scaling (task manager).
  /** GPUs per copy of a run_on_gpu model. */
  gpus_per_copy: number;
  /** GPU ids this model may use; default any. */
  gpus?: string[];
  pull_policy: 'always' | 'if-missing' | 'never';
  pull_timeout_ms: number;
  /** A copy silent (no heartbeat) this long while idle is declared hung. */
  heartbeat_timeout_ms: number;
  /** Time one batch may take on a copy before the copy is declared hung: base + per row. Default base: timeout_ms. */
  batch_timeout_ms?: number;
  batch_timeout_per_row_ms: number;
  /** Retry in-flight stateless rows once on another copy when their copy dies. */
  retry_on_failure: boolean;
  /** After this many copy failures within failure_window_ms the model is marked unavailable. */
  max_failures: number;
  failure_window_ms: number;
  /** Scale up when queued requests per ready copy exceed this. */
  scale_up_queue_per_copy: number;
  scale_up_cooldown_ms: number;
  scale_down_cooldown_ms: number;
  /** Copies above min_replicas idle this long are stopped. */
  idle_ttl_ms: number;

  // Container hardening (Docker runtime); safe by default.
  memory_mb?: number;
  cpus?: number;
  read_only_root: boolean;
  /** Size of the tmpfs scratch at /tmp when the root is read-only. */
  tmpfs_mb: number;
  pids_limit: number;

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
  sequence_idle_ms: 5000,
  sequence_backlog: 64,
  sequence_scale_up: false,
  gpus_per_copy: 1,
  pull_policy: 'if-missing',
  pull_timeout_ms: 600_000,
  heartbeat_timeout_ms: 5000,
  batch_timeout_per_row_ms: 0,
  retry_on_failure: false,
  max_failures: 5,
  failure_window_ms: 60_000,
  scale_up_queue_per_copy: 8,
  scale_up_cooldown_ms: 10_000,
  scale_down_cooldown_ms: 30_000,
  idle_ttl_ms: 300_000,
  read_only_root: true,
  tmpfs_mb: 64,
  pids_limit: 512,
} as const;

/** A model's metadata as its copies reported it in their last READY. */
export interface SavedMetadata {
  /** The spec version the copy ran. */
  version: string;
  metadata: ModelMetadata;
  /** Epoch ms. */
  savedAt: number;
}

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
  /** Keeps a model's metadata from its last READY (so it can be described while at zero). */
  saveMetadata(name: string, saved: SavedMetadata): Promise<void>;
  /** The metadata kept by saveMetadata, if the model was ever ready. */
  lastMetadata(name: string): Promise<SavedMetadata | undefined>;
  on(event: 'change', listener: (e: RegistryEvent) => void): this;
  off(event: 'change', listener: (e: RegistryEvent) => void): this;
}
