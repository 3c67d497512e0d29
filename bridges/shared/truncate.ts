/**
 * Bounds what error messages and log lines repeat of a client's input: a
 * 20 MB body must not become a 20 MB error and a 20 MB log line. Every bridge
 * quotes client values through these.
 */

/** Characters of client input an error message quotes at most. */
export const QUOTE_LIMIT = 120;

/** Characters a whole error message may have (the text around the quotes included). */
export const MESSAGE_LIMIT = 2000;

/** `text` cut to `max` characters, saying how much was left out. */
export function truncate(text: string, max = QUOTE_LIMIT): string {
  if (text.length <= max) return text;
  return `${text.slice(0, max)}… (${text.length - max} more characters)`;
}

/**
 * A client value as JSON, bounded. Strings are cut before stringifying, so a
 * huge string is never copied whole; other values are stringified (they come
 * from a body already under the size limit) and then cut.
 */
export function quote(value: unknown, max = QUOTE_LIMIT): string {
  if (typeof value === 'string') {
    return value.length <= max ? JSON.stringify(value) : `${JSON.stringify(value.slice(0, max))}… (${value.length - max} more characters)`;
  }
  if (typeof value === 'bigint') return truncate(value.toString(), max);
  try {
    // JSON.stringify and String() both recurse: an array nested 10,000 deep overflows the stack.
    return truncate(JSON.stringify(value) ?? String(value), max);
  } catch {
    return Array.isArray(value) ? '(an array nested too deep to show)' : '(a value that cannot be shown)';
  }
}

/** A whole error message, bounded (for messages built from texts the broker does not control, e.g. a parser's). */
export function boundMessage(message: string, max = MESSAGE_LIMIT): string {
  return truncate(message, max);
}
