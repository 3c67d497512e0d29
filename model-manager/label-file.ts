/**
 * Triton's label file: one label per line, the label of class i on line i
 * (counted from 0). A final newline ends the last line (it adds no empty
 * label); CRLF line ends are accepted. Read synchronously while models.yaml
 * is loaded, and only then: nothing else names host files.
 */
import { readFileSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { MAX_LABEL_LENGTH, MAX_LABELS } from '../core/model-spec';

/** Refuse bigger files before reading them (65,536 labels of 1 KiB plus line ends fit). */
const MAX_FILE_BYTES = MAX_LABELS * (MAX_LABEL_LENGTH + 2);

export type LabelFileResult = { labels: string[]; error?: undefined } | { error: string; labels?: undefined };

/** Parse the text of a label file. */
export function parseLabels(text: string): LabelFileResult {
  if (text.length === 0) return { labels: [] };
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  if (lines.length > MAX_LABELS) return { error: `has ${lines.length} lines, more than the ${MAX_LABELS} labels an output may have` };
  const labels = lines.map((l) => (l.endsWith('\r') ? l.slice(0, -1) : l));
  const long = labels.findIndex((l) => l.length > MAX_LABEL_LENGTH);
  if (long >= 0) return { error: `line ${long + 1} is longer than ${MAX_LABEL_LENGTH} characters` };
  return { labels };
}

/** Read `file` (relative paths against `dir`, the models.yaml folder); the error names the resolved path. */
export function readLabelFile(dir: string, file: string): LabelFileResult {
  const abs = path.resolve(dir, file);
  try {
    const st = statSync(abs);
    if (!st.isFile()) return { error: `label file ${abs} is not a regular file` };
    if (st.size > MAX_FILE_BYTES) return { error: `label file ${abs} is ${st.size} bytes, more than the ${MAX_FILE_BYTES} allowed` };
    const r = parseLabels(readFileSync(abs, 'utf8'));
    return r.error ? { error: `label file ${abs} ${r.error}` } : r;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return { error: `label file ${abs} ${code === 'ENOENT' ? 'not found' : `cannot be read (${code ?? String(err)})`}` };
  }
}
