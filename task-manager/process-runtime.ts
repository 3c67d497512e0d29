/**
 * Runs model copies as child processes (no shell). For development, tests and
 * hosts without Docker.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { Logger } from 'pino';
import { BrokerError } from '../core/errors';
import { LineRing, linkEnv, passedEnv, refusedApiEnv, type CopyHandle, type CopyLaunch, type ExitInfo, type Runtime } from './runtime';

export interface ProcessRuntimeOptions {
  /** Working directory of copies whose launch has no cwd (default process.cwd()). */
  cwd?: string;
  /** Log lines kept per copy (default 50). */
  logLines?: number;
  /** Names of the broker's env passed to copies beyond PASSED_ENV (PATH, HOME, LANG, TZ, ...). */
  passEnv?: string[];
  /** The broker's environment (default process.env); only PASSED_ENV and passEnv names reach copies. */
  env?: NodeJS.ProcessEnv;
  logger?: Logger;
}

interface Entry {
  handle: CopyHandle;
  child: ChildProcess;
  ring: LineRing;
  exited: Promise<ExitInfo>;
  done: boolean;
}

export class ProcessRuntime implements Runtime {
  readonly kind = 'process' as const;
  private readonly entries = new Map<string, Entry>();
  private readonly cwd: string;
  private readonly logLines: number;

  constructor(private readonly opts: ProcessRuntimeOptions = {}) {
    this.cwd = opts.cwd ?? process.cwd();
    this.logLines = opts.logLines ?? 50;
  }

  async start(launch: CopyLaunch): Promise<CopyHandle> {
    const argv = launch.command;
    if (!argv || argv.length === 0) {
      throw new BrokerError('INVALID_ARGUMENT', `model ${launch.model} has no command (the process runtime needs one)`);
    }
    const refused = refusedApiEnv(launch.env, launch.envSource);
    if (refused.length > 0) {
      // No isolation here: such a name from the admin API would run code on the host as the broker's user.
      throw new BrokerError(
        'INVALID_ARGUMENT',
        `model ${launch.model}: env ${refused.join(', ')} can load code and comes from the admin API; the process runtime takes such names only from the models file`,
      );
    }
    const env = { ...passedEnv(this.opts.env ?? process.env, this.opts.passEnv), ...launch.env, ...linkEnv(launch, launch.link.endpoint) };
    const cwd = launch.cwd ?? this.cwd;
    const child = spawn(argv[0], argv.slice(1), { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    const ring = new LineRing(this.logLines);
    const log = this.opts.logger?.child({ model: launch.model, copy: launch.copyId });
    const onData = (stream: string) => (chunk: Buffer) => {
      for (const line of ring.push(chunk)) log?.debug({ stream }, line);
    };
    child.stdout?.on('data', onData('stdout'));
    child.stderr?.on('data', onData('stderr'));

    // Either 'spawn' or 'error' comes first.
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', () => resolve());
      child.once('error', (err) =>
        reject(new BrokerError('UNAVAILABLE', `cannot start ${argv[0]} for model ${launch.model} (cwd ${cwd}): ${err.message}`)),
      );
    });

    const handle: CopyHandle = {
      kind: 'process',
      copyId: launch.copyId,
      model: launch.model,
      owner: launch.owner,
      runtimeId: String(child.pid),
      name: argv[0],
      pid: child.pid,
    };
    const entry: Entry = { handle, child, ring, done: false, exited: undefined as unknown as Promise<ExitInfo> };
    entry.exited = new Promise<ExitInfo>((resolve) => {
      // 'close' fires after the process exited and its stdio streams ended: the ring is complete.
      child.once('close', (code, signal) => {
        ring.end();
        entry.done = true;
        const reason =
          code !== null ? `exited with code ${code}` : signal ? `killed by ${signal}` : 'ended';
        resolve({ code, signal, reason, lastLines: ring.tail() });
        this.entries.delete(launch.copyId);
      });
    });
    this.entries.set(launch.copyId, entry);
    return handle;
  }

  async stop(h: CopyHandle, graceMs: number): Promise<void> {
    const e = this.entries.get(h.copyId);
    if (!e || e.done) return;
    e.child.kill('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    const killed = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        if (!e.done) e.child.kill('SIGKILL');
        resolve();
      }, Math.max(0, graceMs));
    });
    await Promise.race([e.exited, killed]);
    clearTimeout(timer);
    await e.exited;
  }

  async kill(h: CopyHandle): Promise<void> {
    const e = this.entries.get(h.copyId);
    if (!e || e.done) return;
    e.child.kill('SIGKILL');
    await e.exited;
  }

  exited(h: CopyHandle): Promise<ExitInfo> {
    const e = this.entries.get(h.copyId);
    if (!e) return Promise.resolve({ code: null, signal: null, reason: 'unknown copy (already ended)', lastLines: [] });
    return e.exited;
  }

  async logs(h: CopyHandle, tail: number): Promise<string[]> {
    return this.entries.get(h.copyId)?.ring.tail(tail) ?? [];
  }

  async list(owner: string): Promise<CopyHandle[]> {
    return [...this.entries.values()].filter((e) => e.handle.owner === owner && !e.done).map((e) => e.handle);
  }

  /** Children of an earlier broker process cannot be found again: nothing to do. */
  async removeStale(_owner: string): Promise<number> {
    return 0;
  }

  /** Kills every copy still running. */
  async close(): Promise<void> {
    await Promise.all([...this.entries.values()].map((e) => this.kill(e.handle)));
  }
}
