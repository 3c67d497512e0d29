/**
 * One copy's runtime side, free of the task manager's bookkeeping: what to
 * launch, how to stop it (drain, then stop), and how to name its exit.
 */
import type { Logger } from 'pino';
import type { ModelSpec } from '../core/model-spec';
import type { CopyFailKind } from './copy-connection';
import type { CopyRecord } from './model-state';
import { lastLine, type CopyLaunch, type ExitInfo, type LinkInfo, type Runtime } from './runtime';

/** The runtime's start request for a new copy of `spec`. */
export function copyLaunch(spec: ModelSpec, copyId: string, gpus: string[] | undefined, fingerprint: string, owner: string, link: LinkInfo, cwd: string | undefined): CopyLaunch {
  return {
    copyId, model: spec.name, version: spec.version, image: spec.image, command: spec.command, cwd: spec.cwd ?? cwd,
    env: spec.env, envSource: spec.source, owner, gpus, batchSize: spec.batch_size, link,
    pullPolicy: spec.pull_policy, pullTimeoutMs: spec.pull_timeout_ms, fingerprint,
    limits: { memoryMb: spec.memory_mb, cpus: spec.cpus, readOnlyRoot: spec.read_only_root, tmpfsMb: spec.tmpfs_mb, pidsLimit: spec.pids_limit },
  };
}

/**
 * SHUTDOWN (the copy finishes its in-flight batches), then the runtime stops it
 * within what is left of `graceMs`. Resolves when the copy is gone.
 */
export async function stopCopy(rec: CopyRecord, graceMs: number, reason: string, d: { runtime: Runtime; persist: (rec: CopyRecord) => void; log: Logger }): Promise<void> {
  if (!rec.stopping) {
    rec.stopping = true;
    rec.stopReason = reason;
    clearTimeout(rec.startupTimer);
    d.persist(rec);
    const start = Date.now();
    if (rec.conn.connected && rec.conn.state !== 'failed' && rec.conn.state !== 'stopped') {
      rec.conn.shutdown(graceMs, reason);
      let t: NodeJS.Timeout | undefined;
      await Promise.race([rec.conn.drained(), rec.done, new Promise<void>((r) => (t = setTimeout(r, graceMs)))]);
      clearTimeout(t);
    }
    if (rec.handle) {
      const left = Math.max(0, graceMs - (Date.now() - start));
      await d.runtime.stop(rec.handle, left).catch((err) => d.log.error({ err, copy: rec.id }, 'stop failed'));
    }
    // No handle yet: launch() kills it once start() returns (or start fails).
  }
  await rec.done;
}

/** The one-line message of a copy's exit (why it failed, how it exited, its last log line). */
export function exitMessage(rec: CopyRecord, info: ExitInfo, failReason: string | undefined): string {
  const last = lastLine(info.lastLines);
  const what = info.oomKilled ? `${info.reason}, OOM killed` : info.reason;
  let message = `model copy ${rec.id} of ${rec.model} ${failReason ? `${failReason}; ` : ''}${what}`;
  if (last) message += `: ${last}`;
  return message;
}

export type CopyFailureKind = 'crash' | 'oom' | 'hung' | 'heartbeat' | 'startup' | 'start';

/** The 'copy-failure' kind of an unexpected exit: from what failed it, never from the message. */
export function failureKind(info: ExitInfo, failKind: CopyFailKind | undefined, startFailed: boolean): CopyFailureKind {
  if (info.oomKilled) return 'oom';
  if (failKind) return failKind;
  return startFailed ? 'start' : 'crash';
}
