/**
 * The sequence batcher of a stateful model (registry `stateless: false`),
 * Triton's Direct strategy: each copy has `maxSequences` slots; a sequence's
 * first request takes a free slot on the least loaded ready copy and every
 * later request of it goes to that copy and slot, one at a time, in arrival
 * order. A batch holds at most one request per sequence and many sequences
 * share a batch. No free slot: the sequence waits in a bounded backlog (and,
 * with sequence_scale_up, another copy is asked for). A sequence ends by its
 * end flag, by its client going away, or after sequence_idle_ms without a
 * request; the copy is told each time (EndSequence with the reason). A copy
 * that dies takes its sequences with it: they fail, nothing is moved.
 */
import type { Logger } from 'pino';
import { BrokerError } from './errors';
import { Fifo } from './fifo';
import { SchedulerBase, type Pending, type SchedulerConfig, type SchedulerObserver } from './scheduler-base';
import type { ModelCopies, ModelCopy, SequenceEndReason } from './model-copies';
import type { InferRequest } from './types';

export interface SequenceConfig extends SchedulerConfig {
  /** The registry's max_sequences: slots per copy when the copy gives none. */
  maxSequences?: number;
  /** sequence_idle_ms: a sequence without a request this long is ended (reason idle). */
  idleMs: number;
  /** sequence_backlog: sequences waiting for a slot; beyond it new sequences get RESOURCE_EXHAUSTED. */
  backlog: number;
  /** sequence_scale_up: ask the pool for another copy when every slot is taken. */
  scaleUp: boolean;
}

/** What /v2/models/{m}/sequences shows, and what the tests and the benchmark read. */
export interface SequenceStatus {
  model: string;
  /** Slots of the ready copies, and how many hold a sequence. */
  slots: number;
  active: number;
  /** Sequences waiting for a slot. */
  backlog: number;
  copies: { copy: string; slots: number; used: number; sequences: { id: string; slot: number }[] }[];
  /** Sequences ended since start, by reason ('lost' = their copy died). */
  ended: Record<SequenceEndReason | 'lost', number>;
  /** Sequences that had to wait in the backlog since start. */
  backlogged: number;
}

interface CopySlots {
  copy: ModelCopy;
  slots: (Sequence | undefined)[];
  used: number;
  /** In the pool's readyCopies at the last look: new sequences may be placed here. */
  ready: boolean;
}

interface Sequence {
  id: string;
  table?: CopySlots;
  slot: number;
  /** Requests not dispatched yet, in arrival order (settled ones are dropped lazily). */
  queue: Fifo<Req>;
  /** The request of this sequence inside a running batch, if any. */
  current?: Req;
  /** An end flag was accepted, or the sequence was cancelled: only a start may follow. */
  closed: boolean;
  /** To tell the copy as soon as nothing of this sequence runs. */
  pendingEnd?: SequenceEndReason;
  idleTimer?: NodeJS.Timeout;
  owner?: AbortSignal;
  onOwnerAbort?: () => void;
  /** Removed from the scheduler (ended or lost): late events about it are ignored. */
  gone: boolean;
  /** Its start request never ran: the next request takes the start flag. */
  carryStart?: boolean;
}

interface SeqExt {
  seq: Sequence;
  start: boolean;
  end: boolean;
}

type Req = Pending<SeqExt>;

/** Triton's not-active error (INVALID_ARG) for a request without START, with why the sequence is not active when known. */
export function sequenceNotActive(model: string, id: string, why: string | undefined): BrokerError {
  return new BrokerError('INVALID_ARGUMENT',
    `inference request for sequence ${id} to model '${model}' must specify the START flag on the first request of the sequence ` +
    `(sequence '${id}' is not active: ${why ?? 'ended, expired or never started'}; start it with sequence_start)`);
}

/** Ids of ended sequences kept to explain a late request. */
const RECENT_LIMIT = 10_000;

