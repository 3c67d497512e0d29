/**
 * Builds the example model images (tensorbroker/<model>:dev) from the compiled
 * tree, without a registry. Run after `npm run build`: `npm run images`.
 * Env: TB_BASE_IMAGE (default node:24-bookworm-slim; tb-node-base:local is made
 * from the host's node by scripts/offline-bases.sh when asked for). An image whose
 * inputs label (INPUTS_LABEL) matches its context and base is kept, not rebuilt.
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { builtinModules } from 'node:module';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export const EXAMPLE_MODELS = ['simple', 'sleepy', 'image-info', 'motion', 'text-detector'];
/** Python example models (sdk/python), built on OFFLINE_PYTHON_BASE. */
export const PYTHON_MODELS = ['py-histogram'];
export const OFFLINE_BASE = `tb-node-base:${process.env.TB_BASE_TAG || 'local'}`;
/** tensorbroker/<model>:dev (TB_IMAGE_TAG replaces `dev`, e.g. for a side-by-side CI run). */
export const imageTag = (model: string) => `tensorbroker/${model}:${process.env.TB_IMAGE_TAG || 'dev'}`;

type Log = (msg: string) => void;
const defaultLog: Log = (msg) => process.stderr.write(`[images] ${msg}\n`);

/** Repository root: the nearest package.json above this file (runs from examples/ or dist/examples/). */
function findRoot(): string {
  let dir = __dirname;
  while (!fs.existsSync(path.join(dir, 'package.json'))) {
    if (dir === path.dirname(dir)) throw new Error('package.json not found');
    dir = path.dirname(dir);
  }
  return dir;
}
const ROOT = findRoot();
const DIST = path.join(ROOT, 'dist');

function run(cmd: string, args: string[], log: Log, env: NodeJS.ProcessEnv = process.env): Promise<void> {
  return new Promise((resolve, reject) => {
    log(`$ ${cmd} ${args.join(' ')}`);
    const p = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let tail = '';
    const onData = (b: Buffer) => {
      const s = b.toString();
      tail = (tail + s).slice(-4000);
      for (const line of s.split('\n')) if (line.trim()) log(`  ${line}`);
    };
    p.stdout.on('data', onData);
    p.stderr.on('data', onData);
    p.on('error', reject);
    p.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} ${args[0]} exited ${code}: ${tail}`))));
  });
}

export function imageExists(tag: string): boolean {
  try {
    execFileSync('docker', ['image', 'inspect', tag], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Shared libraries a binary links to, per ldd (absolute paths). */
function lddLibs(file: string): string[] {
  const out = execFileSync('ldd', [file], { encoding: 'utf8' });
  if (/not found/.test(out)) throw new Error(`ldd ${file}: missing libraries on the host:\n${out}`);
  return [...out.matchAll(/(\/[^\s)]+)/g)].map((m) => m[1]);
}

/**
 * Makes (or keeps, when its inputs are unchanged) the registry-free runtime base
 * with scripts/offline-bases.sh: the node running this script, a shell, CA
 * certificates and the libraries the native modules need, checked with ldd.
 */
export async function ensureOfflineBaseImage(tag = OFFLINE_BASE, log: Log = defaultLog): Promise<string> {
  const [name, version] = tag.split(':');
  if (name !== 'tb-node-base') throw new Error(`offline base ${tag}: scripts/offline-bases.sh makes tb-node-base:<tag> only`);
  await run(path.join(ROOT, 'scripts', 'offline-bases.sh'), ['node'], log,
    { ...process.env, TB_NODE: process.env.TB_NODE || process.execPath, TB_BASE_TAG: version ?? 'local', TB_NODE_MODULES: path.join(ROOT, 'node_modules') });
  return tag;
}

/** Relative and bare requires of a compiled CommonJS file. */
function requiresOf(file: string): string[] {
  const src = fs.readFileSync(file, 'utf8');
  return [...src.matchAll(/require\(["']([^"']+)["']\)/g)].map((m) => m[1]);
}

const packageName = (spec: string) => (spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]);
const isBuiltin = (spec: string) => spec.startsWith('node:') || builtinModules.includes(packageName(spec));

/** Compiled files reachable from `entry` through relative requires, plus the packages they name. */
function jsClosure(entry: string): { files: Set<string>; packages: Set<string> } {
  const files = new Set<string>();
  const packages = new Set<string>();
  const todo = [entry];
  while (todo.length) {
    const f = todo.pop() as string;
    if (files.has(f)) continue;
    files.add(f);
    for (const spec of requiresOf(f)) {
      if (spec.startsWith('.')) {
        const base = path.resolve(path.dirname(f), spec);
        const hit = [base, `${base}.js`, path.join(base, 'index.js')].find((p) => fs.existsSync(p) && fs.statSync(p).isFile());
        if (!hit) throw new Error(`${path.relative(ROOT, f)}: cannot find '${spec}' (did \`npm run build\` run?)`);
        todo.push(hit);
      } else if (!isBuiltin(spec)) {
        packages.add(packageName(spec));
      }
    }
  }
  return { files, packages };
}

