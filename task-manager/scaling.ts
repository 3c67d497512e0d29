/**
 * The autoscaler's inputs for one model, from the core's reported demand and
 * the controller's copies, for the pure decideScale() (autoscaler.ts). The
 * controller acts on the verdict (ModelController.tick).
 */
import type { ScaleInput } from './autoscaler';
import { currentCopies, isLive, isServing, type ModelState } from './model-state';

export type Load = { queued: number; running: number };

export function scaleInput(ms: ModelState, load: Load, now: number): ScaleInput {
  const cur = currentCopies(ms).filter(isLive);
  const serving = cur.filter(isServing);
  return {
    model: ms.spec.name, now, queued: load.queued, running: load.running,
    ready: serving.length, starting: cur.length - serving.length + Math.max(0, ms.desired - cur.length),
    minReplicas: ms.spec.min_replicas, maxReplicas: ms.spec.max_replicas, queuePerCopy: ms.spec.scale_up_queue_per_copy,
    upCooldownMs: ms.spec.scale_up_cooldown_ms, downCooldownMs: ms.spec.scale_down_cooldown_ms, idleTtlMs: ms.spec.idle_ttl_ms,
    lastScaleUpAt: ms.lastScaleUpAt, lastScaleDownAt: ms.lastScaleDownAt,
    idle: serving.filter((r) => r.conn.inFlight === 0 && r.conn.sequences.size === 0).map((r) => ({ copyId: r.id, idleSinceMs: now - r.conn.lastActiveAt })),
  };
}
