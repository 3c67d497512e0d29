/**
 * Reports each model's job backlog (jobs waiting in its streams, all
 * priorities) every interval, for the autoscaler: a model's desired copies
 * count its backlog as well as its live queue, and a backlog at zero copies
 * starts one (app/server.ts hands it to TaskManager.setBacklog).
 */
import type { Logger } from 'pino';
import type { JobsApi } from './types';

export type BacklogSink = (model: string, waiting: number) => void;

export class BacklogReporter {
  private timer?: NodeJS.Timeout;
  private busy = false;
  private readonly last = new Map<string, number>();

  constructor(private readonly jobs: Pick<JobsApi, 'queue'>, private readonly models: () => string[],
    private readonly sink: BacklogSink, private readonly intervalMs: number, private readonly log: Logger) {}

  start(): void {
    this.timer = setInterval(() => void this.report(), this.intervalMs);
    this.timer.unref();
    void this.report();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** One round: the waiting count of every model (a Redis error keeps the last figures). */
  async report(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      for (const model of this.models()) {
        const q = await this.jobs.queue(model);
        const waiting = q.depth.high + q.depth.normal + q.depth.low;
        if (this.last.get(model) !== waiting) this.log.debug({ model, waiting }, 'job backlog');
        this.last.set(model, waiting);
        this.sink(model, waiting);
      }
    } catch (err) {
      this.log.warn({ err }, 'reading the job backlog failed');
    } finally {
      this.busy = false;
    }
  }
}
