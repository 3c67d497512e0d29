/**
 * Triton's repository `load` with a `config` parameter (a model config as
 * JSON), turned into a registry patch. Only the config fields that have a
 * registry field change anything; every other field must equal what the
 * broker reports in the model's config (so a config fetched, edited and sent
 * back passes), else it is refused with the field named.
 */
import type { BrokerApi } from '../../core/broker';
import { BrokerError } from '../../core/errors';
import { tritonConfig, type TritonModelConfig } from './model-config';

const invalid = (msg: string) => new BrokerError('INVALID_ARGUMENT', msg);

/** Triton config path -> registry field; values in µs become ms (rounded up). */
const MAPPED = {
  max_batch_size: 'batch_size',
  'dynamic_batching.max_queue_delay_microseconds': 'max_wait_ms',
  'instance_group.count': 'max_replicas',
  'sequence_batching.max_sequence_idle_microseconds': 'sequence_idle_ms',
} as const;
type MappedPath = keyof typeof MAPPED;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** protobuf JSON writes 64-bit integers as strings: accept both. */
function integerOf(path: string, v: unknown): number {
  const n = typeof v === 'string' && /^-?\d+$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) {
    throw invalid(`config field '${path}' must be a non-negative integer, got ${JSON.stringify(v)}`);
  }
  return n;
}

/** Loose equality for comparing with the current config: numbers and numeric strings match. */
function sameValue(a: unknown, b: unknown): boolean {
  if (isObject(a) && isObject(b)) {
    return Object.keys(a).every((k) => k in b && sameValue(a[k], b[k]));
  }
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => sameValue(x, b[i]));
  if ((typeof a === 'string' || typeof a === 'number') && (typeof b === 'string' || typeof b === 'number')) return String(a) === String(b);
  return a === b;
}

/**
 * The registry patch for `configJson` on `model`. `current` is the model's
 * config as the broker reports it (undefined when the model never ran: then
 * only mapped fields and `name` are accepted). Throws INVALID_ARGUMENT naming the field.
 */
export function configOverridePatch(model: string, configJson: string, current?: TritonModelConfig): Record<string, unknown> {
  let doc: unknown;
  try {
    doc = JSON.parse(configJson);
  } catch (e) {
    throw invalid(`load parameter 'config' is not valid JSON: ${(e as Error).message}`);
  }
  if (!isObject(doc)) throw invalid("load parameter 'config' must be a JSON object (a Triton model config)");
  const patch: Record<string, unknown> = {};
  const mapped = (path: MappedPath, v: unknown) => {
    const n = integerOf(path, v);
    const field = MAPPED[path];
    if (path === 'instance_group.count' && n < 1) throw invalid(`config field '${path}' must be at least 1, got ${n}`);
    patch[field] = path.endsWith('_microseconds') ? Math.ceil(n / 1000) : n;
  };
  /** An unmapped field: accepted only when it equals the current config's value. */
  const unchanged = (path: string, v: unknown, cur: unknown) => {
    if (cur !== undefined && sameValue(v, cur)) return;
    throw invalid(`config field '${path}' cannot be changed by a load (it has no registry field); ` +
      `the fields that can: ${Object.keys(MAPPED).join(', ')}`);
  };

  for (const [key, v] of Object.entries(doc)) {
    if (key === 'name') {
      if (v !== model) throw invalid(`config field 'name' is ${JSON.stringify(v)} but the model is '${model}'`);
    } else if (key === 'max_batch_size') {
      if (!(current && sameValue(v, current.max_batch_size))) mapped('max_batch_size', v);
    } else if (key === 'dynamic_batching' || key === 'sequence_batching') {
      if (!isObject(v)) throw invalid(`config field '${key}' must be an object`);
      const cur = current?.[key] as Record<string, unknown> | undefined;
      const delayKey = key === 'dynamic_batching' ? 'max_queue_delay_microseconds' : 'max_sequence_idle_microseconds';
      for (const [sub, sv] of Object.entries(v)) {
        const path = `${key}.${sub}`;
        if (sub === delayKey) {
          if (!(cur && sameValue(sv, cur[sub]))) mapped(path as MappedPath, sv);
        } else unchanged(path, sv, cur?.[sub]);
      }
    } else if (key === 'instance_group') {
      if (!Array.isArray(v) || v.length !== 1 || !isObject(v[0])) {
        throw invalid("config field 'instance_group' must list one group (the broker runs one kind of copy per model)");
      }
      const cur = current?.instance_group[0] as Record<string, unknown> | undefined;
      for (const [sub, sv] of Object.entries(v[0])) {
        if (sub === 'count') {
          if (!(cur && sameValue(sv, cur.count))) mapped('instance_group.count', sv);
        } else unchanged(`instance_group[0].${sub}`, sv, cur?.[sub]);
      }
    } else if (key === 'output' && Array.isArray(v) && v.some((o) => isObject(o) && 'label_filename' in o)) {
      const i = v.findIndex((o) => isObject(o) && 'label_filename' in o);
      throw invalid(`config field 'output[${i}].label_filename' is refused: a load never makes the broker read a host file; ` +
        'name label files in models.yaml (field "labels"), or give the labels as a list through the admin API');
    } else {
      unchanged(key, v, (current as unknown as Record<string, unknown> | undefined)?.[key]);
    }
  }
  return patch;
}

/** Triton load parameters that carry model files: never accepted (the broker runs registered images and commands only). */
export function refuseFileParameters(keys: string[]): void {
  const files = keys.filter((k) => k.startsWith('file:'));
  if (files.length > 0) {
    throw invalid(`load parameter(s) ${files.map((k) => `'${k}'`).join(', ')} are refused: model files are never accepted, ` +
      'models run from their registered image or command');
  }
}

/** The model's config as GET .../config shows it; undefined when it never ran (no metadata yet). */
export function currentConfig(broker: BrokerApi, model: string): TritonModelConfig | undefined {
  try {
    return tritonConfig(broker.describe(model));
  } catch (e) {
    if (e instanceof BrokerError && e.code === 'UNAVAILABLE') return undefined;
    throw e;
  }
}