export class SequenceScheduler extends SchedulerBase<SeqExt> {
  private readonly seqs = new Map<string, Sequence>();
  private readonly tables = new Map<string, CopySlots>();
  private backlog: Sequence[] = [];
  private readonly recent = new Map<string, string>();
  private readonly ended: SequenceStatus['ended'] = { end: 0, cancelled: 0, idle: 0, lost: 0 };
  private backlogged = 0;
  private waitTimer?: NodeJS.Timeout;
  private pumpQueued = false;
  protected override readonly retriesBatches = false;
  private capacityQueued = false;
  private readonly onCopyGone = (copyId: string, reason: string) => this.copyGone(copyId, reason);
  /** Told each time a sequence is forgotten (ended, cancelled, expired, lost): the cluster's lease is dropped. */
  onRemoved?: (id: string, why: string) => void;

  constructor(model: string, private cfg: SequenceConfig, copies: ModelCopies, log: Logger, observer?: SchedulerObserver) {
    super(model, cfg, copies, log, observer);
    copies.on('copy-gone', this.onCopyGone);
  }

  override configure(config: SchedulerConfig): void {
    this.cfg = { ...this.cfg, ...config };
    super.configure(config);
  }

  protected closeQueues(reason: BrokerError): void {
    this.copies.off('copy-gone', this.onCopyGone);
    clearTimeout(this.waitTimer);
    for (const seq of [...this.seqs.values()]) {
      for (const p of this.drain(seq)) this.settle(p, reason);
      this.remove(seq, `the model closed: ${reason.message}`);
    }
    this.backlog = [];
  }

  protected failQueued(reason: BrokerError): void {
    for (const seq of [...this.seqs.values()]) for (const p of this.drain(seq)) this.settle(p, reason);
  }

  /** A copy died or is leaving: its sequences fail (their state is gone); nothing is moved. */
  copyGone(copyId: string, reason: string): void {
    const t = this.tables.get(copyId);
    if (!t) return;
    this.tables.delete(copyId);
    for (const seq of t.slots) {
      if (!seq) continue;
      const err = new BrokerError('UNAVAILABLE', `${reason}; the state of sequence '${seq.id}' is lost`, { kind: 'sequence-lost' });
      const items = this.drain(seq);
      if (seq.current) items.push(seq.current);
      this.ended.lost++;
      this.remove(seq, `lost: ${reason}`);
      for (const p of items) this.settle(p, err);
    }
    this.log.warn({ copy: copyId, reason, lost: t.used }, 'model copy gone; its sequences failed');
    this.schedulePump();
  }

  status(): SequenceStatus {
    this.refreshTables();
    const copies = [...this.tables.values()].map((t) => ({
      copy: t.copy.id,
      slots: t.slots.length,
      used: t.used,
      sequences: t.slots.flatMap((s, slot) => (s ? [{ id: s.id, slot }] : [])),
    }));
    const ready = [...this.tables.values()].filter((t) => t.ready);
    return {
      model: this.model,
      slots: ready.reduce((n, t) => n + t.slots.length, 0),
      active: [...this.tables.values()].reduce((n, t) => n + t.used, 0),
      backlog: this.backlog.length,
      copies,
      ended: { ...this.ended },
      backlogged: this.backlogged,
    };
  }

  /**
   * A copy may take work. The copies say so as soon as the copy answered, before
   * the answer's own handlers ran: pumping then would leave out the sequences of
   * that answer and halve the batches. So the pump waits for them (setImmediate).
   */
  override capacity(): void {
    if (this.capacityQueued) return;
    this.capacityQueued = true;
    setImmediate(() => {
      this.capacityQueued = false;
      this.pump();
    });
  }

  pump(): void {
    this.pumpQueued = false;
    clearTimeout(this.waitTimer);
    this.waitTimer = undefined;
    if (this.closed) return;
    this.refreshTables();
    this.assignBacklog();
    for (const t of this.tables.values()) {
      while (t.copy.hasCapacity() && this.cut(t));
    }
  }

  // ---- admission ----

