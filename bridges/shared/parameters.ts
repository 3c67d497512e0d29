/**
 * Request-level KServe v2 parameters every bridge honours the same way:
 * `timeout` (microseconds, Triton's schedule-policy extension) and `priority`
 * (0 = default, 1 = highest). Values may arrive as numbers, bigints or
 * numeric strings depending on the protocol.
 */
import { BrokerError } from '../../core/errors';

export interface RequestOptions {
  timeoutMs?: number;
  priority?: number;
}

function nonNegativeInt(key: string, v: unknown): number | undefined {
  if (v === undefined || v === null) return undefined;
  const n = typeof v === 'bigint' ? Number(v) : typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) {
    throw new BrokerError('INVALID_ARGUMENT', `parameter '${key}' must be a non-negative integer (got ${JSON.stringify(String(v))})`);
  }
  return n;
}

export function requestOptions(params: Record<string, unknown>): RequestOptions {
  const timeoutUs = nonNegativeInt('timeout', params.timeout);
  const priority = nonNegativeInt('priority', params.priority);
  return {
    timeoutMs: timeoutUs !== undefined && timeoutUs > 0 ? Math.max(1, Math.round(timeoutUs / 1000)) : undefined,
    priority,
  };
}
