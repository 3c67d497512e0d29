/**
 * A Docker registry (Debian's docker-registry package) on 127.0.0.1 only, fed
 * from local images with docker tag + push: pulls in tests never leave the machine.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { freePort } from '../../bench/procs';
import * as os from 'node:os';
import * as path from 'node:path';

export const REGISTRY_BIN = process.env.TB_DOCKER_REGISTRY ?? '/usr/bin/docker-registry';
export { freePort };

/** Both Debian packages are needed: docker-registry and apache2-utils (htpasswd). The pull tests skip without them. */
export const hasRegistry = fs.existsSync(REGISTRY_BIN) && ['/usr/bin/htpasswd', '/usr/sbin/htpasswd'].some((f) => fs.existsSync(f));


export interface LocalRegistry {
  host: string;
  stop(): Promise<void>;
}

/** Starts a registry; with `user`, htpasswd (bcrypt, via `htpasswd -B`) protects it. */
export async function startLocalRegistry(user?: { name: string; password: string }): Promise<LocalRegistry> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-registry-'));
  const port = await freePort();
  let auth = '';
  if (user) {
    execFileSync('htpasswd', ['-Bbc', path.join(dir, 'htpasswd'), user.name, user.password], { stdio: 'ignore' });
    auth = `auth:\n  htpasswd:\n    realm: tb-test\n    path: ${path.join(dir, 'htpasswd')}\n`;
  }
  fs.writeFileSync(
    path.join(dir, 'config.yml'),
    `version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: ${path.join(dir, 'data')}\nhttp:\n  addr: 127.0.0.1:${port}\n${auth}`,
  );
  const child: ChildProcess = spawn(REGISTRY_BIN, ['serve', path.join(dir, 'config.yml')], { stdio: 'ignore' });
  const host = `127.0.0.1:${port}`;
  const until = Date.now() + 10_000;
  for (;;) {
    const ok = await fetch(`http://${host}/v2/`).then((r) => r.status === 200 || r.status === 401, () => false);
    if (ok) break;
    if (Date.now() > until || child.exitCode !== null) throw new Error(`docker-registry did not start on ${host}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    host,
    async stop() {
      child.kill('SIGTERM');
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** docker tag + push a local image into the registry, then drop the registry tag locally. */
export function pushLocal(image: string, target: string, login?: { host: string; name: string; password: string }): void {
  execFileSync('docker', ['tag', image, target]);
  if (login) execFileSync('docker', ['login', '-u', login.name, '--password-stdin', login.host], { input: login.password, stdio: ['pipe', 'ignore', 'ignore'] });
  try {
    execFileSync('docker', ['push', target], { stdio: 'ignore' });
  } finally {
    if (login) execFileSync('docker', ['logout', login.host], { stdio: 'ignore' });
    execFileSync('docker', ['rmi', target], { stdio: 'ignore' });
  }
}
