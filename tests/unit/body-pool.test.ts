/** BodyPool (bridges/rest/body-pool.ts): sizes, reference counts, reuse only after the last release, poison. */
import { BodyPool, POISON_BYTE, pooledOf } from '../../bridges/rest/body-pool';

test('bodies outside the pooled sizes are not lent', () => {
  const pool = new BodyPool({ minBytes: 1024, maxBytes: 4096 });
  expect(pool.take(1023)).toBeUndefined();
  expect(pool.take(4097)).toBeUndefined();
  expect(pool.take(1024)?.bytes.length).toBe(1024);
});

test('a slab goes back only when every reference is released, and is then lent again', () => {
  const pool = new BodyPool({ minBytes: 16, maxBytes: 1 << 20, poison: true });
  const a = pool.take(1000)!;
  a.bytes.fill(7);
  const view = a.bytes.subarray(10, 20);
  expect(pooledOf(view)).toBe(a); // any view leads back to its lease
  a.retain(); // the link's reference
  a.release(); // the HTTP exchange's
  expect(pool.take(1000)!.bytes.buffer).not.toBe(a.bytes.buffer); // still lent: a new slab
  expect(view[0]).toBe(7);
  a.release(); // the link's: now free, and poisoned
  expect(pooledOf(view)).toBeUndefined();
  expect(view.every((x) => x === POISON_BYTE)).toBe(true);
  const b = pool.take(900)!; // same size class (1024)
  expect(b.bytes.buffer).toBe(a.bytes.buffer);
  expect(pool.reused).toBe(1);
});

test('releasing more often than retained, or retaining a released body, throws; a releaser releases once', () => {
  const pool = new BodyPool({ minBytes: 16 });
  const a = pool.take(100)!;
  a.retain();
  const r = a.releaser();
  r();
  r();
  expect(a.references).toBe(1);
  a.release();
  expect(() => a.release()).toThrow(/more often/);
  expect(() => a.retain()).toThrow(/released/);
});
