/**
 * Per-sequence state for stateful models: one object per sequence id, the
 * same for every request of the sequence, a fresh one when a request carries
 * the start flag, dropped when the broker ends the sequence (EndSequence:
 * end, cancelled, idle). Keyed by id; the slot guards against a late end of a
 * previous sequence that used the same id.
 */
import type { SequenceInfo } from './types';

export class SequenceStates<S extends object = Record<string, unknown>> {
  private readonly states = new Map<string, { slot: number; state: S }>();

  constructor(private readonly init: (seq: SequenceInfo) => S = () => ({}) as S) {}

  /** Sequences holding state. */
  get size(): number {
    return this.states.size;
  }

  /** A start flag: the sequence begins (again) with a fresh state. */
  reset(seq: SequenceInfo): S {
    const state = this.init(seq);
    this.states.set(seq.id, { slot: seq.slot, state });
    return state;
  }

  /** The sequence's state; created if the copy has none (e.g. it restarted mid-sequence). */
  get(seq: SequenceInfo): S {
    const s = this.states.get(seq.id);
    return s ? s.state : this.reset(seq);
  }

  /** The broker ended the sequence: forget it. Returns the state it had, if any. */
  drop(id: string, slot: number): S | undefined {
    const s = this.states.get(id);
    if (!s || s.slot !== slot) return undefined;
    this.states.delete(id);
    return s.state;
  }
}
