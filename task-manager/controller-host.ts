/**
 * What every model's controller borrows, handed to each one explicitly: the
 * runtime, the link, the placement store, the placer (GPU allocator and global
 * caps), settings, and the task manager's event channel. Nothing here calls
 * back into one model's bookkeeping.
 */
import type { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import type { ModelMetadata } from '../core/types';
import type { CopyFailureKind } from './copies';
import type { GpuAllocator } from './gpu-allocator';
import type { Unavailable } from './health';
import type { LinkServer } from './link-server';
import type { PlacementStore } from './placement-store';
import type { Placer } from './placement';
import type { Runtime } from './runtime';

/** Events of the task manager as a whole (metrics, operators, tests). */
export interface TaskEvents {
  /** A copy of the model's current spec sent READY. */
  metadata: [model: string, metadata: ModelMetadata];
  /** A copy ended without being asked to (crash, hang, could not start). */
  'copy-exit': [model: string, message: string];
  'copy-failure': [model: string, kind: CopyFailureKind];
  'model-unavailable': [model: string, verdict: Unavailable];
  scale: [model: string, direction: 'up' | 'down' | 'none', reason: string];
  'scale-refused': [model: string, cap: 'copies' | 'memory', reason: string];
}

/**
 * A budget of copies per model shared by several brokers (cluster/copy-budget.ts
 * on Redis): a copy is started only after its place was granted, so the copies
 * of all brokers together stay within max_replicas. Absent for one broker.
 */
export interface CopyBudget {
  /**
   * Takes one place for copy `copyId` if fewer than `max` are held over all live
   * brokers, or whatever the count when `floor` (a copy within this broker's
   * min_replicas: every broker keeps its floor, so each is ready by itself);
   * rejects when the budget cannot be asked.
   */
  claim(model: string, copyId: string, max: number, floor: boolean): Promise<boolean>;
  /** An adopted copy keeps its place whatever the count. */
  hold(model: string, copyId: string): void;
  /** The copy stopped (or its grant went unused). */
  release(model: string, copyId: string): void;
}

export interface ControllerHost {
  /** Several brokers on one Redis: the shared copy budget (README "Several brokers"). */
  readonly budget?: CopyBudget;
  readonly runtime: Runtime;
  readonly link: LinkServer;
  readonly store: PlacementStore;
  readonly gpus: GpuAllocator;
  readonly placer: Placer;
  readonly events: EventEmitter<TaskEvents>;
  readonly log: Logger;
  /** Owner label of this broker's copies. */
  readonly brokerId: string;
  /** Process runtime: cwd of copies. */
  readonly cwd?: string;
  readonly heartbeatMs: number;
  /** Restart backoff (first delay, max) and how long a copy must stay up to reset it. */
  readonly backoff: { initialMs: number; maxMs: number; resetMs: number };
  /** Grace for stopping copies that are replaced or removed. */
  readonly stopGraceMs: number;
  /** False until adoption is done and the link is bound: controllers hold their starts until then. */
  canStart(): boolean;
  /** A copy ended: models waiting for room may fit now. */
  copyEnded(): void;
  /** The controller closed: forget it. */
  closed(model: string): void;
}
