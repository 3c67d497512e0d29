/**
 * Status changes of jobs, as they happen: every state change script publishes
 * '<id> <status>' on the '<base>events' channel (scripts.ts), so a watcher on
 * any broker sharing the Redis sees changes made by any other. One subscriber
 * connection per process, opened on the first watch; each watch then re-reads
 * the job, so a message lost across a reconnect costs latency only (a watch
 * also re-reads every `recheckMs`).
 */
import Redis from 'ioredis';
import type { Logger } from 'pino';
import { BrokerError } from '../core/errors';
import { FINAL_STATUSES, type JobView } from './types';

const SUBSCRIBE_TIMEOUT_MS = 5000;

export class JobEvents {
  private sub?: Redis;
  private ready?: Promise<void>;
  private closed = false;
  private readonly listeners = new Map<string, Set<(status: string) => void>>();

  constructor(
    private readonly redisUrl: string,
    private readonly channel: string,
    private readonly log: Logger,
    private readonly recheckMs = 5000,
  ) {}

  private connect(): Promise<void> {
    if (this.ready) return this.ready;
    const sub = (this.sub = new Redis(this.redisUrl, { maxRetriesPerRequest: null }));
    sub.on('error', (err) => this.log.warn({ err }, 'job events: redis connection error'));
    sub.on('message', (_ch: string, msg: string) => {
      const sp = msg.indexOf(' ');
      const id = msg.slice(0, sp);
      const status = msg.slice(sp + 1);
      for (const wake of this.listeners.get(id) ?? []) wake(status);
    });
    // After a reconnect ioredis subscribes again; the watchers re-read on their own timer.
    this.ready = sub.subscribe(this.channel).then(() => undefined);
    this.ready.catch((err: unknown) => this.log.warn({ err }, 'job events: subscribe failed'));
    return this.ready;
  }

  /**
   * The job's view now, then again each time its status or attempts change;
   * ends after a final status (or when `signal` aborts). `read` throws for an
   * unknown job (the first read) as the service's get() does.
   */
  async *watch(id: string, read: (id: string) => Promise<JobView>, signal?: AbortSignal): AsyncGenerator<JobView> {
    let wake: (() => void) | undefined;
    let changed = false;
    const poke = () => {
      changed = true;
      wake?.();
    };
    let set = this.listeners.get(id);
    if (!set) this.listeners.set(id, (set = new Set()));
    set.add(poke);
    const onAbort = () => wake?.();
    signal?.addEventListener('abort', onAbort);
    try {
      await this.subscribed(); // subscribed before the first read: no change falls between the two
      let last = '';
      for (;;) {
        changed = false;
        const v = await read(id);
        const key = `${v.status}/${v.attempts}`;
        if (key !== last) {
          last = key;
          yield v;
        }
        if (FINAL_STATUSES.has(v.status) || signal?.aborted || this.closed) return;
        if (!changed) {
          await new Promise<void>((resolve) => {
            const timer = setTimeout(resolve, this.recheckMs);
            wake = () => {
              clearTimeout(timer);
              resolve();
            };
          });
          wake = undefined;
        }
        if (signal?.aborted || this.closed) return;
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
      set.delete(poke);
      if (set.size === 0) this.listeners.delete(id);
    }
  }

  /**
   * Calls `fn` with the new status each time the job's status changes, until
   * the returned function is called. Best effort (nothing is re-read): for a
   * worker, which also checks on its heartbeat, to hear of a cancel at once.
   */
  on(id: string, fn: (status: string) => void): () => void {
    if (this.closed) return () => undefined;
    void this.connect().catch(() => undefined); // reported by connect()
    const set = this.listeners.get(id) ?? new Set();
    this.listeners.set(id, set);
    set.add(fn);
    return () => {
      set.delete(fn);
      if (set.size === 0 && this.listeners.get(id) === set) this.listeners.delete(id);
    };
  }

  /** The subscription, or UNAVAILABLE when Redis does not confirm it in time (a watch must answer). */
  private async subscribed(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([this.connect(), new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new BrokerError('UNAVAILABLE', 'job events are not available: Redis does not answer', { retryAfterMs: 1000 })), SUBSCRIBE_TIMEOUT_MS);
      })]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Ends every watch (their streams close without a final status: the broker is stopping). */
  close(): void {
    this.closed = true;
    for (const set of this.listeners.values()) for (const wake of set) wake('');
    this.sub?.disconnect();
  }
}
