/**
 * Scaling decisions, as a pure function of the inputs (so every decision can
 * be logged with exactly what it was based on, and unit-tested).
 */
export interface ScaleInput {
  model: string;
  now: number;
  /** Requests waiting in the model's queue (core Broker.load()). */
  queued: number;
  /** Requests in running batches. */
  running: number;
  /** Copies serving (ready or busy). */
  ready: number;
  /** Copies starting (placed, no READY yet) or waiting for a GPU / a global cap. */
  starting: number;
  minReplicas: number;
  maxReplicas: number;
  /** Scale up when queued requests per serving copy exceed this. */
  queuePerCopy: number;
  upCooldownMs: number;
  downCooldownMs: number;
  idleTtlMs: number;
  lastScaleUpAt: number;
  lastScaleDownAt: number;
  /** Serving copies with nothing in flight, and since when. */
  idle: { copyId: string; idleSinceMs: number }[];
}

export type ScaleDecision =
  | { action: 'none'; reason: string }
  | { action: 'up'; count: number; reason: string }
  | { action: 'down'; copyId: string; reason: string };

export function decideScale(i: ScaleInput): ScaleDecision {
  const live = i.ready + i.starting;
  if (live < i.minReplicas) return { action: 'up', count: i.minReplicas - live, reason: `below min_replicas (${live} < ${i.minReplicas})` };
  if (i.queued > 0 && live === 0) {
    if (i.maxReplicas < 1) return { action: 'none', reason: 'requests queued but max_replicas is 0' };
    return { action: 'up', count: 1, reason: `cold start: ${i.queued} request(s) queued and no copy` };
  }
  if (i.queued > 0) {
    if (i.starting > 0) return { action: 'none', reason: `${i.starting} copy(ies) starting` };
    const perCopy = i.queued / Math.max(1, i.ready);
    if (perCopy <= i.queuePerCopy) return { action: 'none', reason: `queue per copy ${perCopy.toFixed(1)} <= ${i.queuePerCopy}` };
    if (live >= i.maxReplicas) return { action: 'none', reason: `queue per copy ${perCopy.toFixed(1)} > ${i.queuePerCopy} but max_replicas (${i.maxReplicas}) reached` };
    const since = i.now - i.lastScaleUpAt;
    if (since < i.upCooldownMs) return { action: 'none', reason: `scale-up cooldown (${since} < ${i.upCooldownMs} ms)` };
    return { action: 'up', count: 1, reason: `queue per copy ${perCopy.toFixed(1)} > scale_up_queue_per_copy ${i.queuePerCopy}` };
  }
  if (live <= i.minReplicas) return { action: 'none', reason: 'at min_replicas' };
  if (i.running > 0 && i.idle.length === 0) return { action: 'none', reason: 'all copies busy' };
  const sinceUp = i.now - i.lastScaleUpAt;
  const sinceDown = i.now - i.lastScaleDownAt;
  if (Math.min(sinceUp, sinceDown) < i.downCooldownMs) {
    return { action: 'none', reason: `scale-down cooldown (${Math.min(sinceUp, sinceDown)} < ${i.downCooldownMs} ms)` };
  }
  const longest = [...i.idle].sort((a, b) => b.idleSinceMs - a.idleSinceMs)[0];
  if (!longest) return { action: 'none', reason: 'no idle copy' };
  if (longest.idleSinceMs < i.idleTtlMs) return { action: 'none', reason: `idle ${longest.idleSinceMs} < idle_ttl_ms ${i.idleTtlMs}` };
  return { action: 'down', copyId: longest.copyId, reason: `copy idle ${longest.idleSinceMs} ms >= idle_ttl_ms ${i.idleTtlMs}, ${live} > min_replicas ${i.minReplicas}` };
}

/** Global caps on the whole box; undefined = no cap. */
export interface GlobalCaps {
  maxCopies?: number;
  maxMemoryMb?: number;
}

/** Why a new copy may not start under the caps, or undefined when it may. */
export function capRefusal(caps: GlobalCaps, copies: number, memoryMb: number, addMemoryMb: number): { cap: 'copies' | 'memory'; reason: string } | undefined {
  if (caps.maxCopies !== undefined && copies + 1 > caps.maxCopies) {
    return { cap: 'copies', reason: `global cap TB_MAX_COPIES=${caps.maxCopies} reached (${copies} copies)` };
  }
  if (caps.maxMemoryMb !== undefined && memoryMb + addMemoryMb > caps.maxMemoryMb) {
    return { cap: 'memory', reason: `global cap TB_MAX_MEMORY_MB=${caps.maxMemoryMb} would be exceeded (${memoryMb} MB used + ${addMemoryMb} MB)` };
  }
  return undefined;
}
