/**
 * The one schema for a model entry, as written in models.yaml and sent to the
 * admin API. Accepts Inferoxy's entries unchanged (`address`, `batch_size`,
 * `run_on_gpu`, `stateless`) plus our own fields; unknown fields are errors.
 *
 * `validateEntry` returns either a normalised ModelSpec (defaults applied,
 * `address` folded into `image`, `version` as a string, `command` as argv)
 * or a list of messages that each name the model and the field.
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { SPEC_DEFAULTS, type ModelSpec } from '../core/model-spec';

/** Model names: no ':' (the Redis key separator), no leading punctuation, at most 128 chars. */
export const MODEL_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;
const ENV_KEY_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;

const int = (minimum: number) => Type.Integer({ minimum, description: `an integer >= ${minimum}` });

/** Every field an entry may carry. `description` is the "must be ..." text of error messages. */
export const ENTRY_FIELDS = {
  image: Type.String({ minLength: 1, description: 'a non-empty string (Docker image)' }),
  address: Type.String({ minLength: 1, description: 'a non-empty string (Docker image, alias of "image")' }),
  version: Type.Union([Type.String({ minLength: 1 }), Type.Number()], {
    description: 'a non-empty string or a number',
  }),
  // 0 = a non-batching model (Triton max_batch_size: 0): no batch dimension, one request per run.
  batch_size: Type.Integer({ minimum: 0, description: 'an integer >= 0 (0: a non-batching model)' }),
  run_on_gpu: Type.Boolean({ description: 'a boolean (true or false)' }),
  stateless: Type.Boolean({ description: 'a boolean (true or false)' }),
  max_wait_ms: int(0),
  queue_capacity: int(1),
  timeout_ms: int(1),
  startup_timeout_ms: int(1),
  min_replicas: int(0),
  max_replicas: int(1),
  command: Type.Union([Type.String({ pattern: '\\S' }), Type.Array(Type.String(), { minItems: 1 })], {
    description: 'a non-empty string or a non-empty list of strings',
  }),
  env: Type.Record(Type.String(), Type.Union([Type.String(), Type.Number(), Type.Boolean()]), {
    description: 'a map of NAME: value (string, number or boolean)',
  }),
  max_sequences: int(1),
  sequence_idle_ms: int(1),
  sequence_backlog: int(0),
  sequence_scale_up: Type.Boolean({ description: 'a boolean (true or false)' }),
  gpus_per_copy: int(1),
  gpus: Type.Array(Type.Union([Type.String({ pattern: '^[A-Za-z0-9-]+$' }), Type.Integer({ minimum: 0 })]), {
    minItems: 1,
    description: 'a non-empty list of GPU ids (e.g. [0, 1] or ["GPU-uuid"])',
  }),
  pull_policy: Type.Union([Type.Literal('always'), Type.Literal('if-missing'), Type.Literal('never')], {
    description: 'one of always, if-missing, never',
  }),
  pull_timeout_ms: int(1),
  heartbeat_timeout_ms: int(1),
  batch_timeout_ms: int(1),
  batch_timeout_per_row_ms: int(0),
  retry_on_failure: Type.Boolean({ description: 'a boolean (true or false)' }),
  max_failures: int(1),
  failure_window_ms: int(1),
  scale_up_queue_per_copy: int(1),
  scale_up_cooldown_ms: int(0),
  scale_down_cooldown_ms: int(0),
  idle_ttl_ms: int(1),
  memory_mb: int(4),
  cpus: Type.Number({ exclusiveMinimum: 0, description: 'a number > 0 (CPU cores)' }),
  read_only_root: Type.Boolean({ description: 'a boolean (true or false)' }),
  tmpfs_mb: int(0),
  pids_limit: int(1),
} satisfies Record<string, TSchema>;

/** The entry as written (all fields optional here; cross-field rules live in validateEntry). */
export const ModelEntrySchema = Type.Partial(Type.Object(ENTRY_FIELDS, { additionalProperties: false }));
export type ModelEntry = Static<typeof ModelEntrySchema>;

export const ENTRY_FIELD_NAMES = Object.keys(ENTRY_FIELDS) as (keyof typeof ENTRY_FIELDS)[];

