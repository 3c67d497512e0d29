/** The bookkeeping of one model's controller and of each copy, and views of it. */
import { createHash } from 'node:crypto';
import type { ModelMetadata } from '../core/types';
import type { ModelSpec } from '../core/model-spec';
import type { CopyConnection } from './copy-connection';
import type { FailureTracker } from './health';
import type { InstanceState, Placement } from './placement-store';
import type { CopyHandle } from './runtime';

export interface CopyRecord {
  id: string;
  model: string;
  /** The spec fingerprint the copy was started with (a roll replaces copies with an old one). */
  fingerprint: string;
  version: string;
  image?: string;
  conn: CopyConnection;
  handle?: CopyHandle;
  gpus?: string[];
  memoryMb: number;
  startedAt: number;
  readyAt?: number;
  startupTimer?: NodeJS.Timeout;
  /** Stop was asked for (roll, scale-down, eviction, close): its exit is not a crash. */
  stopping: boolean;
  stopReason?: string;
  /** Taken over from an earlier broker run. */
  adopted?: boolean;
  /** The runtime could not start it (its exit is a 'start' failure). */
  startFailed?: boolean;
  /** 'copy-gone' was emitted. */
  gone?: boolean;
  /** Settles when the copy is gone and cleaned up. */
  done: Promise<void>;
  markDone: () => void;
}

/** What a ModelController keeps of its model (it implements this; placement, rolls and views read it). */
export interface ModelState {
  spec: ModelSpec;
  fingerprint: string;
  copies: Map<string, CopyRecord>;
  metadata?: ModelMetadata;
  health: FailureTracker;
  /** Copies wanted (of the current fingerprint): min_replicas at first, then the autoscaler's and the operator's. */
  desired: number;
  restartTimer?: NodeJS.Timeout;
  restarts: number;
  lastReason?: string;
  /** The last failed copy never sent READY: requests are refused at once, not queued. */
  failedBeforeReady?: boolean;
  /** Why a wanted copy cannot be placed now (no free GPU, a global cap). */
  waiting?: string;
  unloaded?: boolean;
  lastScaleUpAt: number;
  lastScaleDownAt: number;
  /** Last autoscaler verdict (logged when it changes). */
  lastDecision?: string;
}

/** What makes a copy: a change rolls the copies. */
export function fingerprint(s: ModelSpec): string {
  const what = [
    s.image ?? null, s.command ?? null, s.env, s.version, s.run_on_gpu, s.gpus_per_copy, s.gpus ?? null,
    s.memory_mb ?? null, s.cpus ?? null, s.read_only_root, s.tmpfs_mb, s.pids_limit,
  ];
  // Only when set, so the fingerprints of existing copies (adoption) stay as they were.
  if (s.node_selector || s.tolerations || s.image_pull_secrets) what.push(JSON.stringify([s.node_selector ?? null, s.tolerations ?? null, s.image_pull_secrets ?? null]));
  return createHash('sha256').update(JSON.stringify(what)).digest('hex').slice(0, 16);
}

/** Copies that count toward the model's replicas: not stopping, not dead. */
export function isLive(r: CopyRecord): boolean {
  return !r.stopping && r.conn.state !== 'failed' && r.conn.state !== 'stopped';
}

export function isServing(r: CopyRecord): boolean {
  return !r.stopping && r.conn.state === 'ready';
}

/** Copies of the model's current fingerprint. */
export function currentCopies(ms: ModelState): CopyRecord[] {
  return [...ms.copies.values()].filter((r) => r.fingerprint === ms.fingerprint);
}

export function instanceState(r: CopyRecord): InstanceState {
  const s = r.conn.state;
  if (s === 'failed' || s === 'stopped') return s;
  if (r.stopping || s === 'draining') return 'draining';
  if (s === 'ready') return r.conn.inFlight > 0 ? 'busy' : 'ready';
  return 'starting';
}

export function placementOf(r: CopyRecord, brokerId: string, runtime: 'docker' | 'process'): Placement {
  const st = instanceState(r);
  const ready = r.conn.readyInfo;
  return {
    copyId: r.id,
    model: r.model,
    version: r.version,
    brokerId,
    fingerprint: r.fingerprint,
    state: st === 'busy' ? 'ready' : st,
    runtime,
    runtimeId: r.handle?.runtimeId,
    name: r.handle?.name,
    image: r.image,
    gpus: r.gpus,
    startedAt: r.startedAt,
    readyAt: r.readyAt,
    updatedAt: Date.now(),
    ...(ready ? { metadata: ready.metadata, credits: ready.credits, maxSequences: ready.maxSequences } : {}),
    ...(r.conn.reason || r.stopReason ? { reason: r.conn.reason ?? r.stopReason } : {}),
  };
}
