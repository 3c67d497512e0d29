/**
 * The SDKs as a model team gets them: the npm tarball (`npm pack`) and the Python
 * wheel, built from this checkout into a temp folder, and installed into a project
 * outside the repository. Offline: npm cannot fetch the SDK's dependencies here, so
 * they are linked from this repository's node_modules before `npm install`, which
 * then finds them satisfied and only unpacks the tarball.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { ROOT } from './broker';

const run = promisify(execFile);
export const SYSTEM_PYTHON = '/usr/bin/python3';

/** `npm pack` of sdk/node (its prepack builds it); returns the .tgz path. */
export async function packNodeSdk(outDir: string): Promise<string> {
  const { stdout } = await run('npm', ['pack', '-w', '@tensorbroker/sdk', '--pack-destination', outDir, '--silent'], { cwd: ROOT, maxBuffer: 16 << 20 });
  const file = stdout.trim().split('\n').pop()!;
  return path.join(outDir, file);
}

/** A wheel of sdk/python, built from a copy so the checkout stays clean (pip writes build/ and *.egg-info). */
export async function buildPythonWheel(outDir: string): Promise<string> {
  const src = path.join(outDir, 'python-src');
  fs.cpSync(path.join(ROOT, 'sdk', 'python'), src, { recursive: true, filter: (p) => !['__pycache__', 'build'].includes(path.basename(p)) && !p.endsWith('.egg-info') });
  await run(SYSTEM_PYTHON, ['-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '--no-index', '-q', src, '-w', outDir], { maxBuffer: 16 << 20 });
  return path.join(outDir, fs.readdirSync(outDir).find((f) => f.endsWith('.whl'))!);
}

/** Package names the SDK needs at run time, transitively, as installed at the top of the repo's node_modules. */
function dependencyClosure(): string[] {
  const seen = new Set<string>();
  const todo = Object.keys((JSON.parse(fs.readFileSync(path.join(ROOT, 'sdk', 'node', 'package.json'), 'utf8')) as { dependencies: Record<string, string> }).dependencies);
  while (todo.length) {
    const name = todo.pop()!;
    const pj = path.join(ROOT, 'node_modules', name, 'package.json');
    if (seen.has(name) || !fs.existsSync(pj)) continue; // a nested copy travels inside its parent
    seen.add(name);
    const pkg = JSON.parse(fs.readFileSync(pj, 'utf8')) as { dependencies?: Record<string, string>; optionalDependencies?: Record<string, string> };
    todo.push(...Object.keys({ ...pkg.dependencies, ...pkg.optionalDependencies }));
  }
  return [...seen];
}

/**
 * `npm install` in a project whose package.json names the SDK tarball. The dependencies
 * are linked from the repo first (npm then finds them satisfied); npm prunes the ones it
 * sees no direct need for, so the rest of the closure is linked afterwards, leaving the
 * flat node_modules a registry install would give (`tensorbroker build` copies it).
 */
export async function npmInstallOffline(project: string): Promise<void> {
  const link = (name: string) => {
    const at = path.join(project, 'node_modules', name);
    if (fs.existsSync(at)) return;
    fs.mkdirSync(path.dirname(at), { recursive: true });
    fs.symlinkSync(path.join(ROOT, 'node_modules', name), at);
  };
  const closure = dependencyClosure();
  closure.forEach(link);
  // --ignore-scripts: the linked packages are the repo's own, already built.
  await run('npm', ['install', '--offline', '--ignore-scripts', '--no-audit', '--no-fund'], { cwd: project, maxBuffer: 16 << 20 });
  closure.forEach(link);
}

/** A venv that sees Debian's numpy/pyzmq/protobuf, with the wheel installed from the file alone. */
export async function venvWithWheel(project: string, wheel: string): Promise<string> {
  await run(SYSTEM_PYTHON, ['-m', 'venv', '--system-site-packages', path.join(project, '.venv')]);
  const python = path.join(project, '.venv', 'bin', 'python');
  await run(python, ['-m', 'pip', 'install', '-q', '--no-index', '--no-deps', wheel], { maxBuffer: 16 << 20 });
  return python;
}

/** Whether Debian's python3 has what the Python SDK needs (numpy, pyzmq, protobuf) and can make venvs with pip. */
export async function pythonMissing(): Promise<string | undefined> {
  try {
    await run(SYSTEM_PYTHON, ['-c', 'import numpy, zmq, google.protobuf, ensurepip, setuptools, wheel']);
    return undefined;
  } catch (e) {
    return `${SYSTEM_PYTHON} lacks numpy/pyzmq/protobuf/ensurepip/setuptools/wheel: ${(e as Error).message.split('\n').slice(-2).join(' ')}`;
  }
}
