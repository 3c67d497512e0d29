/** The job service's storage pieces: the tensor codec and the folder blob store, buffers and streams (a real temp folder). */
import { mkdtemp, readdir, rm, utimes } from 'node:fs/promises';
import { Readable } from 'node:stream';
import os from 'node:os';
import path from 'node:path';
import { FolderBlobStore } from '../../jobs/blob-store';
import { decodeTensors, encodeTensors } from '../../jobs/codec';

test('tensors survive encode/decode byte for byte, including empty and BYTES tensors', () => {
  const tensors = [
    { name: 'a', datatype: 'FP32' as const, shape: [2, 2], data: Buffer.from(new Float32Array([1, 2.5, -3, 4]).buffer) },
    { name: 'empty', datatype: 'INT8' as const, shape: [0, 3], data: Buffer.alloc(0) },
    { name: 's', datatype: 'BYTES' as const, shape: [1], data: Buffer.from([2, 0, 0, 0, 104, 105]) },
  ];
  expect(decodeTensors(encodeTensors(tensors))).toEqual(tensors);
});

test('a corrupt block is an INTERNAL error, never a wrong tensor', () => {
  const buf = encodeTensors([{ name: 'a', datatype: 'UINT8', shape: [3], data: Buffer.from([1, 2, 3]) }]);
  expect(() => decodeTensors(buf.subarray(0, buf.length - 1))).toThrow(/corrupt/);
  expect(() => decodeTensors(Buffer.concat([buf, Buffer.from([0])]))).toThrow(/corrupt/);
  expect(() => decodeTensors(Buffer.alloc(2))).toThrow(/corrupt/);
});

describe('FolderBlobStore', () => {
  let dir: string;
  beforeEach(async () => { dir = await mkdtemp(path.join(os.tmpdir(), 'tb-blobs-')); });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  test('put, get, delete; a missing blob is undefined', async () => {
    const store = new FolderBlobStore(path.join(dir, 'sub'));
    expect(await store.get('x.result')).toBeUndefined();
    await store.put('x.result', Buffer.from('hello'));
    expect((await store.get('x.result'))?.toString()).toBe('hello');
    await store.delete('x.result');
    expect(await store.get('x.result')).toBeUndefined();
    await store.delete('x.result'); // deleting twice is fine
  });

  test('a streamed put is read back as a stream; a stream that fails leaves nothing behind', async () => {
    const store = new FolderBlobStore(dir);
    const chunks = Array.from({ length: 50 }, (_, i) => Buffer.alloc(1000, i));
    expect(await store.putStream('v.input', Readable.from(chunks))).toBe(50_000);
    const back: Buffer[] = [];
    for await (const c of (await store.getStream('v.input'))!) back.push(c as Buffer);
    expect(Buffer.concat(back)).toEqual(Buffer.concat(chunks));
    expect(await store.getStream('missing.input')).toBeUndefined();

    const failing = new Readable({ read() {} });
    const put = store.putStream('w.input', failing);
    failing.push(Buffer.alloc(10));
    failing.destroy(new Error('the upload ended early'));
    await expect(put).rejects.toThrow(/ended early/);
    expect(await readdir(dir)).toEqual(['v.input']); // no temporary file, no blob
  });

  test('names cannot leave the folder', async () => {
    const store = new FolderBlobStore(dir);
    await expect(store.put('../evil', Buffer.alloc(1))).rejects.toThrow(/invalid blob name/);
    await expect(store.get('a/b')).rejects.toThrow(/invalid blob name/);
  });

  test('sweep deletes only blobs older than the age', async () => {
    const store = new FolderBlobStore(dir);
    await store.put('old', Buffer.alloc(1));
    await store.put('new', Buffer.alloc(1));
    const past = new Date(Date.now() - 3600_000);
    await utimes(path.join(dir, 'old'), past, past);
    expect(await store.sweep(60_000)).toBe(1);
    expect(await store.get('old')).toBeUndefined();
    expect(await store.get('new')).toBeDefined();
  });
});
