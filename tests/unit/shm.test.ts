/** The shared-memory region registry on its own, over files in a temp folder standing in for /dev/shm. */
import { chmod, mkdtemp, rm, symlink, writeFile, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { SharedMemoryRegistry, shmRef, writtenTo } from '../../bridges/shared/shm';

let dir: string;
let shm: SharedMemoryRegistry;

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'tb-shm-unit-'));
  await writeFile(path.join(dir, 'obj'), Buffer.from(Array.from({ length: 64 }, (_, i) => i)));
  shm = new SharedMemoryRegistry({ dir, maxRegions: 3 });
});
afterEach(async () => {
  await shm.close();
  await rm(dir, { recursive: true, force: true });
});

test('a window at an offset: reads and writes land at offset + ref offset', async () => {
  await shm.register('r', '/obj', 16, 32);
  expect([...shm.read('input X', { region: 'r', offset: 4, byteSize: 3 })]).toEqual([20, 21, 22]);
  await shm.write('output Y', { region: 'r', offset: 30, byteSize: 2 }, Buffer.from([200, 201]));
  const bytes = await readFile(path.join(dir, 'obj'));
  expect([bytes[46], bytes[47], bytes[48]]).toEqual([200, 201, 48]);
  expect(() => shm.read('input X', { region: 'r', offset: 30, byteSize: 4 })).toThrow('input X: 4 bytes at offset 30 are beyond the end of shared memory region \'r\' (32 bytes)');
  await expect(shm.write('output Y', { region: 'r', offset: 0, byteSize: 2 }, Buffer.alloc(3))).rejects.toThrow('shared_memory_byte_size 2 is too small for the 3 bytes');
});

test('two registrations of one name at once: exactly one wins', async () => {
  const results = await Promise.allSettled([shm.register('same', '/obj', 0, 8), shm.register('same', '/obj', 0, 8)]);
  expect(results.map((r) => r.status).sort()).toEqual(['fulfilled', 'rejected']);
  expect(shm.status()).toHaveLength(1);
});

test('at most maxRegions; unregistering frees a place', async () => {
  for (const n of ['a', 'b', 'c']) await shm.register(n, '/obj', 0, 8);
  await expect(shm.register('d', '/obj', 0, 8)).rejects.toThrow('too many shared memory regions (at most 3)');
  await shm.unregister('b');
  await shm.register('d', '/obj', 0, 8);
  expect(shm.status().map((r) => r.name)).toEqual(['a', 'c', 'd']);
});

test('a symbolic link is refused; a read-only object registers and refuses writes', async () => {
  await symlink(path.join(dir, 'obj'), path.join(dir, 'link'));
  await expect(shm.register('l', '/link', 0, 8)).rejects.toThrow('the key is a symbolic link');
  if (process.getuid?.() !== 0) {
    await chmod(path.join(dir, 'obj'), 0o444);
    await shm.register('ro', '/obj', 0, 8);
    await expect(shm.write('output Y', { region: 'ro', offset: 0, byteSize: 8 }, Buffer.alloc(8))).rejects.toThrow('read-only for the broker');
  }
});

test('keys and parameters', async () => {
  for (const key of ['', '/', '/..', '..', '/a/b', 'a\0b']) await expect(shm.register('k', key, 0, 1)).rejects.toThrow('is not a POSIX shared memory name');
  await expect(shm.register('', '/obj', 0, 1)).rejects.toThrow('needs a name');
  await expect(shm.register('n', '/obj', -1, 1)).rejects.toThrow('offset must be a non-negative integer');
  await expect(shm.register('n', '/obj', 0, 1.5)).rejects.toThrow('byte_size must be a non-negative integer');
  expect(shmRef("input 'A'", {})).toBeUndefined();
  expect(shmRef("input 'A'", { shared_memory_region: 'r', shared_memory_byte_size: 8n })).toEqual({ region: 'r', byteSize: 8, offset: 0 });
  expect(() => shmRef("input 'A'", { shared_memory_offset: 4 })).toThrow("input 'A': shared_memory_byte_size / shared_memory_offset need a shared_memory_region");
});

test('written outputs are marked with where they went, and carry no data', async () => {
  await shm.register('out', '/obj', 0, 64);
  const result = await shm.writeOutputs(
    { id: '1', model: 'm', version: '1', outputs: [{ name: 'O', datatype: 'UINT8', shape: [1, 2], data: Buffer.from([7, 8]) }, { name: 'P', datatype: 'UINT8', shape: [1, 1], data: Buffer.from([9]) }] },
    new Map([['O', { region: 'out', offset: 10, byteSize: 16 }]]),
  );
  expect(result.outputs[0].data).toHaveLength(0);
  expect(writtenTo(result.outputs[0])).toEqual({ region: 'out', offset: 10, byteSize: 2 });
  expect(writtenTo(result.outputs[1])).toBeUndefined();
  expect([...(await readFile(path.join(dir, 'obj'))).subarray(10, 12)]).toEqual([7, 8]);
});

test('an input read is checked against its shape and the read limit before anything is read', async () => {
  const small = new SharedMemoryRegistry({ dir, maxReadBytes: 16 });
  try {
    await small.register('r', '/obj', 0, 64);
    const input = (shape: number[]) => [{ name: 'X', datatype: 'INT32' as const, shape, data: Buffer.alloc(0) }];
    expect(() => small.fillInputs(input([1, 4]), new Map([['X', { region: 'r', offset: 0, byteSize: 12 }]]))).toThrow("input 'X': shared_memory_byte_size 12 does not match INT32 [1, 4] (16 bytes)");
    expect(() => small.fillInputs(input([1, 8]), new Map([['X', { region: 'r', offset: 0, byteSize: 32 }]]))).toThrow('more than the limit of 16');
    const [t] = small.fillInputs(input([1, 4]), new Map([['X', { region: 'r', offset: 0, byteSize: 16 }]]));
    expect([...t.data]).toEqual(Array.from({ length: 16 }, (_, i) => i));
  } finally {
    await small.close();
  }
});
