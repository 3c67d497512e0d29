/** Runs `tensorbroker serve` (dist/) as a child process, for tests that kill -9 the broker. */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { ROOT, waitFor } from './broker';

export interface CliBroker {
  child: ChildProcess;
  lines: Record<string, unknown>[];
  url: string;
  metricsUrl: string;
}

export interface CliBrokerOptions {
  /** Working directory of the broker process (default: this process's). */
  cwd?: string;
  /** How long to wait for the 'tensorbroker serving' log line. */
  servingMs?: number;
}

export async function startCliBroker(args: string[], env: Record<string, string> = {}, opts: CliBrokerOptions = {}): Promise<CliBroker> {
  const child = spawn(process.execPath, [path.join(ROOT, 'dist/app/cli.js'), 'serve', '--http-port', '0', '--metrics-port', '0', '--grpc-port', '0', '--zmq-port', '0', ...args], {
    cwd: opts.cwd,
    env: { ...process.env, TB_LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: Record<string, unknown>[] = [];
  let buf = '';
  child.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      try {
        lines.push(JSON.parse(line));
      } catch {
        lines.push({ raw: line });
      }
    }
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  await waitFor(() => {
    if (child.exitCode !== null) throw new Error(`broker exited ${child.exitCode}: ${stderr}`);
    return lines.some((l) => l.msg === 'tensorbroker serving');
  }, opts.servingMs ?? 30_000, 'serving log line');
  const serving = lines.find((l) => l.msg === 'tensorbroker serving')!;
  return { child, lines, url: `http://127.0.0.1:${serving.http}`, metricsUrl: `http://127.0.0.1:${serving.metrics}/metrics` };
}

export function exited(child: ChildProcess): Promise<void> {
  return child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise((r) => child.once('exit', () => r()));
}
