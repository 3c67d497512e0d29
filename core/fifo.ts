/** A FIFO with O(1) push/shift and in-place filtering, for the per-model queues. */
export class Fifo<T> {
  private items: T[] = [];
  private head = 0;

  get length(): number {
    return this.items.length - this.head;
  }

  push(item: T): void {
    this.items.push(item);
  }

  peek(): T | undefined {
    return this.head < this.items.length ? this.items[this.head] : undefined;
  }

  shift(): T | undefined {
    if (this.head >= this.items.length) return undefined;
    const item = this.items[this.head];
    this.items[this.head] = undefined as T;
    this.head++;
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return item;
  }

  /** Removes and returns the items `take` accepts, scanning from the head, until it returns 'stop'. */
  extract(take: (item: T) => boolean | 'stop'): T[] {
    const taken: T[] = [];
    const kept: T[] = [];
    let i = this.head;
    for (; i < this.items.length; i++) {
      const verdict = take(this.items[i]);
      if (verdict === 'stop') break;
      (verdict ? taken : kept).push(this.items[i]);
    }
    if (taken.length > 0) {
      this.items = kept.concat(this.items.slice(i));
      this.head = 0;
    }
    return taken;
  }

  *[Symbol.iterator](): IterableIterator<T> {
    for (let i = this.head; i < this.items.length; i++) yield this.items[i];
  }
}
