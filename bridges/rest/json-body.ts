/**
 * JSON text <-> values for the REST bridge, exact for 64-bit integers.
 *
 * JSON.parse rounds integers beyond 2^53 (4611686018427387907 becomes
 * 4611686018427388000), so an INT64/UINT64 tensor would change silently. A
 * body with an integer literal of 16 digits or more (the first length that can
 * exceed 2^53) is parsed with lossless-json, which hands such integers over as
 * bigint; every other body takes JSON.parse, as fast as before. Output JSON
 * holding a bigint is written by lossless-json's stringify, digit for digit.
 */
import { parse as losslessParse, stringify as losslessStringify } from 'lossless-json';
import { BrokerError } from '../../core/errors';
import { boundMessage } from '../shared/truncate';

/** An integer literal of 16+ digits, not part of a fraction or an exponent. */
const LONG_INTEGER = /(?:^|[^\d.eE+-])-?\d{16,}(?![\d.eE])/;

/** Integers too long for a double become bigint; every other number a number, as JSON.parse gives. */
function parseNumber(text: string): number | bigint {
  if (text.length > 15 && /^-?\d+$/.test(text)) {
    const big = BigInt(text);
    return big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
  }
  return Number(text);
}

/** True when the text needs the exact parser (exported for tests). */
export function hasLongInteger(text: string): boolean {
  return LONG_INTEGER.test(text);
}

/**
 * Parses a request's JSON. Malformed JSON, or JSON nested too deep for the
 * exact parser's recursion, is a 400 with a bounded message (never a 500).
 */
export function parseJson(text: string, what = 'the body'): unknown {
  try {
    if (!hasLongInteger(text)) return JSON.parse(text);
    return losslessParse(text, null, parseNumber);
  } catch (e) {
    const why = e instanceof RangeError ? 'it is nested too deep' : (e as Error).message;
    throw new BrokerError('INVALID_ARGUMENT', boundMessage(`${what} is not valid JSON: ${why}`));
  }
}

/** JSON text of a response: JSON.stringify, or lossless-json's stringify when a bigint is inside. */
export function stringifyJson(value: unknown): string {
  try {
    return JSON.stringify(value);
  } catch (e) {
    if (!(e instanceof TypeError) || !/BigInt/i.test(e.message)) throw e;
    return losslessStringify(value) as string;
  }
}
