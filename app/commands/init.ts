/**
 * `tensorbroker init model NAME --lang node|python`: writes a model project from
 * examples/templates/<lang>/ (the model, a test calling it through a broker, a
 * Dockerfile, its models.yaml entry), replacing the __NAME__-style placeholders.
 */
import fs from 'node:fs';
import path from 'node:path';
import { checkModelName } from '../../model-manager/schema';
import { repoRoot } from './repo';

export type Lang = 'node' | 'python';
export const LANGS: Lang[] = ['node', 'python'];

export interface InitOptions {
  lang: Lang;
  /** Project folder (default ./NAME); must not exist or be empty. */
  dir?: string;
  /**
   * Node: the "@tensorbroker/sdk" dependency (a version range, or a path to a packed
   * .tgz, written as file:ABSOLUTE). Python: the wheel named in requirements.txt.
   */
  sdk?: string;
}

export interface InitResult { dir: string; files: string[] }

/** my-model.v2 → MyModelV2 (the Python class name). */
const className = (name: string) => name.split(/[^A-Za-z0-9]+/).filter(Boolean).map((w) => w[0].toUpperCase() + w.slice(1)).join('').replace(/^(\d)/, 'M$1');

function sdkSpec(lang: Lang, sdk: string | undefined, version: string): string {
  if (lang === 'node') {
    if (!sdk) return `^${version}`;
    return /\.tgz$/.test(sdk) || sdk.startsWith('.') || sdk.startsWith('/') ? `file:${path.resolve(sdk)}` : sdk;
  }
  return sdk ? path.resolve(sdk) : `tensorbroker-${version}-py3-none-any.whl`;
}

function listFiles(dir: string, prefix = ''): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? listFiles(path.join(dir, e.name), path.join(prefix, e.name)) : [path.join(prefix, e.name)]);
}

export function initModel(name: string, opts: InitOptions): InitResult {
  const bad = checkModelName(name);
  if (bad) throw new Error(bad);
  if (!LANGS.includes(opts.lang)) throw new Error(`--lang must be one of ${LANGS.join(', ')} (got "${opts.lang}")`);
  const dir = path.resolve(opts.dir ?? name);
  if (fs.existsSync(dir) && fs.readdirSync(dir).length > 0) throw new Error(`${dir} exists and is not empty`);
  const root = repoRoot();
  const version = (JSON.parse(fs.readFileSync(path.join(root, 'sdk', 'node', 'package.json'), 'utf8')) as { version: string }).version;
  const templates = path.join(root, 'examples', 'templates', opts.lang);
  const values: Record<string, string> = {
    __NAME__: name,
    __CLASS__: className(name),
    __IMAGE__: `${name.toLowerCase()}:dev`,
    __SDK__: sdkSpec(opts.lang, opts.sdk, version),
    __WHEEL__: sdkSpec(opts.lang, opts.sdk, version),
  };
  const files: string[] = [];
  for (const rel of listFiles(templates)) {
    // npm and git treat a file named .gitignore specially, so the template ships it without the dot.
    const out = rel === 'gitignore' ? '.gitignore' : rel;
    let text = fs.readFileSync(path.join(templates, rel), 'utf8').replace(/__[A-Z]+__/g, (k) => values[k] ?? k);
    if (out === 'package.json') {
      const pkg = JSON.parse(text) as { name: string };
      pkg.name = name.toLowerCase(); // npm names are lower case
      text = JSON.stringify(pkg, null, 2) + '\n';
    }
    fs.mkdirSync(path.dirname(path.join(dir, out)), { recursive: true });
    fs.writeFileSync(path.join(dir, out), text);
    files.push(out);
  }
  return { dir, files: files.sort() };
}
