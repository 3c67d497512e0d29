/**
 * `tensorbroker build PATH`: builds the image of a model project made with
 * `tensorbroker init` (or laid out the same way), showing docker's steps, then
 * smoke-tests it (READY). Base images come from examples/build-images.ts, the
 * same code `npm run images` uses: they are made from the host when missing,
 * never pulled.
 */
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseModelsFile } from '../../model-manager/models-file';
import type { Lang } from './init';
import { repoRoot } from './repo';
import { smokeTest } from './smoke';

export interface BuildOptions {
  /** Image tag (default: the `image` of the project's models.yaml entry, else <folder>:dev). */
  tag?: string;
  /** Base image (default: node:20-bookworm-slim when present, else tb-node-base:local; Python: tb-python-base:local). */
  base?: string;
  /** Run the image and wait for READY (default true). */
  smoke?: boolean;
  smokeTimeoutMs?: number;
  log?: (msg: string) => void;
}

export interface BuildResult { tag: string; lang: Lang; model: string; base: string }

const NODE_BASE = 'node:20-bookworm-slim';

function detectLang(dir: string): Lang {
  if (fs.existsSync(path.join(dir, 'package.json'))) return 'node';
  if (fs.existsSync(path.join(dir, 'model.py'))) return 'python';
  throw new Error(`${dir} is not a model project: it has neither package.json (Node) nor model.py (Python); see \`tensorbroker init model --help\``);
}

/** The project's models.yaml entry: its name and image, when there is one. */
function projectEntry(dir: string): { model: string; image?: string } {
  const file = path.join(dir, 'models.yaml');
  if (!fs.existsSync(file)) return { model: path.basename(dir) };
  const parsed = parseModelsFile(fs.readFileSync(file, 'utf8'), file);
  if (!parsed.ok || parsed.errors.length) throw new Error(parsed.errors.join('\n'));
  const spec = parsed.specs[0];
  return spec ? { model: spec.name, image: spec.image } : { model: path.basename(dir) };
}

const skip = (names: string[]) => (p: string) => !names.includes(path.basename(p));

/** Node: the project and its installed node_modules, symlinks resolved (docker would copy them dangling). */
function nodeContext(project: string, ctx: string): void {
  if (!fs.existsSync(path.join(project, 'node_modules', '@tensorbroker', 'sdk', 'package.json'))) {
    throw new Error(`${project}: @tensorbroker/sdk is not installed: run \`npm install\` there first`);
  }
  fs.cpSync(project, ctx, { recursive: true, dereference: true, filter: skip(['.git', '.cache']) });
}

/** Python: the project plus vendor/ with the SDK's two packages, from the project's .venv when it has one. */
function pythonContext(project: string, ctx: string, log: (msg: string) => void): void {
  fs.cpSync(project, ctx, { recursive: true, filter: skip(['.git', '.venv', '__pycache__', 'vendor']) });
  const venvPython = path.join(project, '.venv', 'bin', 'python');
  let dirs: string[];
  if (fs.existsSync(venvPython)) {
    const out = execFileSync(venvPython, ['-c', 'import os, tensorbroker_model as m, tensorbroker_client as c; print(os.path.dirname(m.__file__)); print(os.path.dirname(c.__file__))'], { encoding: 'utf8' });
    dirs = out.trim().split('\n');
  } else {
    dirs = ['tensorbroker_model', 'tensorbroker_client'].map((p) => path.join(repoRoot(), 'sdk', 'python', p));
  }
  for (const d of dirs) fs.cpSync(d, path.join(ctx, 'vendor', path.basename(d)), { recursive: true, filter: skip(['__pycache__']) });
  log(`python SDK from ${path.dirname(dirs[0])}`);
}

/** `docker build` (legacy builder: never pulls with --pull=false), its steps as progress. */
function dockerBuild(ctx: string, tag: string, base: string, log: (msg: string) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = spawn('docker', ['build', '--pull=false', '--build-arg', `BASE_IMAGE=${base}`, '-t', tag, ctx],
      { env: { ...process.env, DOCKER_BUILDKIT: '0' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let tail = '';
    let partial = '';
    const onData = (b: Buffer) => {
      tail = (tail + b.toString()).slice(-4000);
      partial += b.toString();
      const lines = partial.split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) if (/^Step \d+\/\d+ :/.test(line) || /^Successfully (built|tagged)/.test(line)) log(line);
    };
    p.stdout.on('data', onData);
    p.stderr.on('data', onData);
    p.on('error', (e) => reject(new Error(`docker: ${e.message}`)));
    p.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`docker build exited ${code}:\n${tail}`))));
  });
}

export async function buildModel(projectPath: string, opts: BuildOptions = {}): Promise<BuildResult> {
  const log = opts.log ?? ((m: string) => process.stderr.write(`${m}\n`));
  const project = path.resolve(projectPath);
  if (!fs.existsSync(project) || !fs.statSync(project).isDirectory()) throw new Error(`${project} is not a folder`);
  if (!fs.existsSync(path.join(project, 'Dockerfile'))) throw new Error(`${project} has no Dockerfile`);
  const lang = detectLang(project);
  const { model, image } = projectEntry(project);
  const tag = opts.tag ?? image ?? `${path.basename(project).toLowerCase()}:dev`;

  // Loaded here, not at the top: `serve` never needs it.
  const images = await import('../../examples/build-images');
  let base: string;
  if (lang === 'node') {
    base = opts.base ?? process.env.TB_BASE_IMAGE ?? (images.imageExists(NODE_BASE) ? NODE_BASE : images.OFFLINE_BASE);
    if (base === images.OFFLINE_BASE) await images.ensureOfflineBaseImage(base, log);
  } else {
    base = opts.base ?? process.env.TB_PYTHON_BASE_IMAGE ?? images.OFFLINE_PYTHON_BASE;
    if (base === images.OFFLINE_PYTHON_BASE) await images.ensureOfflinePythonBase(base, log);
  }
  if (!images.imageExists(base)) throw new Error(`base image ${base} is not present locally and this command never pulls: docker pull it, or leave --base out to use one made from this host`);

  const ctx = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-build-'));
  try {
    log(`${lang} model ${model}: preparing the build context`);
    if (lang === 'node') nodeContext(project, ctx);
    else pythonContext(project, ctx, log);
    log(`building ${tag} on ${base}`);
    await dockerBuild(ctx, tag, base, log);
  } finally {
    fs.rmSync(ctx, { recursive: true, force: true });
  }
  if (opts.smoke !== false) await smokeTest(tag, model, opts.smokeTimeoutMs ?? 60_000, log);
  log(`built ${tag}`);
  return { tag, lang, model, base };
}
