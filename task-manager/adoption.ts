/**
 * What a (re)started broker does with the containers labelled with its id:
 * adopt the running ones it has a placement for (same model, same spec
 * fingerprint, READY metadata known, GPUs free), remove every other one.
 * Containers of other brokers are never listed (the owner label filter).
 */
import type { ModelSpec } from '../model-manager/spec';
import type { Placement } from './placement-store';
import type { CopyHandle } from './runtime';

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