export interface ValidateOptions {
  /** Only models.yaml on disk may set `command`; the admin API may not. */
  allowCommand: boolean;
  /**
   * Require one of `image` / `command` (default true). The registry passes
   * false for records read back from Redis (the command lives only in the
   * file), and the admin API passes false when models.yaml supplies a command
   * for that name.
   */
  requireLaunch?: boolean;
  /** Where the entry comes from (default 'file'). */
  source?: ModelSpec['source'];
}

export type ValidateResult = { spec: ModelSpec; errors?: undefined } | { errors: string[]; spec?: undefined };

/** JSON-ish rendering of a bad value for messages, kept short. */
export function show(value: unknown): string {
  let s: string;
  try {
    s = value === undefined ? 'nothing' : (JSON.stringify(value) ?? String(value));
  } catch {
    s = String(value);
  }
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

export function checkModelName(name: unknown): string | undefined {
  if (typeof name !== 'string' || !MODEL_NAME_RE.test(name)) {
    return (
      `model name ${show(name)} is invalid: use 1-128 letters, digits, '_', '.' or '-', ` +
      `starting with a letter or digit (no ':')`
    );
  }
  return undefined;
}

/** Split a shell-less command line on whitespace. */
export function parseCommand(command: string | string[]): string[] {
  return typeof command === 'string' ? command.trim().split(/\s+/) : [...command];
}

/**
 * Validate one raw entry. `raw` may carry `name` (list layouts, API bodies):
 * it must then equal `name`.
 */
export function validateEntry(name: string, raw: unknown, opts: ValidateOptions): ValidateResult {
  const label = `model ${show(name)}`;
  const errors: string[] = [];
  const nameError = checkModelName(name);
  if (nameError) errors.push(nameError);

  if (raw === null || raw === undefined) raw = {};
  if (typeof raw !== 'object' || Array.isArray(raw)) {
    return { errors: [...errors, `${label}: entry must be a map of fields (got ${show(raw)})`] };
  }
  const entry: Record<string, unknown> = { ...(raw as Record<string, unknown>) };
  if ('name' in entry) {
    if (entry.name !== name) errors.push(`${label}: field "name" is ${show(entry.name)} but the entry is named ${show(name)}`);
    delete entry.name;
  }

  for (const key of Object.keys(entry)) {
    if (!(key in ENTRY_FIELDS)) {
      errors.push(`${label}: unknown field ${show(key)} (known fields: ${ENTRY_FIELD_NAMES.join(', ')})`);
    }
  }
  for (const key of ENTRY_FIELD_NAMES) {
    const value = entry[key];
    if (value === undefined) continue;
    if (!Value.Check(ENTRY_FIELDS[key], value)) {
      errors.push(`${label}: field "${key}" must be ${ENTRY_FIELDS[key].description} (got ${show(value)})`);
    }
  }
  if (entry.command !== undefined && !opts.allowCommand) {
    errors.push(`${label}: field "command" can only be set in models.yaml on disk`);
  }
  if (entry.env !== undefined && Value.Check(ENTRY_FIELDS.env, entry.env)) {
    for (const key of Object.keys(entry.env as object)) {
      if (!ENV_KEY_RE.test(key)) {
        errors.push(`${label}: field "env" has an invalid variable name ${show(key)} (use letters, digits and '_')`);
      }
    }
  }
  if (typeof entry.image === 'string' && typeof entry.address === 'string' && entry.image !== entry.address) {
    errors.push(
      `${label}: fields "image" (${show(entry.image)}) and "address" (${show(entry.address)}) differ; ` +
        `"address" is Inferoxy's name for "image": give one of them`,
    );
  }
  if (errors.length > 0) return { errors };

  const e = entry as ModelEntry;
  const spec: ModelSpec = {
    name,
    version: e.version === undefined ? SPEC_DEFAULTS.version : String(e.version),
    batch_size: e.batch_size ?? SPEC_DEFAULTS.batch_size,
    run_on_gpu: e.run_on_gpu ?? SPEC_DEFAULTS.run_on_gpu,
    stateless: e.stateless ?? SPEC_DEFAULTS.stateless,
    max_wait_ms: e.max_wait_ms ?? SPEC_DEFAULTS.max_wait_ms,
    queue_capacity: e.queue_capacity ?? SPEC_DEFAULTS.queue_capacity,
    timeout_ms: e.timeout_ms ?? SPEC_DEFAULTS.timeout_ms,
    startup_timeout_ms: e.startup_timeout_ms ?? SPEC_DEFAULTS.startup_timeout_ms,
    min_replicas: e.min_replicas ?? SPEC_DEFAULTS.min_replicas,
    max_replicas: e.max_replicas ?? SPEC_DEFAULTS.max_replicas,
    env: Object.fromEntries(Object.entries(e.env ?? {}).map(([k, v]) => [k, String(v)])),
    sequence_idle_ms: e.sequence_idle_ms ?? SPEC_DEFAULTS.sequence_idle_ms,
    sequence_backlog: e.sequence_backlog ?? SPEC_DEFAULTS.sequence_backlog,
    sequence_scale_up: e.sequence_scale_up ?? SPEC_DEFAULTS.sequence_scale_up,
    gpus_per_copy: e.gpus_per_copy ?? SPEC_DEFAULTS.gpus_per_copy,
    pull_policy: e.pull_policy ?? SPEC_DEFAULTS.pull_policy,
    pull_timeout_ms: e.pull_timeout_ms ?? SPEC_DEFAULTS.pull_timeout_ms,
    heartbeat_timeout_ms: e.heartbeat_timeout_ms ?? SPEC_DEFAULTS.heartbeat_timeout_ms,
    batch_timeout_per_row_ms: e.batch_timeout_per_row_ms ?? SPEC_DEFAULTS.batch_timeout_per_row_ms,
    retry_on_failure: e.retry_on_failure ?? SPEC_DEFAULTS.retry_on_failure,
    max_failures: e.max_failures ?? SPEC_DEFAULTS.max_failures,
    failure_window_ms: e.failure_window_ms ?? SPEC_DEFAULTS.failure_window_ms,
    scale_up_queue_per_copy: e.scale_up_queue_per_copy ?? SPEC_DEFAULTS.scale_up_queue_per_copy,
    scale_up_cooldown_ms: e.scale_up_cooldown_ms ?? SPEC_DEFAULTS.scale_up_cooldown_ms,
    scale_down_cooldown_ms: e.scale_down_cooldown_ms ?? SPEC_DEFAULTS.scale_down_cooldown_ms,
    idle_ttl_ms: e.idle_ttl_ms ?? SPEC_DEFAULTS.idle_ttl_ms,
    read_only_root: e.read_only_root ?? SPEC_DEFAULTS.read_only_root,
    tmpfs_mb: e.tmpfs_mb ?? SPEC_DEFAULTS.tmpfs_mb,
    pids_limit: e.pids_limit ?? SPEC_DEFAULTS.pids_limit,
    source: opts.source ?? 'file',
  };
  if (e.max_sequences !== undefined) spec.max_sequences = e.max_sequences;
  if (e.gpus !== undefined) spec.gpus = e.gpus.map(String);
  if (e.batch_timeout_ms !== undefined) spec.batch_timeout_ms = e.batch_timeout_ms;
  if (e.memory_mb !== undefined) spec.memory_mb = e.memory_mb;
  if (e.cpus !== undefined) spec.cpus = e.cpus;
  const image = e.image ?? e.address;
  if (image !== undefined) spec.image = image;
  if (e.command !== undefined) spec.command = parseCommand(e.command);

  if (spec.min_replicas > spec.max_replicas) {
    errors.push(
      `${label}: field "min_replicas" (${spec.min_replicas}) must be <= "max_replicas" (${spec.max_replicas})`,
    );
  }
  if (spec.batch_size === 0 && !spec.stateless) {
    errors.push(`${label}: field "batch_size" 0 (a non-batching model) needs "stateless": true`);
  }
  if ((opts.requireLaunch ?? true) && spec.image === undefined && spec.command === undefined) {
    errors.push(
      `${label}: needs "image" (or Inferoxy's "address") for the Docker runtime, or "command" in models.yaml for the process runtime`,
    );
  }
  return errors.length > 0 ? { errors } : { spec };
}

/**
 * The entry fields of a spec, as they would be written back (no name, source,
 * command or cwd): the base that PATCH merges into.
 */
export function specToEntry(spec: ModelSpec): Record<string, unknown> {
  const { name: _n, source: _s, command: _c, cwd: _d, ...entry } = spec;
  return { ...entry, env: { ...spec.env } };
}

/** A copy of the spec with every env value replaced by "***" (for logs and unauthenticated reads). */
export function redactSpec<T extends { env?: Record<string, string> }>(spec: T): T {
  if (!spec.env) return spec;
  return { ...spec, env: Object.fromEntries(Object.keys(spec.env).map((k) => [k, '***'])) };
}