/** Finds a package's directory the way node does: node_modules folders walking up from `from`. */
function findPackage(name: string, from: string): string {
  for (let dir = from; ; dir = path.dirname(dir)) {
    const cand = path.join(dir, 'node_modules', name);
    if (fs.existsSync(path.join(cand, 'package.json'))) return cand;
    if (dir === path.dirname(dir)) throw new Error(`package ${name} not found from ${from}`);
  }
}

/** Package directories needed at run time: the roots plus their dependencies, transitively. */
function packageClosure(roots: Iterable<string>): Set<string> {
  const dirs = new Set<string>();
  const todo = [...roots].map((name) => ({ name, from: ROOT }));
  while (todo.length) {
    const { name, from } = todo.pop() as { name: string; from: string };
    let dir: string;
    try {
      dir = findPackage(name, from);
    } catch (e) {
      if (from !== ROOT && optionalDep(from, name)) continue; // not installed on this platform
      throw e;
    }
    if (dirs.has(dir)) continue;
    dirs.add(dir);
    const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
    for (const dep of Object.keys({ ...pkg.dependencies, ...pkg.optionalDependencies })) todo.push({ name: dep, from: dir });
  }
  return dirs;
}

function optionalDep(pkgDir: string, name: string): boolean {
  const pkg = JSON.parse(fs.readFileSync(path.join(pkgDir, 'package.json'), 'utf8'));
  return Boolean(pkg.optionalDependencies?.[name]);
}

// Prebuilt binaries for other operating systems are dead weight in a Linux image.
const OTHER_OS = ['darwin', 'win32', 'freebsd', 'openbsd', 'sunos', 'aix', 'android'].filter((p) => p !== process.platform);

function copyPackage(src: string, dest: string): void {
  fs.cpSync(src, dest, {
    recursive: true,
    dereference: true,
    filter: (p) => {
      const rel = path.relative(src, p).split(path.sep);
      if (rel[0] === 'node_modules') return false; // nested deps are copied as packages of their own
      if (rel[0] === 'build' && rel.length > 1 && OTHER_OS.includes(rel[1])) return false;
      // onnxruntime-node keeps its binaries in bin/napi-v*/<os>/<arch>.
      if (rel[0] === 'bin' && rel.length > 2 && OTHER_OS.includes(rel[2])) return false;
      return true;
    },
  });
}

/**
 * Native addons in a context (e.g. onnxruntime-node's binding needs librt) may link
 * system libraries a minimal base lacks. Copies every library `ldd` lists for them
 * that is neither inside the context nor one node itself links (any base that runs
 * node has those) into `<dir>/sysroot/`, at its host path; a Dockerfile that needs
 * them does `COPY sysroot/ /`. Returns the host paths.
 */
function nativeLibs(dir: string): string[] {
  const mine = new Set(lddLibs(process.execPath));
  const found = new Set<string>();
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.node')) {
        let out: string;
        try {
          out = execFileSync('ldd', [p], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
        } catch {
          continue; // not an ELF for this machine (another arch's prebuilt)
        }
        for (const m of out.matchAll(/=> (\/[^\s)]+)/g)) if (!m[1].startsWith(dir) && !mine.has(m[1])) found.add(m[1]);
      }
    }
  };
  const nm = path.join(dir, 'node_modules');
  if (fs.existsSync(nm)) walk(nm);
  fs.mkdirSync(path.join(dir, 'sysroot'), { recursive: true });
  for (const lib of found) {
    const dest = path.join(dir, 'sysroot', lib);
    fs.mkdirSync(path.dirname(dest), { recursive: true });
    fs.copyFileSync(fs.realpathSync(lib), dest);
  }
  return [...found];
}

