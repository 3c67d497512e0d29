/**
 * Placement of a new copy, shared by every model's controller: the global
 * caps, exclusive GPUs, and when neither has room, the model waits while the
 * eviction policy asks another model's controller to yield an idle copy.
 * See "GPUs" in README.md.
 */
import type { Logger } from 'pino';
import { capRefusal, type GlobalCaps } from './autoscaler';
import type { GpuAllocator } from './gpu-allocator';
import { isLive, isServing, type CopyRecord, type ModelState } from './model-state';
import { rollRoomVictim } from './roll';

/** What the placer sees of each model's controller. */
export interface Placed extends ModelState {
  /** Queued and running requests, as the core last reported them. */
  readonly lastDemand: { queued: number; running: number };
  /** Stops one of its copies for another model (eviction); it lowers its own desired count. */
  yieldCopy(rec: CopyRecord, reason: string): void;
  /** Stops one of its own copies (a roll making room). */
  stopLater(rec: CopyRecord, reason: string): void;
}

export interface PlacerDeps {
  models: () => Iterable<Placed>;
  gpus: GpuAllocator;
  caps?: GlobalCaps;
  log: Logger;
  /** The 'scale-refused' event. */
  refused: (model: string, cap: 'copies' | 'memory', reason: string) => void;
}

/** Room for a copy (its GPUs, undefined when it needs none), or why the model waits, or why it can never fit. */
export type Room = { gpus: string[] | undefined } | { wait: string } | { never: string };

export class Placer {
  constructor(private readonly d: PlacerDeps) {}

  /** Room for copy `id` of the model; sets or clears nothing on the model (its controller does). */
  place(ms: Placed, id: string): Room {
    const spec = ms.spec;
    const { gpus: alloc, log } = this.d;
    let copies = 0;
    let memoryMb = 0;
    for (const m of this.d.models()) {
      for (const r of m.copies.values()) {
        if (r.conn.state === 'stopped') continue;
        copies++;
        memoryMb += r.memoryMb;
      }
    }
    const refusal = capRefusal(this.d.caps ?? {}, copies, memoryMb, spec.memory_mb ?? 0);
    if (refusal) {
      if (ms.waiting !== refusal.reason) {
        log.warn({ model: spec.name, cap: refusal.cap, copies, memoryMb, addMemoryMb: spec.memory_mb ?? 0, caps: this.d.caps }, `scale-up refused: ${refusal.reason}`);
        this.d.refused(spec.name, refusal.cap, refusal.reason);
      }
      this.makeRoom(ms, undefined);
      return { wait: refusal.reason };
    }
    let gpus: string[] | undefined;
    if (spec.run_on_gpu) {
      const n = spec.gpus_per_copy;
      if (!alloc.feasible(n, spec.gpus)) {
        const why = alloc.size === 0
          ? 'run_on_gpu is set but this host has no GPUs (nvidia-smi found none and TB_GPUS is empty)'
          : `needs ${n} GPU(s) per copy among ${spec.gpus ? `allowed GPUs [${spec.gpus.join(',')}]` : `the host's [${alloc.inventory.join(',')}]`}`;
        return { never: why };
      }
      gpus = alloc.allocate(id, spec.name, n, spec.gpus);
      if (!gpus) {
        const why = `no free GPU for model ${spec.name} (needs ${n}; in use: ${alloc.usage().filter((u) => u.copyId).map((u) => `${u.gpu}=${u.model}`).join(' ')})`;
        if (ms.waiting !== why) log.info({ model: spec.name, gpusPerCopy: n, allowed: spec.gpus, usage: alloc.usage() }, 'copy waits for a GPU');
        this.makeRoom(ms, spec.gpus);
        return { wait: why };
      }
    }
    return { gpus };
  }

  /**
   * Eviction policy: stop one copy of another model that is idle (nothing in
   * flight, nothing queued, idle past its idle_ttl_ms) and above its
   * min_replicas, holding a GPU this model may use (or any copy, for caps).
   * During a roll of this model, an old copy of it is stopped first.
   */
  private makeRoom(ms: Placed, allowedGpus: string[] | undefined): void {
    const now = Date.now();
    const needGpu = ms.spec.run_on_gpu;
    const usable = (r: CopyRecord) => !needGpu || (r.gpus ?? []).some((g) => !allowedGpus || allowedGpus.includes(g));
    const oldVictim = rollRoomVictim(ms, usable);
    if (oldVictim) {
      this.d.log.info({ model: ms.spec.name, copy: oldVictim.id, gpus: oldVictim.gpus }, 'roll: stopping an old copy first to make room for a new one');
      ms.stopLater(oldVictim, 'rolled: making room for the new version');
      return;
    }
    for (const other of this.d.models()) {
      if (other === ms) continue;
      const live = [...other.copies.values()].filter(isLive);
      if (live.length <= other.spec.min_replicas) continue;
      if (other.lastDemand.queued > 0) continue;
      const victim = live.find((r) => isServing(r) && r.conn.inFlight === 0 && r.conn.sequences.size === 0 && now - r.conn.lastActiveAt >= other.spec.idle_ttl_ms && usable(r));
      if (!victim) continue;
      this.d.log.info(
        { model: ms.spec.name, evicted: other.spec.name, copy: victim.id, gpus: victim.gpus, idleMs: now - victim.conn.lastActiveAt, idleTtlMs: other.spec.idle_ttl_ms, otherCopies: live.length, otherMin: other.spec.min_replicas },
        'evicting an idle copy of another model to make room',
      );
      other.yieldCopy(victim, `evicted for model ${ms.spec.name}`);
      return;
    }
  }
}
