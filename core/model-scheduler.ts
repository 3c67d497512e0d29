import type { Logger } from 'pino';
import type { BrokerError } from './errors';
import { Fifo } from './fifo';
import { SchedulerBase, type Pending, type SchedulerConfig, type SchedulerObserver } from './scheduler-base';
import type { ModelCopies } from './model-copies';
import type { InferRequest } from './types';

export type { Outcome, SchedulerConfig, SchedulerObserver } from './scheduler-base';

type Req = Pending<undefined>;

const DEFAULT_BACKGROUND_IDLE_MS = 100;

/** Queue order: live before background; within each, 1 is the highest priority and 0 (default) is 1's peer below it. */
function byPriority(a: number, b: number): number {
  const bgA = a < 0, bgB = b < 0;
  if (bgA !== bgB) return bgA ? 1 : -1;
  const pa = bgA ? -1 - a : a, pb = bgB ? -1 - b : b;
  return (pa || Infinity) - (pb || Infinity);
}

/**
 * One per stateless model: admits requests into a bounded queue, cuts batches
 * when a copy has a free credit (up to batch_size rows, waiting at most
 * max_wait_ms from the oldest request; a copy that is still running a batch
 * gets only full ones), and splits each reply back by rows. Background
 * requests (jobs) fill live batches and go alone only when live traffic paused.
 * Invariant: every accepted request settles exactly once (settle()).
 */
export class ModelScheduler extends SchedulerBase<undefined> {
  private readonly queues = new Map<number, Fifo<Req>>();
  private priorities: number[] = [];
  private waitTimer?: NodeJS.Timeout;
  /** hrtime of the last live (not background) arrival. */
  private lastLiveNs = 0n;

  constructor(model: string, config: SchedulerConfig, copies: ModelCopies, log: Logger, observer?: SchedulerObserver) {
    super(model, config, copies, log, observer);
  }

  protected failQueued(reason: BrokerError): void {
    for (const q of this.queues.values()) for (const p of q) this.settle(p, reason);
  }

  protected closeQueues(reason: BrokerError): void {
    clearTimeout(this.waitTimer);
    for (const q of this.queues.values()) for (const p of q) this.settle(p, reason);
    this.queues.clear();
    this.priorities = [];
  }

  pump(): void {
    clearTimeout(this.waitTimer);
    this.waitTimer = undefined;
    while (this.queued > 0 && !this.closed) {
      const copy = this.copies.available();
      if (!copy) return;
      const head = this.head();
      if (!head) return;
      const maxRows = this.maxRows(copy.metadata);
      // A copy's second credit (it is still running a batch) only gets a full batch: the next one
      // is then waiting at the copy when the running one ends. A partial batch waits for the copy
      // to finish ('capacity' pumps again), so it can still grow from arrivals meanwhile. Only live
      // rows count here: background rows must not push a live batch onto a busy copy.
      if (copy.busy() && this.queuedLiveRows < maxRows) return;
      // Only background work queued (live requests come first in take()): it goes alone only on an
      // idle copy once live traffic has paused, so a live request never waits behind a job-only batch
      // it could have joined. Until then it rides in the free rows of live batches.
      if (head.req.background) {
        if (copy.busy()) return;
        const quietMs = Number(process.hrtime.bigint() - this.lastLiveNs) / 1e6;
        const idleMs = this.config.backgroundIdleMs ?? DEFAULT_BACKGROUND_IDLE_MS;
        if (quietMs < idleMs) {
          this.waitTimer = setTimeout(() => this.pump(), Math.max(1, Math.ceil(idleMs - quietMs)));
          return;
        }
      }
      // A live head waits max_wait_ms for live peers as if no job were queued (background rows
      // would make every batch "full" at once and send the live requests out one by one).
      const rows = head.req.background ? this.queuedRows : this.queuedLiveRows;
      const waitedMs = Number(process.hrtime.bigint() - head.enqueuedNs) / 1e6;
      if (rows < maxRows && waitedMs < this.config.maxWaitMs) {
        this.waitTimer = setTimeout(() => this.pump(), Math.max(1, Math.ceil(this.config.maxWaitMs - waitedMs)));
        return;
      }
      this.dispatch(copy, this.take(head.key, maxRows));
    }
  }

  protected prepare(_req: InferRequest): undefined {
    return undefined;
  }

  protected enqueue(p: Req): void {
    if (!p.req.background) this.lastLiveNs = p.enqueuedNs;
    const prio = p.req.priority && p.req.priority > 0 ? p.req.priority : 0;
    // Background queues have negative keys (-1 - priority): after every live one, whatever its priority.
    const key = p.req.background ? -1 - prio : prio;
    let q = this.queues.get(key);
    if (!q) {
      q = new Fifo<Req>();
      this.queues.set(key, q);
      this.priorities = [...this.queues.keys()].sort(byPriority);
    }
    q.push(p);
  }

  /** The oldest live request of the highest priority; drops settled ones from the front. */
  private head(): Req | undefined {
    for (const prio of this.priorities) {
      const q = this.queues.get(prio)!;
      while (q.length > 0 && q.peek()!.state !== 'queued') q.shift();
      if (q.length > 0) return q.peek();
    }
    return undefined;
  }

  /** Takes queued requests with the same shape key, in priority then arrival order, up to maxRows rows. */
  private take(key: string, maxRows: number): Req[] {
    const batch: Req[] = [];
    let rows = 0;
    for (const prio of this.priorities) {
      if (rows >= maxRows) break;
      const q = this.queues.get(prio)!;
      const taken = q.extract((p) => {
        if (rows >= maxRows) return 'stop';
        if (p.state !== 'queued') return true; // settled: drop it from the queue
        if (p.key !== key || rows + p.rows > maxRows) return false;
        rows += p.rows;
        return true;
      });
      for (const p of taken) if (p.state === 'queued') batch.push(p);
    }
    return batch;
  }
}