/** Writes the build context of one example model into `dir`; returns its size in files. */
export function prepareContext(model: string, dir: string, log: Log = defaultLog): number {
  const modelDir = path.join(ROOT, 'examples', 'models', model);
  const entry = path.join(DIST, 'examples', 'models', model, 'main.js');
  if (!fs.existsSync(entry)) throw new Error(`${path.relative(ROOT, entry)} is missing: run \`npm run build\` first`);
  const { files, packages } = jsClosure(entry);
  for (const f of files) {
    const dest = path.join(dir, path.relative(ROOT, f));
    fs.mkdirSync(path.dirname(dest), { recursive: true });
    fs.copyFileSync(f, dest);
  }
  const pkgDirs = packageClosure(packages);
  for (const p of pkgDirs) copyPackage(p, path.join(dir, path.relative(ROOT, p)));
  const extra = nativeLibs(dir);
  if (extra.length) log(`${model}: libraries its native addons need beyond node's, in sysroot/: ${extra.join(' ')}`);
  fs.copyFileSync(path.join(modelDir, 'Dockerfile'), path.join(dir, 'Dockerfile'));
  fs.writeFileSync(path.join(dir, '.dockerignore'), 'Dockerfile\n.dockerignore\n');
  log(`${model}: context ${dir}: ${files.size} JS files, packages ${[...pkgDirs].map((p) => path.relative(path.join(ROOT, 'node_modules'), p)).join(', ')}`);
  return files.size;
}

export interface BuildOptions {
  baseImage?: string;
  models?: string[];
  log?: Log;
  /** Build even when the image's inputs label matches (default: keep it). */
  force?: boolean;
}

/**
 * Label holding the hash of an image's inputs (its build context and its base's
 * image id): an image whose label matches was built from exactly these inputs, so
 * tests never run a stale image left by another checkout.
 */
export const INPUTS_LABEL = 'tensorbroker.inputs';

/** sha256 of every file under `dir` (path and content, in a fixed order) and `extra`. */
export function inputsHash(dir: string, extra = ''): string {
  const h = createHash('sha256').update(extra);
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) h.update(`\0${path.relative(dir, p)}\0`).update(fs.readFileSync(p));
    }
  };
  walk(dir);
  return h.digest('hex').slice(0, 16);
}

export function imageId(tag: string): string {
  return execFileSync('docker', ['image', 'inspect', '-f', '{{.Id}}', tag], { encoding: 'utf8' }).trim();
}

