/**
 * A model's registry entry, after validation and defaults: ONE TypeBox schema
 * gives the type (`ModelSpec = Static<...>`), the defaults (each field's
 * `default`) and the "must be ..." text of error messages (`description`).
 * model-manager/schema.ts derives from it the entry schema that validates
 * models.yaml, the admin API and stored records (which also accepts the
 * written forms: Inferoxy's `address`, `version: 1.2`, `command` as a string,
 * env values as numbers or booleans).
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import type { ModelMetadata } from './types';

const int = (minimum: number, def?: number) =>
  Type.Integer(def === undefined ? { minimum, description: `an integer >= ${minimum}` } : { minimum, default: def, description: `an integer >= ${minimum}` });
/** Milliseconds: at most 2^31-1, the longest delay a Node timer can hold (longer ones fire at once). */
const MAX_MS = 2_147_483_647;
const ms = (minimum: number, def?: number) =>
  Type.Integer({ minimum, maximum: MAX_MS, ...(def === undefined ? {} : { default: def }), description: `an integer from ${minimum} to ${MAX_MS} (milliseconds)` });
/** Bounds of one output's class labels (a label file or a list). */
export const MAX_LABELS = 65_536;
export const MAX_LABEL_LENGTH = 1024;
export const LABEL_LIST = Type.Array(Type.String({ maxLength: MAX_LABEL_LENGTH }), { maxItems: MAX_LABELS });
const bool = (def: boolean) => Type.Boolean({ default: def, description: 'a boolean (true or false)' });
const opt = <T extends TSchema>(t: T) => Type.Optional(t);

