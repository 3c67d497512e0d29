/**
 * Where inputs and results too large for Redis go. The interface is small on
 * purpose (put/get/delete/sweep by name, and the streamed put/get of video
 * uploads) so an object store can implement it; FolderBlobStore keeps one
 * file per blob in a local folder.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

export interface BlobStore {
  put(name: string, data: Buffer): Promise<void>;
  /** undefined when there is no such blob (dropped or expired). */
  get(name: string): Promise<Buffer | undefined>;
  delete(name: string): Promise<void>;
  /**
   * Writes a stream as it arrives (never held whole in memory); returns its
   * size. When the stream fails (too large, the client went away) nothing is
   * left behind and its error is thrown.
   */
  putStream(name: string, data: Readable): Promise<number>;
  /** The blob as a stream; undefined when there is no such blob. */
  getStream(name: string): Promise<Readable | undefined>;
  /** Deletes blobs older than `ageMs`; returns how many. A safety net behind the per-job deletes. */
  sweep(ageMs: number): Promise<number>;
}

const NAME = /^[A-Za-z0-9._-]{1,200}$/;

export class FolderBlobStore implements BlobStore {
  constructor(private readonly dir: string) {}

  private file(name: string): string {
    if (!NAME.test(name) || name.startsWith('.')) throw new Error(`invalid blob name '${name}'`);
    return path.join(this.dir, name);
  }

  async put(name: string, data: Buffer): Promise<void> {
    const file = this.file(name);
    await mkdir(this.dir, { recursive: true });
    // Write then rename: a reader never sees half a blob, even after a crash.
    const tmp = path.join(this.dir, `.tmp-${randomBytes(6).toString('hex')}`);
    await writeFile(tmp, data);
    await rename(tmp, file);
  }

  async putStream(name: string, data: Readable): Promise<number> {
    // An error before the pipeline below is attached is kept in the stream's state (the pipeline throws it), not unhandled.
    const ignore = () => undefined;
    data.on('error', ignore);
    try {
      const file = this.file(name);
      await mkdir(this.dir, { recursive: true });
      const tmp = path.join(this.dir, `.tmp-${randomBytes(6).toString('hex')}`);
      const out = createWriteStream(tmp);
      try {
        await pipeline(data, out);
        await rename(tmp, file);
      } catch (e) {
        await rm(tmp, { force: true });
        throw e;
      }
      return out.bytesWritten;
    } finally {
      data.off('error', ignore);
    }
  }

  async getStream(name: string): Promise<Readable | undefined> {
    const file = this.file(name);
    // Opened before it is handed out, so a missing blob is undefined rather than a stream error later.
    const stream = createReadStream(file);
    return new Promise((resolve, reject) => {
      stream.once('open', () => resolve(stream));
      stream.once('error', (e: NodeJS.ErrnoException) => (e.code === 'ENOENT' ? resolve(undefined) : reject(e)));
    });
  }

  async get(name: string): Promise<Buffer | undefined> {
    try {
      return await readFile(this.file(name));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
  }

  async delete(name: string): Promise<void> {
    await rm(this.file(name), { force: true });
  }

  async sweep(ageMs: number): Promise<number> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return 0;
      throw e;
    }
    const before = Date.now() - ageMs;
    let n = 0;
    for (const name of names) {
      const file = path.join(this.dir, name);
      const s = await stat(file).catch(() => undefined);
      if (s && s.mtimeMs < before) {
        await rm(file, { force: true });
        n++;
      }
    }
    return n;
  }
}
