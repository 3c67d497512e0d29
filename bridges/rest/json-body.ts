/**
 * JSON text <-> values for the REST bridge, exact for 64-bit integers.
 *
 * JSON.parse rounds integers beyond 2^53 (4611686018427387907 becomes
 * 4611686018427388000), so an INT64/UINT64 tensor would change silently.
 * Every body is parsed with JSON.parse first, as fast as before. Where a
 * value may have been rounded (an integer beyond 2^53 in an INT64/UINT64
 * input, a sequence id or a request id) the codec throws InexactInteger, and
 * the body is parsed again with lossless-json, which hands such integers over
 * as bigint. So only bodies that carry such integers pay for the exact parser,
 * and nothing scans the others. Output JSON holding a bigint is written by
 * lossless-json's stringify, digit for digit.
 */
import { parse as losslessParse, stringify as losslessStringify } from 'lossless-json';
import { BrokerError } from '../../core/errors';
import { boundMessage } from '../shared/truncate';

/** Integers too long for a double become bigint; every other number a number, as JSON.parse gives. */
function parseNumber(text: string): number | bigint {
  if (text.length > 15 && /^-?\d+$/.test(text)) {
    const big = BigInt(text);
    return big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
  }
  return Number(text);
}

/** A JSON number that is an integer beyond 2^53: JSON.parse may have rounded it, so the body is read again exactly. */
export class InexactInteger extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'InexactInteger';
  }
}

/** Throws InexactInteger when `v` is a number that is an integer beyond 2^53 (`what` names it for the error). */
export function checkExact(v: unknown, what: string): void {
  if (typeof v === 'number' && Number.isInteger(v) && !Number.isSafeInteger(v)) {
    throw new InexactInteger(`${what} (${v}) is an integer beyond 2^53 that is not written exactly: write its digits (or a string)`);
  }
}

/**
 * Parses a request's JSON (`exact`: with lossless-json). Malformed JSON, or
 * JSON nested too deep for the exact parser's recursion, is a 400 with a
 * bounded message (never a 500).
 */
export function parseJson(text: string, what = 'the body', exact = false): unknown {
  try {
    return exact ? losslessParse(text, null, parseNumber) : JSON.parse(text);
  } catch (e) {
    const why = e instanceof RangeError ? 'it is nested too deep' : (e as Error).message;
    throw new BrokerError('INVALID_ARGUMENT', boundMessage(`${what} is not valid JSON: ${why}`));
  }
}

/**
 * Parses `text` and reads it with `read`; when `read` finds an integer JSON.parse
 * may have rounded (InexactInteger), parses again exactly and reads again. An
 * integer still inexact then (written as 1e20, say) is a 400.
 */
export function readJson<T>(text: string, what: string, read: (value: unknown) => T): T {
  try {
    return read(parseJson(text, what));
  } catch (e) {
    if (!(e instanceof InexactInteger)) throw e;
  }
  try {
    return read(parseJson(text, what, true));
  } catch (e) {
    if (e instanceof InexactInteger) throw new BrokerError('INVALID_ARGUMENT', e.message);
    throw e;
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
