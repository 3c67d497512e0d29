/**
 * Reusable buffers for big request bodies (64 KiB … 1 MiB by Content-Length).
 * A fresh 150 KB Buffer per request is external memory V8 must account for,
 * and at thousands per second it starts a full mark-compact every few dozen
 * requests (ms-long pauses at c=1, see bench/README.md). A pooled body is
 * lent, not given:
 *
 *  - the REST infer route holds one reference for the HTTP exchange, dropped
 *    when the response is closed (written, or the client went away);
 *  - it holds a second for the link, dropped when the core says the batch
 *    holding the request went to the link (InferRequest.onSent), or the
 *    request ended without one.
 *
 * Only when both are gone does the slab go back to its free list. Tensor data
 * of a binary body are views of the slab (no copy), so any view can be traced
 * back to its lease (`pooledOf`). With `poison` (TB_BODY_POOL_POISON=1, the
 * tests) a released slab is filled with 0xDB first, so a reader that kept a
 * view past its release sees garbage instead of another request's bytes.
 *
 * Why the answer being written suffices for correctness even though libzmq
 * may still hold a sent frame (zero-copy above 128 bytes): a request is
 * answered with outputs only after its own RESULT, and a RESULT means the copy
 * received the whole batch; an error answer (deadline, cancel) may come while
 * a batch is still queued in libzmq, but that batch's RESULT is then ignored.
 */

export interface BodyPoolOptions {
  /** Smallest body taken from the pool (smaller ones are cheap to allocate). Default 64 KiB. */
  minBytes?: number;
  /** Largest body taken from the pool. Default 1 MiB. */
  maxBytes?: number;
  /** Free slabs kept per size class. Default 16. */
  maxFreePerClass?: number;
  /** Fill released slabs with 0xDB (debugging and tests). */
  poison?: boolean;
}

export const POISON_BYTE = 0xdb;

const leases = new WeakMap<ArrayBufferLike, PooledBody>();

/** One lent slab: `bytes` is a view of exactly the body's length. */
export class PooledBody {
  private refs = 1;

  constructor(
    readonly bytes: Buffer,
    private readonly slab: Buffer,
    private readonly pool: BodyPool,
  ) {
    leases.set(slab.buffer, this);
  }

  get references(): number {
    return this.refs;
  }

  retain(): void {
    if (this.refs <= 0) throw new Error('a released body buffer was retained again');
    this.refs++;
  }

  release(): void {
    if (this.refs <= 0) throw new Error('a body buffer was released more often than retained');
    if (--this.refs > 0) return;
    leases.delete(this.slab.buffer);
    this.pool.giveBack(this.slab);
  }

  /** A function that releases one reference the first time it is called, and does nothing after. */
  releaser(): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.release();
    };
  }
}

/** The live lease `view` (a body or any view of it) belongs to, if it is a pooled body. */
export function pooledOf(view: Uint8Array): PooledBody | undefined {
  return leases.get(view.buffer);
}

export class BodyPool {
  readonly minBytes: number;
  readonly maxBytes: number;
  readonly poison: boolean;
  private readonly maxFree: number;
  /** Size class (a power of two) → free slabs. */
  private readonly free = new Map<number, Buffer[]>();
  /** Slabs lent and given back so far (for tests and the bench). */
  taken = 0;
  reused = 0;

  constructor(o: BodyPoolOptions = {}) {
    this.minBytes = o.minBytes ?? 64 * 1024;
    this.maxBytes = o.maxBytes ?? 1024 * 1024;
    this.maxFree = o.maxFreePerClass ?? 16;
    this.poison = o.poison ?? false;
  }

  /** A lease of `length` bytes (uninitialised), or undefined when the size is not pooled. */
  take(length: number): PooledBody | undefined {
    if (length < this.minBytes || length > this.maxBytes) return undefined;
    const size = 2 ** Math.ceil(Math.log2(length));
    const slab = this.free.get(size)?.pop();
    this.taken++;
    if (slab) this.reused++;
    // allocUnsafeSlow: a slab of its own (never a slice of Node's shared pool), so its ArrayBuffer names the lease.
    const s = slab ?? Buffer.allocUnsafeSlow(size);
    return new PooledBody(s.subarray(0, length), s, this);
  }

  /** @internal called by PooledBody.release(). */
  giveBack(slab: Buffer): void {
    if (this.poison) slab.fill(POISON_BYTE);
    let list = this.free.get(slab.length);
    if (!list) this.free.set(slab.length, (list = []));
    if (list.length < this.maxFree) list.push(slab);
  }
}
