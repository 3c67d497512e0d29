/**
 * The autoscale loop: every tick, per model, the inputs of the pure
 * decideScale() (autoscaler.ts) from the core's queue and the copies, and the
 * actions of its verdicts. apply() also serves the cold start and the core's
 * scale-up asks.
 */
import type { Logger } from 'pino';
import { decideScale, type ScaleDecision } from './autoscaler';
import { currentCopies, isLive, isServing, type CopyRecord, type ModelState } from './model-state';

export type Load = { queued: number; running: number };
export type LoadRow = { model: string; queued: number; running: number };

/** The core's queue depth of a model, else (no row) nothing queued and the copies' batches in flight. */
export function loadOf(model: string, rows: LoadRow[] | undefined, ms: ModelState | undefined): Load {
  const row = rows?.find((l) => l.model === model);
  if (row) return { queued: row.queued, running: row.running };
  let running = 0;
  for (const r of ms?.copies.values() ?? []) running += r.conn.inFlight;
  return { queued: 0, running };
}

export interface ScaleLoopDeps {
  models: Map<string, ModelState>;
  /** The core's queue depths (Broker.load()), if known yet. */
  loads: () => LoadRow[] | undefined;
  log: Logger;
  /** The 'scale' event. */
  scaled: (model: string, direction: 'up' | 'down', reason: string) => void;
  ensureReplicas: (ms: ModelState) => void;
  rollStep: (ms: ModelState) => void;
  stop: (rec: CopyRecord, reason: string) => void;
}

export class ScaleLoop {
  constructor(private readonly d: ScaleLoopDeps) {}

  /** One autoscaler period over every model (the caller skips it while closing). */
  tick(): void {
    const rows = this.d.loads();
    const loads = new Map((rows ?? []).map((l) => [l.model, l]));
    const now = Date.now();
    for (const ms of this.d.models.values()) {
      if (ms.unloaded || ms.health.unavailable) continue;
      const cur = currentCopies(ms).filter(isLive);
      const serving = cur.filter(isServing);
      const load = loads.get(ms.spec.name) ?? loadOf(ms.spec.name, this.d.loads(), ms);
      const input = {
        model: ms.spec.name, now, queued: load.queued, running: load.running,
        ready: serving.length, starting: cur.length - serving.length + Math.max(0, ms.desired - cur.length),
        minReplicas: ms.spec.min_replicas, maxReplicas: ms.spec.max_replicas, queuePerCopy: ms.spec.scale_up_queue_per_copy,
        upCooldownMs: ms.spec.scale_up_cooldown_ms, downCooldownMs: ms.spec.scale_down_cooldown_ms, idleTtlMs: ms.spec.idle_ttl_ms,
        lastScaleUpAt: ms.lastScaleUpAt, lastScaleDownAt: ms.lastScaleDownAt,
        idle: serving.filter((r) => r.conn.inFlight === 0 && r.conn.sequences.size === 0).map((r) => ({ copyId: r.id, idleSinceMs: now - r.conn.lastActiveAt })),
      };
      const d = decideScale(input);
      if (d.action !== 'none') this.apply(ms, d, load, input);
      else if (d.reason !== ms.lastDecision) {
        this.d.log.debug({ model: ms.spec.name, decision: 'none', reason: d.reason, ...load, ready: input.ready, starting: input.starting }, 'scaling decision');
        ms.lastDecision = d.reason;
      }
      if (ms.waiting || (cur.length < ms.desired && !ms.restartTimer)) this.d.ensureReplicas(ms);
      this.d.rollStep(ms);
    }
  }

  /** Acts on a decision: up raises `desired` and places copies, down stops the chosen copy. Logged with its inputs. */
  apply(ms: ModelState, d: ScaleDecision, load: Load, input?: object): void {
    const model = ms.spec.name;
    ms.lastDecision = d.reason;
    const now = Date.now();
    const inputs = input ?? { ...load, desired: ms.desired, live: currentCopies(ms).filter(isLive).length };
    if (d.action === 'up') {
      const to = Math.min(ms.spec.max_replicas, ms.desired + d.count);
      if (to <= ms.desired) return;
      this.d.log.info({ model, decision: 'up', from: ms.desired, to, reason: d.reason, inputs }, 'scaling decision');
      ms.desired = to;
      ms.lastScaleUpAt = now;
      this.d.scaled(model, 'up', d.reason);
      this.d.ensureReplicas(ms);
    } else if (d.action === 'down') {
      const rec = ms.copies.get(d.copyId);
      if (!rec) return;
      this.d.log.info({ model, decision: 'down', from: ms.desired, to: ms.desired - 1, copy: d.copyId, reason: d.reason, inputs }, 'scaling decision');
      ms.desired = Math.max(ms.spec.min_replicas, ms.desired - 1);
      ms.lastScaleDownAt = now;
      this.d.scaled(model, 'down', d.reason);
      this.d.stop(rec, `scaled down: ${d.reason}`);
    }
  }
}
