#!/usr/bin/env node
// The npm registry reachable from our build machines serves only linux-x64
// builds of platform-specific optional packages, so `npm install` leaves the
// other platforms' entries out of package-lock.json and `npm ci` then refuses
// the lock ("Missing: ... from lock file"). This adds those entries with their
// os/cpu/libc, so npm ci skips them here and fetches them by name elsewhere.
// Usage: node scripts/lock-add-foreign-optionals.js  (after npm install)
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');

const lockPath = 'package-lock.json';
const lock = JSON.parse(fs.readFileSync(lockPath, 'utf8'));
const pkgs = lock.packages;

const OS = ['darwin', 'linux', 'win32', 'android', 'freebsd', 'openharmony'];
const CPU = { arm64: 'arm64', aarch64: 'arm64', x64: 'x64', ia32: 'ia32', arm: 'arm', armv7: 'arm', loong64: 'loong64', ppc64: 'ppc64', riscv64: 'riscv64', s390x: 's390x' };

function platformOf(name) {
  const parts = name.split('/').pop().split('-');
  const os = parts.find((p) => OS.includes(p));
  const cpu = parts.map((p) => CPU[p]).find(Boolean);
  const libc = parts.some((p) => p.startsWith('musl')) ? 'musl' : parts.some((p) => p === 'gnu' || p.startsWith('gnueabi')) ? 'glibc' : undefined;
  return { os, cpu, libc };
}

let added = 0;
for (const [where, entry] of Object.entries(pkgs)) {
  for (const [dep, range] of Object.entries(entry.optionalDependencies || {})) {
    const key = `node_modules/${dep}`;
    if (pkgs[key]) continue;
    const { os, cpu, libc } = platformOf(dep);
    if (!os || !cpu) throw new Error(`cannot tell the platform of ${dep} (needed by ${where || 'root'})`);
    pkgs[key] = { version: range.replace(/^[\^~=]/, ''), ...(entry.dev ? { dev: true } : {}), optional: true, os: [os], cpu: [cpu], ...(libc ? { libc: [libc] } : {}) };
    added++;
  }
}
lock.packages = Object.fromEntries(Object.entries(pkgs).sort(([a], [b]) => (a === '' ? -1 : b === '' ? 1 : a < b ? -1 : 1)));
fs.writeFileSync(lockPath, JSON.stringify(lock, null, 2) + '\n');
console.log(`added ${added} foreign-platform optional entries`);
try {
  execFileSync('npm', ['ci', '--dry-run', '--ignore-scripts'], { stdio: 'pipe' });
  console.log('npm ci accepts the lock');
} catch (e) {
  console.error(String(e.stderr).split('\n').filter((l) => l.startsWith('npm error')).slice(0, 10).join('\n'));
  process.exit(1);
}
