/**
 * Answers of one sequence leave a streaming bridge (gRPC ModelStreamInfer,
 * ZeroMQ) in the order its requests arrived. The broker already runs a
 * sequence's requests one after another, so successes come in order; this
 * keeps a request refused at once (say, a bad tensor) from overtaking the
 * answers of its sequence's earlier requests. Requests outside sequences
 * are answered as soon as they complete.
 */
export class SequenceOrder {
  private readonly tails = new Map<string, Promise<void>>();

  /** Calls `deliver` with the outcome of `work`, after every earlier delivery of the same key. */
  run<T>(key: string | undefined, work: Promise<T>, deliver: (value: T | undefined, err: unknown) => void): Promise<void> {
    const settled = work.then(
      (v) => () => deliver(v, undefined),
      (e: unknown) => () => deliver(undefined, e),
    );
    if (key === undefined) return settled.then((fn) => fn());
    const prev = this.tails.get(key); // never rejects
    const done = (prev ? prev.then(() => settled) : settled).then((fn) => fn());
    const tail = done.catch(() => undefined);
    this.tails.set(key, tail);
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    return done;
  }
}
