/**
 * The stored form of a model: one JSON record (the ModelSpec minus
 * `command`/`cwd`, plus `source`), written with sorted keys so that equal
 * specs give equal strings (the Lua scripts compare them byte for byte).
 *
 * Records read back from a store are untrusted input: they go through the
 * same schema as models.yaml and the admin API, and, when a signing key is
 * configured, must carry `sig` = HMAC-SHA256(key, record without `sig`).
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { ModelSpec } from '../core/model-spec';
import { validateEntry } from './schema';

export type StoredRecord = Omit<ModelSpec, 'command' | 'cwd'>;

/** JSON with sorted object keys. */
export function canonical(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) =>
    v && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : v,
  );
}

export function toRecord(spec: ModelSpec, source: ModelSpec['source'] = spec.source): StoredRecord {
  const { command: _c, cwd: _d, ...rest } = spec;
  return { ...rest, env: { ...spec.env }, source };
}

function sign(body: string, key: string): string {
  return createHmac('sha256', key).update(body).digest('hex');
}

/** The string stored for a spec: canonical JSON, signed when `signingKey` is given. */
export function encodeRecord(spec: ModelSpec, source: ModelSpec['source'], signingKey?: string): string {
  const record = toRecord(spec, source);
  const body = canonical(record);
  return signingKey ? canonical({ ...record, sig: sign(body, signingKey) }) : body;
}

export type DecodeResult = { spec: ModelSpec; error?: undefined } | { error: string; details?: string[]; spec?: undefined };

/**
 * Parse, authenticate and validate one stored record of model `name`.
 * Never throws: a bad record gives `error` (the caller logs it and keeps what it had).
 */
export function decodeRecord(name: string, raw: string, signingKey?: string): DecodeResult {
  let rec: unknown;
  try {
    rec = JSON.parse(raw);
  } catch {
    return { error: 'registry record is not JSON; ignored' };
  }
  if (typeof rec !== 'object' || rec === null || Array.isArray(rec)) return { error: 'registry record is not a JSON object; ignored' };
  const { sig, source, ...entry } = rec as Record<string, unknown>;
  if (signingKey) {
    if (typeof sig !== 'string') return { error: 'registry record is not signed (a signing key is configured); refused' };
    const { sig: _s, ...unsigned } = rec as Record<string, unknown>;
    const want = Buffer.from(sign(canonical(unsigned), signingKey), 'hex');
    const got = Buffer.from(sig, 'hex');
    if (got.length !== want.length || !timingSafeEqual(got, want)) return { error: 'registry record has a wrong signature; refused' };
  }
  if (source !== 'api' && source !== 'file') return { error: `registry record has no valid "source"; ignored` };
  const v = validateEntry(name, entry, { allowCommand: false, requireLaunch: false, source });
  if (v.errors) return { error: 'registry record is invalid; ignored', details: v.errors };
  return { spec: v.spec };
}
