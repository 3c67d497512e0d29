/**
 * Request-level KServe v2 parameters every bridge honours the same way:
 * `timeout` (microseconds, Triton's schedule-policy extension), `priority`
 * (0 = default, 1 = highest), and the sequence extension's `sequence_id`
 * (uint64 or string; 0 or "" = none), `sequence_start`, `sequence_end`.
 * Values may arrive as numbers, bigints, booleans or strings depending on the
 * protocol (a query string gives only strings).
 */
import { quote } from './truncate';
import { BrokerError } from '../../core/errors';
import type { SequenceRef } from '../../core/types';

export interface RequestOptions {
  timeoutMs?: number;
  priority?: number;
  sequence?: SequenceRef;
}

const invalid = (msg: string) => new BrokerError('INVALID_ARGUMENT', msg);

function nonNegativeInt(key: string, v: unknown): number | undefined {
  if (v === undefined || v === null) return undefined;
  const n = typeof v === 'bigint' ? Number(v) : typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) {
    throw invalid(`parameter '${key}' must be a non-negative integer (got ${quote(v)})`);
  }
  return n;
}

function flag(key: string, v: unknown): boolean {
  if (v === undefined || v === null) return false;
  if (typeof v === 'boolean') return v;
  if (v === 1 || v === 0 || v === 1n || v === 0n) return Number(v) === 1;
  if (typeof v === 'string' && /^(true|false|1|0)$/i.test(v)) return /^(true|1)$/i.test(v);
  throw invalid(`parameter '${key}' must be a boolean (got ${quote(v)})`);
}

/**
 * The sequence id as the broker's string: an unsigned integer in decimal (so
 * 7, 7n and "7" are one sequence on every bridge) or any other non-empty string.
 * 0 and "" mean "not in a sequence".
 */
export function sequenceId(v: unknown): string | undefined {
  if (v === undefined || v === null || v === '' || v === 0 || v === 0n) return undefined;
  if (typeof v === 'bigint') {
    if (v < 0n) throw invalid(`parameter 'sequence_id' must be an unsigned integer or a string (got ${v})`);
    return v.toString();
  }
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v) || v < 0) {
      throw invalid(`parameter 'sequence_id' must be an unsigned integer up to 2^53 or a string (got ${v}); send larger ids as strings`);
    }
    return String(v);
  }
  if (typeof v === 'string') {
    if (v.length > 256) throw invalid('parameter \'sequence_id\' is longer than 256 characters');
    return /^\d+$/.test(v) ? (BigInt(v) === 0n ? undefined : BigInt(v).toString()) : v;
  }
  throw invalid(`parameter 'sequence_id' must be an unsigned integer or a string (got ${quote(v)})`);
}

/** The sequence control of a request, or undefined when it is not in a sequence. */
export function sequenceRef(params: Record<string, unknown>): SequenceRef | undefined {
  const id = sequenceId(params.sequence_id);
  const start = flag('sequence_start', params.sequence_start);
  const end = flag('sequence_end', params.sequence_end);
  if (id === undefined) {
    if (start || end) throw invalid('sequence_start / sequence_end need a sequence_id');
    return undefined;
  }
  return { id, start, end };
}

export function requestOptions(params: Record<string, unknown>): RequestOptions {
  const timeoutUs = nonNegativeInt('timeout', params.timeout);
  const priority = nonNegativeInt('priority', params.priority);
  const sequence = sequenceRef(params);
  return {
    timeoutMs: timeoutUs !== undefined && timeoutUs > 0 ? Math.max(1, Math.round(timeoutUs / 1000)) : undefined,
    priority,
    ...(sequence ? { sequence } : {}),
  };
}
