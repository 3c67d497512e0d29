/** Plain-text tables for the terminal (start table, `tensorbroker models`). */

/** Left-aligned columns separated by two spaces; the header row is upper-cased. */
export function formatTable(header: string[], rows: string[][]): string {
  const all = [header.map((h) => h.toUpperCase()), ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  return all.map((r) => r.map((c, i) => (i === r.length - 1 ? c : (c ?? '').padEnd(widths[i]))).join('  ').trimEnd()).join('\n') + '\n';
}
