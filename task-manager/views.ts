/** Read-only views of the task manager's bookkeeping: /admin/instances, /admin/models/{m}, stats. */
import type { ModelReadiness } from '../core/types';
import type { CopyState } from './copy-connection';
import type { Unavailable } from './health';
import { instanceState, type CopyRecord, type ModelState } from './model-state';
import type { InstanceState } from './placement-store';

export interface CopyInfo {
  id: string;
  model: string;
  state: InstanceState;
  inFlight: number;
  credits: number;
  runtimeId?: string;
  name?: string;
  pid?: number;
  gpus?: string[];
  fingerprint: string;
  version: string;
  image?: string;
  adopted?: boolean;
  startedAt: number;
  readyAt?: number;
}

export interface ModelStats {
  model: string;
  copies: Record<CopyState, number>;
  inFlight: number;
  restarts: number;
  ready: boolean;
  reason?: string;
}

export interface ModelStatus {
  model: string;
  readiness: ModelReadiness;
  desired: number;
  minReplicas: number;
  maxReplicas: number;
  copies: CopyInfo[];
  restarts: number;
  recentFailures: number;
  unavailable?: Unavailable;
  waiting?: string;
  lastDecision?: string;
}

export function copyInfo(r: CopyRecord): CopyInfo {
  return {
    id: r.id, model: r.model, state: instanceState(r), inFlight: r.conn.inFlight, credits: r.conn.credits,
    runtimeId: r.handle?.runtimeId, name: r.handle?.name, pid: r.handle?.pid, gpus: r.gpus,
    fingerprint: r.fingerprint, version: r.version, image: r.image, adopted: r.adopted || undefined,
    startedAt: r.startedAt, readyAt: r.readyAt,
  };
}

export function modelStatus(model: string, ms: ModelState, readiness: ModelReadiness): ModelStatus {
  return {
    model,
    readiness,
    desired: ms.desired,
    minReplicas: ms.spec.min_replicas,
    maxReplicas: ms.spec.max_replicas,
    copies: [...ms.copies.values()].map(copyInfo),
    restarts: ms.restarts,
    recentFailures: ms.health.count(Date.now(), ms.spec.failure_window_ms),
    ...(ms.health.unavailable ? { unavailable: ms.health.unavailable } : {}),
    ...(ms.waiting ? { waiting: ms.waiting } : {}),
    ...(ms.lastDecision ? { lastDecision: ms.lastDecision } : {}),
  };
}

export function modelStats(model: string, ms: ModelState, readiness: ModelReadiness): ModelStats {
  const copies: Record<CopyState, number> = { starting: 0, ready: 0, draining: 0, failed: 0, stopped: 0 };
  let inFlight = 0;
  for (const r of ms.copies.values()) {
    copies[r.conn.state]++;
    inFlight += r.conn.inFlight;
  }
  return { model, copies, inFlight, restarts: ms.restarts, ready: readiness.ready, reason: readiness.reason };
}