  protected prepare(req: InferRequest): SeqExt {
    const ref = req.sequence;
    if (!ref || ref.id === '') {
      throw new BrokerError('INVALID_ARGUMENT',
        `model '${this.model}' is stateful: every request needs a sequence id (parameter sequence_id, or source_id on ZeroMQ)`);
    }
    if (ref.owner?.aborted) throw new BrokerError('CANCELLED', 'the client of the sequence went away');
    const seq = this.seqs.get(ref.id);
    if (seq && (!seq.closed || ref.start)) return { seq, start: ref.start, end: ref.end };
    if (!ref.start) throw this.notActive(ref.id);
    if (!this.freeSlot() && this.backlog.length >= this.cfg.backlog) {
      this.reject(`model '${this.model}' has no free sequence slot (${this.status().slots} in use) ` +
        `and its backlog of ${this.cfg.backlog} sequences is full`);
    }
    if (seq) return { seq, start: true, end: ref.end }; // restart of a closed sequence, in place
    const fresh: Sequence = { id: ref.id, slot: -1, queue: new Fifo<Req>(), closed: false, gone: false };
    return { seq: fresh, start: true, end: ref.end };
  }

  protected enqueue(p: Req): void {
    const { seq, start, end } = p.ext;
    if (!this.seqs.has(seq.id)) {
      this.seqs.set(seq.id, seq);
      this.recent.delete(seq.id);
      this.place(seq);
    }
    if (seq.carryStart) {
      p.ext.start = true;
      seq.carryStart = false;
    }
    if (start) seq.closed = false;
    if (end) seq.closed = true;
    clearTimeout(seq.idleTimer);
    seq.queue.push(p);
    const owner = p.req.sequence?.owner;
    if (owner && owner !== seq.owner) {
      this.detachOwner(seq);
      seq.owner = owner;
      seq.onOwnerAbort = () => this.cancel(seq, 'the client of the sequence went away');
      owner.addEventListener('abort', seq.onOwnerAbort, { once: true });
    }
  }

  protected override onAbort(p: Req): void {
    super.onAbort(p);
    this.cancel(p.ext.seq, 'the client cancelled the sequence');
  }

  protected override onSettled(p: Req, wasQueued: boolean): void {
    if (!wasQueued) return;
    if (p.ext.start) this.carryStart(p);
    this.maybeFinish(p.ext.seq);
  }

  /**
   * A start request left the queue without running (its deadline, say, while the
   * sequence waited for a slot): the next request of the sequence carries the start
   * flag instead, so the model always sees the start of what it gets.
   */
  private carryStart(p: Req): void {
    const seq = p.ext.seq;
    let behind = false;
    for (const q of seq.queue) {
      if (q === p) behind = true;
      else if (behind && q.state === 'queued') {
        q.ext.start = true;
        return;
      }
    }
    if (behind && !seq.gone) seq.carryStart = true;
  }

  protected override batchError(e: BrokerError): BrokerError {
    // The copy died or hung under the batch: whatever state it held is gone.
    return e.kind === 'copy-lost' ? new BrokerError('UNAVAILABLE', `${e.message}; sequence state lost`, { kind: 'sequence-lost', cause: e }) : e;
  }

  /** Whether the sequence is active (or backlogged) here: its later requests are served here. */
  holds(id: string): boolean {
    return this.seqs.has(id);
  }

  /** Triton's answer (INVALID_ARG) and wording, plus what the broker remembers of the id. */
  private notActive(id: string): BrokerError {
    return sequenceNotActive(this.model, id, this.recent.get(id));
  }

  // ---- slots ----

  private refreshTables(): void {
    const ready = new Set<string>();
    for (const copy of this.copies.ready()) {
      ready.add(copy.id);
      if (!this.tables.has(copy.id)) {
        const n = copy.maxSequences || this.cfg.maxSequences || this.maxRows(copy.metadata);
        this.tables.set(copy.id, { copy, slots: new Array<Sequence | undefined>(Math.max(1, n)).fill(undefined), used: 0, ready: true });
      }
    }
    for (const t of this.tables.values()) t.ready = ready.has(t.copy.id);
  }