/** A label of a local image, or undefined when the image or label is absent. */
export function imageLabel(tag: string, label: string): string | undefined {
  try {
    const out = execFileSync('docker', ['image', 'inspect', '-f', `{{index .Config.Labels "${label}"}}`, tag], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    return out && out !== '<no value>' ? out : undefined;
  } catch {
    return undefined;
  }
}

/** Builds tensorbroker/<model>:dev for each example; never pulls. Returns the tags. */
export async function buildExampleImages(opts: BuildOptions = {}): Promise<string[]> {
  const log = opts.log ?? defaultLog;
  const base = opts.baseImage ?? process.env.TB_BASE_IMAGE ?? 'node:24-bookworm-slim';
  if (base === OFFLINE_BASE) await ensureOfflineBaseImage(base, log);
  else if (!imageExists(base)) {
    throw new Error(`base image ${base} is not present locally and this script never pulls: ` +
      `run \`docker pull ${base}\` or set TB_BASE_IMAGE=${OFFLINE_BASE}`);
  }
  return buildEach(opts.models ?? EXAMPLE_MODELS, base, prepareContext, ['node', '-e', "require('zeromq');console.log('zeromq ok')"], log, opts);
}

/**
 * Builds one image per model from a freshly prepared context (legacy builder,
 * never pulls), then runs `smoke` (entrypoint, args) in it without a network
 * to check its native parts load. Returns the tags.
 */
async function buildEach(
  models: string[],
  base: string,
  prepare: (model: string, dir: string, log: Log) => void,
  smoke: string[],
  log: Log,
  opts: { force?: boolean } = {},
): Promise<string[]> {
  const tags: string[] = [];
  for (const model of models) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tb-ctx-${model}-`));
    try {
      prepare(model, dir, log);
      const tag = imageTag(model);
      const inputs = inputsHash(dir, imageId(base));
      if (!opts.force && imageLabel(tag, INPUTS_LABEL) === inputs) {
        log(`${model}: ${tag} is up to date (inputs ${inputs})`);
        tags.push(tag);
        continue;
      }
      log(`${model}: building ${tag} on ${base} (inputs ${inputs})`);
      await run('docker', ['build', '--pull=false', '--build-arg', `BASE_IMAGE=${base}`, '--label', `${INPUTS_LABEL}=${inputs}`, '-t', tag, dir], log,
        { ...process.env, DOCKER_BUILDKIT: '0' });
      await run('docker', ['run', '--rm', '--network', 'none', '--entrypoint', smoke[0], tag, ...smoke.slice(1)], log);
      tags.push(tag);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
  log(`built ${tags.join(', ')}`);
  return tags;
}

// ---- Python models -------------------------------------------------------

export const OFFLINE_PYTHON_BASE = 'tb-python-base:local';
/** Debian's python3 packages the SDK needs (python3-numpy, python3-zmq, python3-protobuf). */
const PY_PACKAGES = ['numpy', 'zmq', 'google'];
const PY_SKIP = new Set(['__pycache__', 'test', 'tests', 'idlelib', 'tkinter', 'turtledemo', 'ensurepip', 'lib2to3', 'pydoc_data', 'config-3.11-x86_64-linux-gnu']);

function pythonInfo(python: string): { exe: string; stdlib: string; dynload: string; site: Record<string, string> } {
  const code = `import json, sys, sysconfig, importlib
site = {}
for name in ${JSON.stringify(PY_PACKAGES)}:
    m = importlib.import_module(name + ('.protobuf' if name == 'google' else ''))
    d = m.__path__[0]
    site[name] = d if name != 'google' else d.rsplit('/', 1)[0]
print(json.dumps({"exe": sys.executable, "stdlib": sysconfig.get_paths()["stdlib"], "dynload": sysconfig.get_config_var("DESTSHARED"), "site": site}))`;
  return JSON.parse(execFileSync(python, ['-c', code], { encoding: 'utf8' }));
}

/** Shared libraries of every .so under `dir` (libraries ldd cannot find on the host are reported, not copied). */
function lddTree(dir: string, log: Log): Set<string> {
  const libs = new Set<string>();
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (/\.so(\.|$)/.test(e.name)) {
        const out = execFileSync('ldd', [p], { encoding: 'utf8' });
        if (/not found/.test(out)) log(`warning: ${p} misses libraries on the host (left out): ${out.split('\n').filter((l) => /not found/.test(l)).join(', ').trim()}`);
        for (const m of out.matchAll(/=> (\/[^\s)]+)|^\s*(\/[^\s)]+)/gm)) libs.add(m[1] ?? m[2]);
      }
    }
  };
  walk(dir);
  return libs;
}

function copyTree(src: string, dest: string): void {
  fs.cpSync(src, dest, {
    recursive: true,
    dereference: true,
    filter: (p) => {
      if (PY_SKIP.has(path.basename(p)) && p !== src) return false;
      try {
        fs.statSync(p); // a dangling symlink (e.g. Debian's sitecustomize.py -> /etc) is left out
      } catch {
        return false;
      }
      return true;
    },
  });
}

/**
 * Builds a registry-free Python base image: the host's python3, its standard library,
 * Debian's numpy / pyzmq / protobuf packages and every shared library `ldd` lists for
 * them, imported as `tag`. Skipped when it exists.
 */
export async function ensureOfflinePythonBase(tag = OFFLINE_PYTHON_BASE, log: Log = defaultLog, python = '/usr/bin/python3'): Promise<string> {
  if (imageExists(tag)) {
    log(`base image ${tag} exists`);
    return tag;
  }
  const info = pythonInfo(python);
  log(`building base image ${tag} from ${info.exe} (${info.stdlib})`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-pybase-'));
  try {
    const rootfs = path.join(dir, 'rootfs');
    for (const d of ['usr/bin', 'etc', 'tmp']) fs.mkdirSync(path.join(rootfs, d), { recursive: true });
    const exe = fs.realpathSync(info.exe);
    fs.copyFileSync(exe, path.join(rootfs, exe));
    fs.chmodSync(path.join(rootfs, exe), 0o755);
    for (const alias of ['/usr/bin/python3', '/usr/bin/python']) if (alias !== exe) fs.symlinkSync(path.basename(exe), path.join(rootfs, alias));
    copyTree(info.stdlib, path.join(rootfs, info.stdlib));
    const libs = new Set(lddLibs(exe));
    for (const l of lddTree(info.dynload, log)) libs.add(l);
    for (const [name, src] of Object.entries(info.site)) {
      copyTree(src, path.join(rootfs, src));
      for (const l of lddTree(src, log)) libs.add(l);
      log(`${name}: ${src}`);
    }
    for (const lib of libs) {
      const dest = path.join(rootfs, lib);
      if (fs.existsSync(dest)) continue;
      fs.mkdirSync(path.dirname(dest), { recursive: true });
      fs.copyFileSync(fs.realpathSync(lib), dest);
    }
    fs.chmodSync(path.join(rootfs, 'tmp'), 0o1777);
    fs.writeFileSync(path.join(rootfs, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
    fs.writeFileSync(path.join(rootfs, 'etc/group'), 'root:x:0:\n');
    const tar = path.join(dir, 'rootfs.tar');
    await run('tar', ['-C', rootfs, '-cf', tar, '.'], log);
    await run('docker', ['import', '--change', 'ENV PATH=/usr/local/bin:/usr/bin:/bin', tar, tag], log);
    await run('docker', ['run', '--rm', '--network', 'none', tag, 'python3', '-c',
      'import sys, numpy, zmq, google.protobuf; print(sys.version.split()[0], "numpy", numpy.__version__, "pyzmq", zmq.__version__, "protobuf", google.protobuf.__version__)'], log);
    return tag;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Build context of a Python example: model.py, the SDK's two packages, Dockerfile.offline as the Dockerfile. */
export function preparePythonContext(model: string, dir: string, log: Log = defaultLog): void {
  const modelDir = path.join(ROOT, 'examples', 'models', model);
  fs.copyFileSync(path.join(modelDir, 'model.py'), path.join(dir, 'model.py'));
  for (const pkg of ['tensorbroker_client', 'tensorbroker_model']) {
    fs.cpSync(path.join(ROOT, 'sdk', 'python', pkg), path.join(dir, 'sdk', pkg), { recursive: true, filter: (p) => path.basename(p) !== '__pycache__' });
  }
  fs.copyFileSync(path.join(modelDir, 'Dockerfile.offline'), path.join(dir, 'Dockerfile'));
  fs.writeFileSync(path.join(dir, '.dockerignore'), 'Dockerfile\n.dockerignore\n');
  log(`${model}: context ${dir}: model.py + sdk/tensorbroker_client + sdk/tensorbroker_model`);
}

/** Builds tensorbroker/<model>:dev for each Python example on the offline Python base; never pulls. */
export async function buildPythonImages(opts: BuildOptions = {}): Promise<string[]> {
  const log = opts.log ?? defaultLog;
  const base = opts.baseImage ?? process.env.TB_PYTHON_BASE_IMAGE ?? OFFLINE_PYTHON_BASE;
  if (base === OFFLINE_PYTHON_BASE) await ensureOfflinePythonBase(base, log);
  else if (!imageExists(base)) throw new Error(`base image ${base} is not present locally and this script never pulls`);
  return buildEach(opts.models ?? PYTHON_MODELS, base, preparePythonContext,
    ['python3', '-c', 'import tensorbroker_model, zmq; print("tensorbroker_model ok")'], log, opts);
}

/** `npm run images [-- MODEL...]`: every example, or the named ones. */
async function main(args: string[]): Promise<void> {
  const unknown = args.filter((m) => !EXAMPLE_MODELS.includes(m) && !PYTHON_MODELS.includes(m));
  if (unknown.length) throw new Error(`unknown example model(s) ${unknown.join(', ')}: ${[...EXAMPLE_MODELS, ...PYTHON_MODELS].join(', ')}`);
  const node = args.length ? EXAMPLE_MODELS.filter((m) => args.includes(m)) : EXAMPLE_MODELS;
  const python = args.length ? PYTHON_MODELS.filter((m) => args.includes(m)) : PYTHON_MODELS;
  const force = process.env.TB_REBUILD_IMAGES === '1';
  if (node.length) await buildExampleImages({ models: node, force });
  if (python.length) await buildPythonImages({ models: python, force });
}

if (require.main === module) {
  main(process.argv.slice(2)).catch((e: Error) => {
    defaultLog(`failed: ${e.message}`);
    process.exit(1);
  });
}
