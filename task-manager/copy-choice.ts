/** Which copy takes the next batch: shared by the one-box controller and the Kubernetes model. */
import type { CopyConnection } from './copy-connection';

export interface Choosable {
  stopping?: boolean;
  /** The spec fingerprint the copy was started with. */
  fingerprint: string;
  conn: CopyConnection;
}

/** A copy with free credits: new copies of a roll (the current fingerprint) first, then the least loaded. */
export function chooseCopy(copies: Iterable<Choosable>, fingerprint: string): CopyConnection | undefined {
  let best: Choosable | undefined;
  for (const c of copies) {
    if (c.stopping || !c.conn.hasCapacity()) continue;
    const better = !best || (c.fingerprint === fingerprint && best.fingerprint !== fingerprint) ||
      (c.fingerprint === best.fingerprint && c.conn.inFlight < best.conn.inFlight);
    if (better) best = c;
  }
  return best?.conn;
}
