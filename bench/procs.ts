/**
 * Processes the benchmark owns: a throwaway redis-server and the broker (a
 * child process running the CLI). Each handle's stop() is idempotent and never
 * throws, so cleanup can run from finally blocks and signal handlers alike.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as net from 'node:net';

export const LOOPBACK = '127.0.0.1';

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A port the OS says is free on the loopback address right now. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, LOOPBACK, () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

export interface ChildHandle {
  child: ChildProcess;
  /** Last lines of stdout/stderr, for error messages. */
  output(): string;
  exited(): boolean;
  stop(graceMs?: number): Promise<void>;
}

/** Spawns a child whose output is kept (tail only) and which stop() ends with SIGTERM, then SIGKILL. */
export function spawnChild(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env, cwd?: string): ChildHandle {
  const child = spawn(cmd, args, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const keep = (d: Buffer) => {
    out = (out + d.toString()).slice(-8000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  let exited = false;
  const exitP = new Promise<void>((resolve) => {
    child.once('exit', () => {
      exited = true;
      resolve();
    });
    child.once('error', (e) => {
      out += `\n${String(e)}`;
      exited = true;
      resolve();
    });
  });
  return {
    child,
    output: () => out.trim(),
    exited: () => exited,
    async stop(graceMs = 5000) {
      if (exited) return;
      child.kill('SIGTERM');
      const t = setTimeout(() => {
        if (!exited) child.kill('SIGKILL');
      }, graceMs);
      await exitP;
      clearTimeout(t);
    },
  };
}

/** One PING over a raw socket; true on +PONG. */
function redisPing(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect({ port, host: LOOPBACK });
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

export interface RedisProc {
  url: string;
  port: number;
  stop(): Promise<void>;
}

/** redis-server on a free loopback port, no persistence, its working dir in `dir`. */
export async function startRedis(dir: string, deadlineMs = 10_000): Promise<RedisProc> {
  const bin = process.env.TB_REDIS_SERVER ?? 'redis-server';
  let lastErr = '';
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const h = spawnChild(bin, ['--port', String(port), '--bind', LOOPBACK, '--save', '', '--appendonly', 'no', '--dir', dir]);
    const until = Date.now() + deadlineMs;
    while (Date.now() < until && !h.exited()) {
      if (await redisPing(port)) return { url: `redis://${LOOPBACK}:${port}`, port, stop: () => h.stop(3000) };
      await sleep(20);
    }
    lastErr = h.output().slice(-500);
    await h.stop(1000);
  }
  throw new Error(`redis-server did not start: ${lastErr}`);
}

/** Polls until `check` is true; throws after timeoutMs or as soon as `alive()` turns false. */
export async function waitUntil(check: () => Promise<boolean>, what: string, timeoutMs: number, alive: () => boolean = () => true): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (!alive()) throw new Error(`gave up waiting for ${what}: the process exited`);
    if (await check().catch(() => false)) return;
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(50);
  }
}

/** CPU time (user + system, ms) a process has used so far, from /proc; undefined off Linux. */
export function cpuMs(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    const ticks = Number(fields[11]) + Number(fields[12]);
    return (ticks * 1000) / 100; // USER_HZ is 100 on Linux
  } catch {
    return undefined;
  }
}

export type Cleanups = (() => Promise<void>)[];

/** Runs the cleanups newest first; each one is awaited and its failure only logged. */
async function runCleanups(cleanups: Cleanups, log: (m: string) => void): Promise<void> {
  while (cleanups.length > 0) {
    const c = cleanups.pop()!;
    await c().catch((e: Error) => log(`cleanup: ${e.message}`));
  }
}

/**
 * Entry point of a benchmark: runs `main`, and on its end, its failure or
 * SIGINT/SIGTERM runs the cleanups it registered exactly once, then exits
 * (0 ok, 1 failed, 130 signal).
 */
export function runMain(main: (cleanups: Cleanups) => Promise<void>, log: (m: string) => void): void {
  const cleanups: Cleanups = [];
  let exiting = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (exiting) return;
    exiting = true;
    log(`${sig}: cleaning up`);
    void runCleanups(cleanups, log).then(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  main(cleanups)
    .then(
      () => 0,
      (e: Error) => {
        log(`failed: ${e.stack ?? e.message}`);
        return 1;
      },
    )
    .then(async (code) => {
      if (exiting) return;
      exiting = true;
      log('cleaning up');
      await runCleanups(cleanups, log);
      process.exit(code);
    });
}
