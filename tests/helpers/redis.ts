/**
 * Starts a throwaway redis-server for a test suite: free port, temp dir, no
 * persistence, ready when it answers PING. The benchmark's starter does the
 * work; this adds the temp dir and removes it on stop.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import * as os from 'node:os';
import * as net from 'node:net';
import * as path from 'node:path';
import { freePort, spawnChild, startRedis as startRedisIn, type RedisProc } from '../../bench/procs';

export type RedisHandle = RedisProc;

export async function startRedis(deadlineMs = 10_000): Promise<RedisHandle> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tb-redis-'));
  try {
    const redis = await startRedisIn(dir, deadlineMs);
    return { ...redis, stop: () => redis.stop().finally(() => rm(dir, { recursive: true, force: true })) };
  } catch (e) {
    await rm(dir, { recursive: true, force: true });
    throw e;
  }
}

export interface RedisServer extends RedisHandle {
  dir: string;
}

/** One PING over a raw socket; true on any answer (+PONG, or -NOAUTH when a password is required). */
function answers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect({ port, host: '127.0.0.1' });
    const done = (ok: boolean) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(500, () => done(false));
    sock.once('error', () => done(false));
    sock.once('connect', () => sock.write('PING\r\n'));
    sock.once('data', (d) => done(/^(\+PONG|-NOAUTH)/.test(d.toString())));
  });
}

/**
 * redis-server with chosen arguments, on `port` (default a free one) and in
 * `dir` (default a new temp dir, kept on stop so a restart with AOF finds its data).
 * For fault tests: stop it, then start another on the same port and dir.
 */
export async function startRedisServer(opts: { port?: number; dir?: string; args?: string[] } = {}): Promise<RedisServer> {
  const dir = opts.dir ?? (await mkdtemp(path.join(os.tmpdir(), 'tb-redis-')));
  const port = opts.port ?? (await freePort());
  const h = spawnChild(process.env.TB_REDIS_SERVER ?? 'redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, ...(opts.args ?? ['--save', '', '--appendonly', 'no'])]);
  const until = Date.now() + 10_000;
  while (!(await answers(port))) {
    if (h.exited() || Date.now() > until) {
      await h.stop(1000);
      throw new Error(`redis-server did not start on ${port}: ${h.output().slice(-500)}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return { url: `redis://127.0.0.1:${port}`, port, dir, stop: () => h.stop(3000) };
}
