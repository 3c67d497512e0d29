/**
 * Loads models.yaml. Three layouts are accepted (see README):
 *
 *   1. Inferoxy's, unchanged: the top level maps each model name to its entry.
 *   2. `models:` holding a map of name → entry.
 *   3. A list of entries with `name`, at the top level or under `models:`.
 *
 * A bad entry is reported and skipped; it never stops the others loading.
 * A file that cannot be read or parsed gives one error naming the file and
 * `ok: false`, so the caller can keep the registry as it is instead of
 * treating the file as empty.
 */
import { readFile } from 'node:fs/promises';
import * as path from 'node:path';
import { parseDocument } from 'yaml';
import type { ModelSpec } from '../core/model-spec';
import { show, validateEntry } from './schema';

export interface ModelsFile {
  /** Absolute path of the file. */
  path: string;
  /** Absolute folder of the file: the cwd for `command` (also set as `spec.cwd` on specs with a command). */
  dir: string;
  /** Valid entries, source 'file'. */
  specs: ModelSpec[];
  /** One message per problem, each naming the file. */
  errors: string[];
  /** Names of entries that were present but invalid (the registry leaves their Redis records alone). */
  invalid: string[];
  /** False when the file could not be read or parsed at all: then `specs` is empty and means nothing. */
  ok: boolean;
}

function isMap(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** `models:` is a wrapper (not a model named "models") when it is the only key and holds a list, nothing, or a map of maps. */
function isWrapper(top: Record<string, unknown>): boolean {
  const keys = Object.keys(top);
  if (keys.length !== 1 || keys[0] !== 'models') return false;
  const inner = top.models;
  if (inner === null || Array.isArray(inner)) return true;
  return isMap(inner) && Object.values(inner).every((v) => v === null || isMap(v));
}

/** Parse models.yaml text. `filePath` is used for messages and for `dir`. */
export function parseModelsFile(text: string, filePath: string): ModelsFile {
  const abs = path.resolve(filePath);
  const dir = path.dirname(abs);
  const result: ModelsFile = { path: abs, dir, specs: [], errors: [], invalid: [], ok: true };
  const fail = (msg: string): ModelsFile => ({ ...result, ok: false, errors: [`models file ${abs}: ${msg}`] });

  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    const first = doc.errors[0];
    const where = first.linePos ? ` at line ${first.linePos[0].line}, column ${first.linePos[0].col}` : '';
    return fail(`YAML syntax error${where}: ${first.message.split('\n')[0]}`);
  }
  const top: unknown = doc.toJS();

  let entries: [string, unknown][];
  const fromList = (list: unknown[]): [string, unknown][] =>
    list.flatMap((item, i): [string, unknown][] => {
      if (!isMap(item) || typeof item.name !== 'string') {
        result.errors.push(`models file ${abs}: list item ${i + 1} needs a "name" string field (got ${show(item)})`);
        return [];
      }
      return [[item.name, item]];
    });

  if (top === null || top === undefined) {
    entries = [];
  } else if (Array.isArray(top)) {
    entries = fromList(top);
  } else if (isMap(top)) {
    if (isWrapper(top)) {
      const inner = top.models;
      entries = Array.isArray(inner) ? fromList(inner) : Object.entries((inner ?? {}) as Record<string, unknown>);
    } else {
      entries = Object.entries(top);
    }
  } else {
    return fail(`the top level must be a map of model name → entry, "models:", or a list of entries (got ${show(top)})`);
  }

  const seen = new Set<string>();
  for (const [name, raw] of entries) {
    if (seen.has(name)) {
      result.errors.push(`models file ${abs}: model ${show(name)} is defined more than once; the later one is skipped`);
      continue;
    }
    seen.add(name);
    const v = validateEntry(name, raw, { allowCommand: true, source: 'file', labelDir: dir });
    if (v.errors) {
      result.errors.push(...v.errors.map((e) => `models file ${abs}: ${e}`));
      result.invalid.push(name);
      continue;
    }
    if (v.spec.command) v.spec.cwd = dir;
    result.specs.push(v.spec);
  }
  return result;
}

/** Read and parse models.yaml; never throws. */
export async function loadModelsFile(filePath: string): Promise<ModelsFile> {
  const abs = path.resolve(filePath);
  let text: string;
  try {
    text = await readFile(abs, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'not found' : `cannot be read (${code ?? String(err)})`;
    return { path: abs, dir: path.dirname(abs), specs: [], errors: [`models file ${abs}: ${why}`], invalid: [], ok: false };
  }
  return parseModelsFile(text, abs);
}