  /** The ready copy with a free slot and the lowest share of slots in use. */
  private freeSlot(): CopySlots | undefined {
    this.refreshTables();
    let best: CopySlots | undefined;
    for (const t of this.tables.values()) {
      if (!t.ready || t.used >= t.slots.length) continue;
      if (!best || t.used / t.slots.length < best.used / best.slots.length) best = t;
    }
    return best;
  }

  private place(seq: Sequence): void {
    const t = this.backlog.length === 0 ? this.freeSlot() : undefined;
    if (t) return this.assign(seq, t);
    this.backlog.push(seq);
    this.backlogged++;
    this.log.debug({ sequence: seq.id, backlog: this.backlog.length }, 'no free sequence slot: backlogged');
    if (this.cfg.scaleUp || this.tables.size === 0) this.copies.requestCopy(`no free sequence slot (${this.backlog.length} sequences waiting)`);
    this.observe();
  }

  private assign(seq: Sequence, t: CopySlots): void {
    const slot = t.slots.indexOf(undefined);
    t.slots[slot] = seq;
    t.used++;
    seq.table = t;
    seq.slot = slot;
    if (this.log.isLevelEnabled('debug')) this.log.debug({ sequence: seq.id, copy: t.copy.id, slot }, 'sequence placed');
    this.observe();
  }

  private assignBacklog(): void {
    while (this.backlog.length > 0) {
      const t = this.freeSlot();
      if (!t) return;
      const seq = this.backlog.shift()!;
      if (!seq.gone) this.assign(seq, t);
    }
  }

  // ---- batches ----

  /** Cuts one batch for the copy of `t` from its sequences' next requests; false when there is none to cut now. */
  private cut(t: CopySlots): boolean {
    const heads: Req[] = [];
    for (const seq of t.slots) {
      if (!seq || seq.current || seq.pendingEnd) continue;
      const head = this.liveHead(seq);
      if (head) heads.push(head);
    }
    if (heads.length === 0) return false;
    heads.sort((a, b) => (a.enqueuedNs < b.enqueuedNs ? -1 : a.enqueuedNs > b.enqueuedNs ? 1 : 0));
    const maxRows = this.maxRows(t.copy.metadata);
    const key = heads[0].key;
    const batch: Req[] = [];
    let rows = 0;
    for (const p of heads) {
      if (p.key !== key || rows + p.rows > maxRows) continue;
      batch.push(p);
      rows += p.rows;
    }
    // max_wait_ms: hold the batch for sequences of this copy that may still send a request.
    const waitedMs = Number(process.hrtime.bigint() - heads[0].enqueuedNs) / 1e6;
    if (rows < maxRows && heads.length < t.used && waitedMs < this.cfg.maxWaitMs) {
      if (!this.waitTimer) this.waitTimer = setTimeout(() => this.pump(), Math.max(1, Math.ceil(this.cfg.maxWaitMs - waitedMs)));
      return false;
    }
    for (const p of batch) {
      p.ext.seq.queue.shift();
      p.ext.seq.current = p;
    }
    this.dispatch(
      t.copy,
      batch,
      (p) => ({ id: p.ext.seq.id, slot: p.ext.seq.slot, start: p.ext.start, end: p.ext.end }),
      () => this.batchDone(batch),
    );
    return true;
  }

  private batchDone(batch: Req[]): void {
    for (const p of batch) {
      const seq = p.ext.seq;
      if (seq.current === p) seq.current = undefined;
      if (seq.gone) continue;
      if (p.ext.end && seq.pendingEnd === undefined) seq.pendingEnd = 'end';
      this.maybeFinish(seq);
    }
    this.schedulePump();
  }

  /** The oldest request of the sequence still waiting; drops settled ones from the front. */
  private liveHead(seq: Sequence): Req | undefined {
    while (seq.queue.length > 0 && seq.queue.peek()!.state !== 'queued') seq.queue.shift();
    return seq.queue.peek();
  }

  /** Empties the sequence's queue, returning the requests still waiting. */
  private drain(seq: Sequence): Req[] {
    const items = [...seq.queue].filter((p) => p.state === 'queued');
    seq.queue = new Fifo<Req>();
    return items;
  }

  // ---- ends ----

