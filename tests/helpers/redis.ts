/**
 * Starts a throwaway redis-server for a test suite: free port, temp dir, no
 * persistence. Ready when it answers PING (polled against a deadline).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

export interface RedisHandle {
  url: string;
  port: number;
  stop(): Promise<void>;
}

const REDIS_BIN = process.env.TB_REDIS_SERVER ?? 'redis-server';

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/** One PING over a raw socket; resolves true on +PONG. */
function ping(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect({ port, host: '127.0.0.1' });
    let buf = '';
    const done = (ok: boolean) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(500, () => done(false));
    sock.once('error', () => done(false));
    sock.once('connect', () => sock.write('PING\r\n'));
    sock.on('data', (d) => {
      buf += d.toString();
      if (buf.includes('\r\n')) done(buf.startsWith('+PONG'));
    });
  });
}

async function startOnce(deadlineMs: number): Promise<RedisHandle> {
  const port = await freePort();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tb-redis-'));
  const child: ChildProcess = spawn(
    REDIS_BIN,
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  child.stdout?.on('data', (d) => (output += d.toString()));
  child.stderr?.on('data', (d) => (output += d.toString()));
  let exited = false;
  const exitedP = new Promise<void>((resolve) =>
    child.once('exit', () => {
      exited = true;
      resolve();
    }),
  );
  child.once('error', (err) => {
    output += String(err);
  });

  const stop = async () => {
    if (!exited) {
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exitedP;
      clearTimeout(t);
    }
    await rm(dir, { recursive: true, force: true });
  };

  const deadline = Date.now() + deadlineMs;
  while (Date.now() < deadline) {
    if (exited) {
      await stop();
      throw new Error(`redis-server exited before answering on port ${port}: ${output.trim().slice(-500)}`);
    }
    if (await ping(port)) return { url: `redis://127.0.0.1:${port}`, port, stop };
    await new Promise((r) => setTimeout(r, 20));
  }
  await stop();
  throw new Error(`redis-server on port ${port} did not answer PING within ${deadlineMs} ms: ${output.trim().slice(-500)}`);
}

/** Start redis-server; retries on another port if the chosen one was taken meanwhile. */
export async function startRedis(deadlineMs = 10_000): Promise<RedisHandle> {
  let lastErr: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startOnce(deadlineMs);
    } catch (err) {
      lastErr = err;
    }
  }
  throw lastErr;
}
