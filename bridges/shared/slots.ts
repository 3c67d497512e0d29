/**
 * A counting semaphore: at most `size` holders at once, the others wait in
 * arrival order. Used to bound CPU- and memory-heavy work (image decodes) so
 * it cannot take every libuv thread.
 */
export class Slots {
  private used = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(readonly size: number) {}

  /** Runs `fn` in a slot, waiting for one when all are taken. */
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.used >= this.size) await new Promise<void>((resolve) => this.waiting.push(resolve));
    else this.used++;
    try {
      return await fn();
    } finally {
      const next = this.waiting.shift();
      if (next) next(); // the slot passes straight to the next waiter
      else this.used--;
    }
  }

  /** Holders and waiters now (for tests and metrics). */
  get load(): { used: number; waiting: number } {
    return { used: this.used, waiting: this.waiting.length };
  }
}
