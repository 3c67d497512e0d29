/**
 * What a (re)started broker does with the containers labelled with its id:
 * adopt the running ones it has a placement for (same model, same spec
 * fingerprint, READY metadata known, GPUs free), remove every other one.
 * Containers of other brokers are never listed (the owner label filter).
 * planAdoption() decides (pure); clearLeftovers() acts on the decision.
 */
import type { Logger } from 'pino';
import type { ModelSpec } from '../core/model-spec';
import { fingerprint } from './model-state';
import type { Placement, PlacementStore } from './placement-store';
import type { CopyHandle, Runtime } from './runtime';

export interface AdoptionPlan {
  adopt: { handle: CopyHandle; placement: Placement; spec: ModelSpec }[];
  remove: { handle: CopyHandle; why: string }[];
  /** Placements with no container any more. */
  forget: Placement[];
}

export function planAdoption(handles: CopyHandle[], placements: Placement[], specs: ModelSpec[], fingerprintOf: (s: ModelSpec) => string): AdoptionPlan {
  const byCopy = new Map(placements.map((p) => [p.copyId, p]));
  const bySpec = new Map(specs.map((s) => [s.name, s]));
  const plan: AdoptionPlan = { adopt: [], remove: [], forget: [] };
  const seen = new Set<string>();
  const gpusTaken = new Set<string>();
  for (const h of handles) {
    seen.add(h.copyId);
    const p = byCopy.get(h.copyId);
    const spec = bySpec.get(h.model);
    let why: string | undefined;
    if (!h.running) why = 'not running';
    else if (!p) why = 'no placement record';
    else if (!p.metadata) why = 'it never sent READY';
    else if (!spec) why = `model ${h.model} is no longer registered`;
    else if (p.fingerprint !== fingerprintOf(spec) || (h.fingerprint && h.fingerprint !== p.fingerprint)) why = 'its model spec changed';
    else if ((p.gpus ?? []).some((g) => gpusTaken.has(g))) why = 'its GPUs are taken by another adopted copy';
    if (why || !p || !spec) {
      plan.remove.push({ handle: h, why: why ?? 'unknown' });
      continue;
    }
    for (const g of p.gpus ?? []) gpusTaken.add(g);
    plan.adopt.push({ handle: h, placement: p, spec });
  }
  for (const p of placements) if (!seen.has(p.copyId)) plan.forget.push(p);
  return plan;
}

/**
 * Start-up of a broker: lists the containers labelled with its id and its
 * placements, removes the stale containers, forgets placements without one,
 * and returns the running copies to adopt (the caller launches them).
 * Adoption needs a runtime that can adopt and a persistent store.
 */
export async function clearLeftovers(runtime: Runtime, store: PlacementStore, brokerId: string, specs: ModelSpec[], log: Logger): Promise<AdoptionPlan['adopt']> {
  const handles = await runtime.list(brokerId).catch((err: Error) => {
    log.error({ err }, 'cannot list containers of an earlier run');
    return [] as CopyHandle[];
  });
  const placements = await store.list().catch((err: Error) => {
    log.error({ err, store: store.kind }, 'cannot read placements; nothing is adopted');
    return [] as Placement[];
  });
  const canAdopt = !!runtime.adopt && store.kind !== 'memory';
  const plan = planAdoption(canAdopt ? handles : [], placements, specs, fingerprint);
  if (!canAdopt) for (const h of handles) plan.remove.push({ handle: h, why: 'this runtime or placement store cannot adopt' });
  for (const { handle, why } of plan.remove) {
    log.info({ container: handle.name, model: handle.model, copy: handle.copyId, why }, 'removing a stale copy of an earlier run');
    await (runtime.remove ? runtime.remove(handle) : runtime.kill(handle)).catch(() => undefined);
    await store.remove(handle.copyId).catch(() => undefined);
  }
  for (const p of plan.forget) await store.remove(p.copyId).catch(() => undefined);
  return plan.adopt;
}
