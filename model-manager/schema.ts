/**
 * The entry schema: what models.yaml, the admin API and stored records may
 * carry, derived from the ONE model schema (core/model-spec.ts SPEC_FIELDS).
 * Every field is optional here (defaults come from the model schema);
 * cross-field rules live in validateEntry. Accepts Inferoxy's entries
 * unchanged (`address`, `batch_size`, `run_on_gpu`, `stateless`); unknown
 * fields are errors.
 *
 * `validateEntry` returns either a normalised ModelSpec (defaults applied,
 * `address` folded into `image`, `version` as a string, `command` as argv)
 * or a list of messages that each name the model and the field.
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { LABEL_LIST, ModelSpecSchema, SPEC_FIELDS, type ModelSpec } from '../core/model-spec';
import { readLabelFile } from './label-file';
import { kubernetesFieldProblems } from '../task-manager/kubernetes/fields';

/** Model names: no ':' (the Redis key separator), no leading punctuation, at most 128 chars. */
export const MODEL_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;
const ENV_KEY_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** The written forms that are wider than the stored ones (normalised by validateEntry). */
const WRITTEN_FORMS = {
  /** Inferoxy's name for `image`. */
  address: Type.String({ minLength: 1, description: 'a non-empty string (Docker image, alias of "image")' }),
  version: Type.Union([Type.String({ minLength: 1 }), Type.Number()], { description: SPEC_FIELDS.version.description }),
  command: Type.Union([Type.String({ pattern: '\\S' }), Type.Array(Type.String(), { minItems: 1 })], { description: SPEC_FIELDS.command.description }),
  env: Type.Record(Type.String(), Type.Union([Type.String(), Type.Number(), Type.Boolean()]), { description: SPEC_FIELDS.env.description }),
  gpus: Type.Array(Type.Union([Type.String({ pattern: '^[A-Za-z0-9-]+$' }), Type.Integer({ minimum: 0 })]), {
    minItems: 1,
    description: SPEC_FIELDS.gpus.description,
  }),
  /** A label file path (models.yaml only, checked in validateEntry) or the list itself, per output. */
  labels: Type.Record(Type.String({ minLength: 1 }), Type.Union([Type.String({ minLength: 1 }), LABEL_LIST]), {
    description: 'a map of OUTPUT_NAME: label file (models.yaml only; one label per line, line i = class i) or list of labels',
  }),
};

/** A field's schema without its default and optional mark: an entry field is checked only when given. */
function plain(schema: TSchema): TSchema {
  const { default: _d, [Symbol.for('TypeBox.Optional')]: _o, ...rest } = schema as TSchema & Record<symbol, unknown>;
  return rest as unknown as TSchema;
}

/** Set by the registry and never written by hand. */
type Internal = 'name' | 'source' | 'cwd';
type EntryFields = Omit<typeof SPEC_FIELDS, Internal | keyof typeof WRITTEN_FORMS> & typeof WRITTEN_FORMS;

/** Every field an entry may carry, each as written. `description` is the "must be ..." text of error messages. */
export const ENTRY_FIELDS = Object.fromEntries(
  Object.entries(SPEC_FIELDS).flatMap(([k, schema]: [string, TSchema]): [string, TSchema][] => {
    if (k === 'name' || k === 'source' || k === 'cwd') return [];
    if (k === 'image') return [[k, plain(schema)], ['address', WRITTEN_FORMS.address]];
    return [[k, k in WRITTEN_FORMS ? WRITTEN_FORMS[k as keyof typeof WRITTEN_FORMS] : plain(schema)]];
  }),
) as unknown as EntryFields;

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
  /**
   * The folder label file paths in `labels` resolve against: given only for
   * models.yaml on disk. Without it a path is refused, so the admin API, a
   * repository load and stored records never make the broker read host files.
   */
  labelDir?: string;
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

/**
 * One message per unknown or ill-typed field of `value` against an object
 * schema's properties, in the words of each field's `description`. Shared by
 * validateEntry and the admin API's fastify validator.
 */
export function fieldErrors(fields: Record<string, TSchema>, value: Record<string, unknown>, required: string[] = []): string[] {
  const errors: string[] = [];
  const names = Object.keys(fields);
  for (const key of Object.keys(value)) {
    if (!(key in fields)) errors.push(`unknown field ${show(key)} (known fields: ${names.join(', ')})`);
  }
  for (const key of names) {
    const v = value[key];
    if (v === undefined) {
      if (required.includes(key)) errors.push(`field "${key}" is required (${fields[key].description})`);
      continue;
    }
    if (!Value.Check(fields[key], v)) errors.push(`field "${key}" must be ${fields[key].description} (got ${show(v)})`);
  }
  return errors;
}

/** Split a shell-less command line on whitespace. */
export function parseCommand(command: string | string[]): string[] {
  return typeof command === 'string' ? command.trim().split(/\s+/) : [...command];
}

/** Label lists by output: files read from `dir` (models.yaml only), lists bounded. */
function resolveLabels(written: Record<string, string | string[]>, dir: string | undefined, fail: (msg: string) => void): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const [output, v] of Object.entries(written)) {
    if (Array.isArray(v)) {
      out[output] = [...v]; // bounds checked by the entry schema
    } else if (dir === undefined) {
      fail(`output ${show(output)} names a label file (${show(v)}): only models.yaml on disk may name files; give the labels as a list`);
    } else {
      const r = readLabelFile(dir, v);
      if (r.error !== undefined) fail(`output ${show(output)}: ${r.error}`);
      else out[output] = r.labels;
    }
  }
  return out;
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

  errors.push(...fieldErrors(ENTRY_FIELDS, entry).map((e) => `${label}: ${e}`));
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
  // The Kubernetes fields' finer rules (label syntax, toleration combinations, Secret names), when their shape is right.
  if (fieldErrors(ENTRY_FIELDS, entry).length === 0) errors.push(...kubernetesFieldProblems(entry).map((e) => `${label}: field ${e}`));
  if (typeof entry.image === 'string' && typeof entry.address === 'string' && entry.image !== entry.address) {
    errors.push(
      `${label}: fields "image" (${show(entry.image)}) and "address" (${show(entry.address)}) differ; ` +
        `"address" is Inferoxy's name for "image": give one of them`,
    );
  }
  const labels = entry.labels !== undefined && Value.Check(ENTRY_FIELDS.labels, entry.labels)
    ? resolveLabels(entry.labels as Record<string, string | string[]>, opts.labelDir, (m) => errors.push(`${label}: field "labels": ${m}`))
    : undefined;
  if (errors.length > 0) return { errors };

  const e = entry as ModelEntry;
  const { address, version, env, gpus, command, labels: _labels, ...same } = e;
  const written: Record<string, unknown> = { ...same, name, source: opts.source ?? 'file' };
  if (version !== undefined) written.version = String(version);
  if (env !== undefined) written.env = Object.fromEntries(Object.entries(env).map(([k, v]) => [k, String(v)]));
  if (gpus !== undefined) written.gpus = gpus.map(String);
  if (command !== undefined) written.command = parseCommand(command);
  if (written.image === undefined && address !== undefined) written.image = address;
  if (labels !== undefined) written.labels = labels;
  const spec = Value.Default(ModelSpecSchema, written) as ModelSpec;
  if (!Value.Check(ModelSpecSchema, spec)) {
    // The entry schema is derived from the model schema: this is a bug, not bad input.
    const first = Value.Errors(ModelSpecSchema, spec).First();
    throw new Error(`model ${show(name)}: normalised entry does not match the model schema at ${first?.path}: ${first?.message}`);
  }

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
