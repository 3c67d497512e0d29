/**
 * Rolling updates: a spec change (a new fingerprint) starts copies of the new
 * spec through normal placement; these rules pick which old copies drain, and
 * when. Old copies serve until new ones do, so a roll never leaves a gap.
 */
import type { Logger } from 'pino';
import { currentCopies, isLive, isServing, type CopyRecord, type ModelState } from './model-state';

/** Live copies of an older fingerprint (a roll in progress). */
export function oldCopies(ms: ModelState): CopyRecord[] {
  return [...ms.copies.values()].filter((r) => isLive(r) && r.fingerprint !== ms.fingerprint);
}

/** Old copies of a roll drain as soon as enough new ones serve. */
export function rollStep(ms: ModelState, log: Logger, stop: (rec: CopyRecord, reason: string) => void): void {
  const old = oldCopies(ms);
  if (old.length === 0) return;
  const newServing = currentCopies(ms).filter(isServing).length;
  let excess = newServing + old.length - ms.desired;
  for (const r of old.sort((a, b) => a.conn.inFlight - b.conn.inFlight)) {
    if (excess <= 0) break;
    // Keep old copies until at least one new one serves (no gap), unless none is wanted at all.
    if (newServing === 0 && ms.desired > 0) break;
    excess--;
    log.info({ model: ms.spec.name, copy: r.id, newServing, oldLeft: old.length - 1 }, 'roll: new copy ready, draining an old one');
    stop(r, 'rolled to a new version');
  }
}

/**
 * A new copy cannot be placed: the old copy to stop first to make room (one
 * whose resources it may use), unless a new copy is already starting.
 */
export function rollRoomVictim(ms: ModelState, usable: (r: CopyRecord) => boolean): CopyRecord | undefined {
  const victim = oldCopies(ms).find(usable);
  if (victim && !currentCopies(ms).some((r) => isLive(r) && r.conn.state === 'starting')) return victim;
  return undefined;
}