export const SPEC_FIELDS = {
  name: Type.String({ description: 'the model name' }),
  /** Docker image (Inferoxy's `address` is accepted as an alias). */
  image: opt(Type.String({ minLength: 1, description: 'a non-empty string (Docker image)' })),
  /** Stored as a string (`1.10` in YAML is the number 1.1: quote it). */
  version: Type.String({ minLength: 1, default: '1', description: 'a non-empty string or a number' }),
  /** Max rows per batch; 0 = no batch dimension (Triton max_batch_size 0): shapes are whole, one request per run. */
  batch_size: Type.Integer({ minimum: 0, default: 1, description: 'an integer >= 0 (0: a non-batching model)' }),
  run_on_gpu: bool(false),
  stateless: bool(true),
  /** How long the batcher may hold the oldest queued request waiting for more rows. */
  max_wait_ms: ms(0, 0),
  /** Queued requests beyond this are rejected at once (429). */
  queue_capacity: int(1, 1024),
  /** Default per-request deadline, queue wait + compute. */
  timeout_ms: ms(1, 30_000),
  /** Time a new copy has to send READY. */
  startup_timeout_ms: ms(1, 60_000),
  min_replicas: int(0, 1),
  max_replicas: int(1, 1),
  /** Process runtime only: argv, from models.yaml on disk only. Relative paths resolve against the file's folder. */
  command: opt(Type.Array(Type.String(), { minItems: 1, description: 'a non-empty string or a non-empty list of strings' })),
  /**
   * Process runtime only: the folder of the models.yaml that supplied `command`
   * (absolute), to use as the child's cwd. Never stored nor accepted from the
   * API; merged in by the registry together with `command`.
   */
  cwd: opt(Type.String()),
  /** Environment of the copy. */
  env: Type.Record(Type.String(), Type.String(), { default: {}, description: 'a map of NAME: value (string, number or boolean)' }),
  /**
   * Class labels per output for classification (Triton's `label_filename`):
   * the label of class i is item i. models.yaml may name a label file instead
   * (read when the file is loaded); stored records and the API hold lists only.
   */
  labels: opt(Type.Record(Type.String({ minLength: 1 }), LABEL_LIST, {
    description: `a map of OUTPUT_NAME: list of labels (at most ${MAX_LABELS}, each at most ${MAX_LABEL_LENGTH} characters)`,
  })),

  // Stateful models (stateless: false): sequences pinned to a copy and slot.
  /** Sequence slots per copy; default: the batch size. */
  max_sequences: opt(int(1)),
  /** A sequence with no request for this long is ended (reason idle) and its slot freed. */
  sequence_idle_ms: ms(1, 5000),
  /** Sequences waiting for a free slot; beyond it new sequences are refused (429). */
  sequence_backlog: int(0, 64),
  /** When every slot is taken, start another copy (up to max_replicas) instead of only waiting. */
  sequence_scale_up: bool(false),

  // Placement, health and scaling (task manager).
  /** GPUs per copy of a run_on_gpu model. */
  gpus_per_copy: int(1, 1),
  /** GPU ids this model may use; default any. */
  gpus: opt(Type.Array(Type.String({ pattern: '^[A-Za-z0-9-]+$' }), { minItems: 1, description: 'a non-empty list of GPU ids (e.g. [0, 1] or ["GPU-uuid"])' })),
  pull_policy: Type.Union([Type.Literal('always'), Type.Literal('if-missing'), Type.Literal('never')], {
    default: 'if-missing',
    description: 'one of always, if-missing, never',
  }),
  pull_timeout_ms: ms(1, 600_000),
  /** A copy silent (no heartbeat) this long while idle is declared hung. */
  heartbeat_timeout_ms: ms(1, 5000),
  /** Time one batch may take on a copy before the copy is declared hung: base + per row. Default base: timeout_ms. */
  batch_timeout_ms: opt(ms(1)),
  batch_timeout_per_row_ms: ms(0, 0),
  /** Retry in-flight stateless rows once on another copy when their copy dies. */
  retry_on_failure: bool(false),
  /** After this many copy failures within failure_window_ms the model is marked unavailable. */
  max_failures: int(1, 5),
  failure_window_ms: ms(1, 60_000),
  /** Scale up when queued requests per ready copy exceed this. */
  scale_up_queue_per_copy: int(1, 8),
  scale_up_cooldown_ms: ms(0, 10_000),
  scale_down_cooldown_ms: ms(0, 30_000),
  /** Copies above min_replicas idle this long are stopped. */
  idle_ttl_ms: ms(1, 300_000),

  // Container hardening (Docker runtime); safe by default.
  memory_mb: opt(int(4)),
  cpus: opt(Type.Number({ exclusiveMinimum: 0, description: 'a number > 0 (CPU cores)' })),
  read_only_root: bool(true),
  /** Size of the tmpfs scratch at /tmp when the root is read-only. */
  tmpfs_mb: int(0, 64),
  pids_limit: int(1, 512),

  // Kubernetes runtime only (ignored by Docker and process); checked further by
  // task-manager/kubernetes/fields.ts (label syntax, toleration rules, Secret names).
  /** Node labels a copy's pod must match (a GPU pool, a GPU type). */
  node_selector: opt(Type.Record(Type.String(), Type.String(), { description: 'a map of node label: value' })),
  /** Taints a copy's pod tolerates (GPU pools are usually tainted). */
  tolerations: opt(Type.Array(Type.Object({
    key: opt(Type.String()),
    operator: opt(Type.Union([Type.Literal('Exists'), Type.Literal('Equal')])),
    value: opt(Type.String()),
    effect: opt(Type.Union([Type.Literal('NoSchedule'), Type.Literal('PreferNoSchedule'), Type.Literal('NoExecute')])),
    tolerationSeconds: opt(Type.Integer()),
  }, { additionalProperties: false }), { description: 'a list of tolerations {key, operator: Exists|Equal, value, effect: NoSchedule|PreferNoSchedule|NoExecute, tolerationSeconds}' })),
  /** docker-registry Secrets in the broker's namespace, for private images. */
  image_pull_secrets: opt(Type.Array(Type.String({ minLength: 1 }), { description: 'a list of Secret names' })),

  /** Where the entry came from; entries from the API survive a restart (see README, precedence). */
  source: Type.Union([Type.Literal('file'), Type.Literal('api')], { default: 'file', description: 'file or api' }),
};

export const ModelSpecSchema = Type.Object(SPEC_FIELDS, { additionalProperties: false });

export type ModelSpec = Static<typeof ModelSpecSchema>;

type RequiredKeys<T> = { [K in keyof T]-?: undefined extends T[K] ? never : K }[keyof T];
/** Fields that always have a value and a default (not name, source or env, which each caller gives). */
type Defaulted = Exclude<RequiredKeys<ModelSpec>, 'name' | 'source' | 'env'>;

/** The defaults, read from the schema (for tests and tools that build specs by hand). */
export const SPEC_DEFAULTS = Object.freeze(
  Object.fromEntries(
    Object.entries(SPEC_FIELDS).flatMap(([k, s]: [string, TSchema]) =>
      k !== 'source' && k !== 'env' && s.default !== undefined ? [[k, s.default as unknown]] : [],
    ),
  ),
) as Readonly<Pick<ModelSpec, Defaulted>>;

/** A model's metadata from its last READY, kept so it can be described while at zero. */
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
