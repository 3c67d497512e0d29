/**
 * Builds the example model images (tensorbroker/<model>:dev) from the compiled
 * tree, without a registry. Run after `npm run build`: `npm run images`.
 * Env: TB_BASE_IMAGE (default node:20-bookworm-slim; tb-node-base:local is built
 * here from the host's node when asked for and missing).
 */
import { execFileSync, spawn } from 'node:child_process';
import { builtinModules } from 'node:module';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export const EXAMPLE_MODELS = ['simple', 'sleepy', 'image-info', 'motion'];
export const OFFLINE_BASE = 'tb-node-base:local';
export const imageTag = (model: string) => `tensorbroker/${model}:dev`;

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

/** The zeromq addon this node actually loads (the one the image's node will pick too). */
function zeromqAddon(): string {
  const code = "require('zeromq');process.stdout.write(Object.keys(require.cache).find(k=>k.endsWith('.node'))||'')";
  const file = execFileSync(process.execPath, ['-e', code], { cwd: ROOT, encoding: 'utf8' }).trim();
  if (!file) throw new Error('could not find the zeromq addon');
  return file;
}

/**
 * Builds a registry-free base image: the host's node binary plus the libraries
 * it and zeromq's addon link to, imported as `tag`. Skipped when it exists.
 */
export async function ensureOfflineBaseImage(tag = OFFLINE_BASE, log: Log = defaultLog): Promise<string> {
  if (imageExists(tag)) {
    log(`base image ${tag} exists`);
    return tag;
  }
  log(`building base image ${tag} from ${process.execPath}`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-base-'));
  try {
    const rootfs = path.join(dir, 'rootfs');
    for (const d of ['usr/local/bin', 'etc', 'tmp']) fs.mkdirSync(path.join(rootfs, d), { recursive: true });
    fs.copyFileSync(process.execPath, path.join(rootfs, 'usr/local/bin/node'));
    fs.chmodSync(path.join(rootfs, 'usr/local/bin/node'), 0o755);
    const addon = zeromqAddon();
    const libs = new Set([...lddLibs(process.execPath), ...lddLibs(addon)]);
    log(`libraries for node + ${path.relative(ROOT, addon)}: ${[...libs].join(' ')}`);
    for (const lib of libs) {
      const dest = path.join(rootfs, lib);
      fs.mkdirSync(path.dirname(dest), { recursive: true });
      fs.copyFileSync(fs.realpathSync(lib), dest); // like cp -L: /lib and /lib64 are symlinks
    }
    fs.chmodSync(path.join(rootfs, 'tmp'), 0o1777);
    fs.writeFileSync(path.join(rootfs, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
    fs.writeFileSync(path.join(rootfs, 'etc/group'), 'root:x:0:\n');
    const tar = path.join(dir, 'rootfs.tar');
    await run('tar', ['-C', rootfs, '-cf', tar, '.'], log);
    await run('docker', ['import', '--change', 'ENV PATH=/usr/local/bin:/usr/bin:/bin', tar, tag], log);
    await run('docker', ['run', '--rm', '--network', 'none', tag, 'node', '-e', 'console.log("node", process.version)'], log);
    return tag;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
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
      return true;
    },
  });
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
  fs.copyFileSync(path.join(modelDir, 'Dockerfile'), path.join(dir, 'Dockerfile'));
  fs.writeFileSync(path.join(dir, '.dockerignore'), 'Dockerfile\n.dockerignore\n');
  log(`${model}: context ${dir}: ${files.size} JS files, packages ${[...pkgDirs].map((p) => path.relative(path.join(ROOT, 'node_modules'), p)).join(', ')}`);
  return files.size;
}

export interface BuildOptions {
  baseImage?: string;
  models?: string[];
  log?: Log;
}

/** Builds tensorbroker/<model>:dev for each example; never pulls. Returns the tags. */
export async function buildExampleImages(opts: BuildOptions = {}): Promise<string[]> {
  const log = opts.log ?? defaultLog;
  const base = opts.baseImage ?? process.env.TB_BASE_IMAGE ?? 'node:20-bookworm-slim';
  if (base === OFFLINE_BASE) await ensureOfflineBaseImage(base, log);
  else if (!imageExists(base)) {
    throw new Error(`base image ${base} is not present locally and this script never pulls: ` +
      `run \`docker pull ${base}\` or set TB_BASE_IMAGE=${OFFLINE_BASE}`);
  }
  const tags: string[] = [];
  for (const model of opts.models ?? EXAMPLE_MODELS) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tb-ctx-${model}-`));
    try {
      prepareContext(model, dir, log);
      const tag = imageTag(model);
      log(`${model}: building ${tag} on ${base}`);
      await run('docker', ['build', '--pull=false', '--build-arg', `BASE_IMAGE=${base}`, '-t', tag, dir], log,
        { ...process.env, DOCKER_BUILDKIT: '0' });
      // Smoke test: the native zeromq addon must load inside the image.
      await run('docker', ['run', '--rm', '--network', 'none', '--entrypoint', 'node', tag,
        '-e', "require('zeromq');console.log('zeromq ok')"], log);
      tags.push(tag);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
  log(`built ${tags.join(', ')}`);
  return tags;
}

if (require.main === module) {
  buildExampleImages().catch((e: Error) => {
    defaultLog(`failed: ${e.message}`);
    process.exit(1);
  });
}