  /**
   * Called whenever nothing of the sequence may be running any more: delivers a
   * pending end to the copy, frees the slot of a finished sequence, or arms the idle timer.
   */
  private maybeFinish(seq: Sequence): void {
    if (seq.gone || seq.current || this.closed) return;
    const live = this.liveHead(seq) !== undefined;
    if (seq.pendingEnd !== undefined) {
      const reason = seq.pendingEnd;
      seq.pendingEnd = undefined;
      this.tell(seq, reason);
      if (!live) this.remove(seq, reason === 'end' ? 'it ended' : 'it was cancelled');
      else this.schedulePump(); // restarted in place: its start request goes next
      return;
    }
    if (live) return;
    if (seq.closed) {
      // Its end request never ran (deadline or cancel while queued): still an end for the copy.
      this.tell(seq, 'end');
      this.remove(seq, 'it ended');
      return;
    }
    clearTimeout(seq.idleTimer);
    seq.idleTimer = setTimeout(() => this.reap(seq), this.cfg.idleMs);
    seq.idleTimer.unref?.();
  }

  private reap(seq: Sequence): void {
    if (seq.gone || seq.current || this.liveHead(seq)) return;
    this.log.info({ sequence: seq.id, copy: seq.table?.copy.id, slot: seq.slot, idleMs: this.cfg.idleMs }, 'idle sequence ended');
    this.tell(seq, 'idle');
    this.remove(seq, `it expired after ${this.cfg.idleMs} ms without a request (sequence_idle_ms)`);
  }

  /** The client went away: its waiting requests fail, the copy is told once nothing runs. */
  private cancel(seq: Sequence, message: string): void {
    if (seq.gone) return;
    seq.closed = true;
    if (seq.table) seq.pendingEnd = 'cancelled';
    const items = this.drain(seq);
    if (seq.current) items.push(seq.current);
    const err = new BrokerError('CANCELLED', message);
    for (const p of items) this.settle(p, err);
    if (seq.table) this.maybeFinish(seq);
    else this.remove(seq, 'it was cancelled');
  }

  private tell(seq: Sequence, reason: SequenceEndReason): void {
    if (!seq.table) return;
    this.ended[reason]++;
    if (this.log.isLevelEnabled('debug')) this.log.debug({ sequence: seq.id, copy: seq.table.copy.id, slot: seq.slot, reason }, 'sequence end sent');
    seq.table.copy.endSequence(seq.id, seq.slot, reason);
  }

  /** Forgets the sequence and frees its slot (or its backlog place). */
  private remove(seq: Sequence, why: string): void {
    if (seq.gone) return;
    seq.gone = true;
    clearTimeout(seq.idleTimer);
    this.detachOwner(seq);
    const t = seq.table;
    if (t && t.slots[seq.slot] === seq) {
      t.slots[seq.slot] = undefined;
      t.used--;
    }
    const i = this.backlog.indexOf(seq);
    if (i >= 0) this.backlog.splice(i, 1);
    if (this.seqs.get(seq.id) === seq) this.seqs.delete(seq.id);
    if (this.recent.size >= RECENT_LIMIT) this.recent.delete(this.recent.keys().next().value!);
    this.recent.set(seq.id, why);
    this.onRemoved?.(seq.id, why);
    this.observe();
    this.schedulePump();
  }

  private detachOwner(seq: Sequence): void {
    if (seq.owner && seq.onOwnerAbort) seq.owner.removeEventListener('abort', seq.onOwnerAbort);
    seq.owner = undefined;
    seq.onOwnerAbort = undefined;
  }

  /** pump() from a later microtask: never re-entered from inside a settle or a dispatch. */
  private schedulePump(): void {
    if (this.pumpQueued || this.closed) return;
    this.pumpQueued = true;
    queueMicrotask(() => {
      if (this.pumpQueued) this.pump();
    });
  }

  private observe(): void {
    if (!this.observer?.sequences) return;
    let active = 0;
    for (const t of this.tables.values()) active += t.used;
    this.observer.sequences(this.model, active, this.backlog.length);
  }
}
