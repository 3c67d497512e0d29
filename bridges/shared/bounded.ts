/**
 * Error messages may quote what a client sent (a name, a parse error of its
 * body). Bound them, so a 20 MB field does not become a 20 MB answer and log line.
 */
export const MAX_MESSAGE_CHARS = 512;

export function bounded(text: string, max = MAX_MESSAGE_CHARS): string {
  if (text.length <= max) return text;
  return `${text.slice(0, max)}… (${text.length - max} more characters)`;
}
