/**
 * Triton's system shared-memory extension: one registry of named regions,
 * shared by the REST and gRPC bridges (a region registered through one is
 * used through the other). A region is a window [offset, offset + byte_size)
 * of a POSIX shared memory object, the file /dev/shm/<key without its
 * leading '/'>, opened with fs when it is registered (O_NOFOLLOW; read-write,
 * or read-only when the broker may not write it) and closed when it is
 * unregistered. Inputs read from a region and outputs written into one are
 * bounds-checked against the registered window and against the file's real
 * size at that moment (a client may shrink it). No native addon: a read or
 * write is a pread/pwrite on tmpfs (reads synchronous, see read()).
 */
import { constants, fstatSync, promises as fsp, readSync } from 'node:fs';
import path from 'node:path';
import { BrokerError } from '../../core/errors';
import type { InferResult } from '../../core/types';
import { elementCount, elementSize, type Tensor } from '../../proto/tensor';

const invalid = (msg: string) => new BrokerError('INVALID_ARGUMENT', msg);

/** What both bridges answer to a CUDA shared memory registration. */
export const CUDA_NOT_SUPPORTED = 'CUDA shared memory is not supported by Tensor Broker (models run in other processes or containers, outside the client\'s CUDA context): use system shared memory';

export interface RegionStatus {
  name: string;
  key: string;
  offset: number;
  byte_size: number;
}

/** A tensor's place in a region (the `shared_memory_*` parameters of an input or output). */
export interface ShmRef {
  region: string;
  offset: number;
  byteSize: number;
}

interface Region extends RegionStatus {
  file: fsp.FileHandle;
  writable: boolean;
}

export interface SharedMemoryOptions {
  /** Where POSIX shared memory objects live (default /dev/shm). */
  dir?: string;
  /** Most regions registered at once (each holds a file descriptor); default 1024. */
  maxRegions?: number;
  /** Largest input read from a region, in bytes (the copy is held in memory); default 1 GiB. */
  maxReadBytes?: number;
}

/** A non-negative integer parameter (number, bigint or decimal string). */
function byteCount(what: string, v: unknown): number {
  const n = typeof v === 'bigint' ? Number(v) : typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) throw invalid(`${what} must be a non-negative integer (got ${JSON.stringify(String(v))})`);
  return n;
}

/**
 * The shared-memory reference of an input or output from its parameters, or
 * undefined when it names no region. Region and byte size go together, as
 * Triton requires; the offset defaults to 0.
 */
export function shmRef(what: string, params: Record<string, unknown>): ShmRef | undefined {
  const { shared_memory_region: region, shared_memory_byte_size: size, shared_memory_offset: offset } = params;
  if (region === undefined && size === undefined && offset === undefined) return undefined;
  if (typeof region !== 'string' || region === '') throw invalid(`${what}: shared_memory_byte_size / shared_memory_offset need a shared_memory_region`);
  if (size === undefined) throw invalid(`${what}: shared_memory_region '${region}' needs a shared_memory_byte_size`);
  return {
    region,
    byteSize: byteCount(`${what}: shared_memory_byte_size`, size),
    offset: offset === undefined ? 0 : byteCount(`${what}: shared_memory_offset`, offset),
  };
}

/** Region references of a request's inputs and outputs (names -> place). */
export interface ShmRefs {
  shmInputs?: Map<string, ShmRef>;
  shmOutputs?: Map<string, ShmRef>;
}

/** Outputs written into a region: the encoders send their place instead of data. */
const written = new WeakMap<Tensor, ShmRef>();

/** The region an output was written into, or undefined for an output carried in the answer. */
export function writtenTo(t: Tensor): ShmRef | undefined {
  return written.get(t);
}

export class SharedMemoryRegistry {
  private readonly regions = new Map<string, Region>();
  private readonly dir: string;
  private readonly maxRegions: number;
  private readonly maxReadBytes: number;
  /** Names being registered (the open is async): a second register of one name fails. */
  private readonly pending = new Set<string>();

  constructor(opts: SharedMemoryOptions = {}) {
    this.dir = opts.dir ?? '/dev/shm';
    this.maxRegions = opts.maxRegions ?? 1024;
    this.maxReadBytes = opts.maxReadBytes ?? 1024 ** 3;
  }

  /** The file of a POSIX shm key: one path component under the shm dir, never a way out of it. */
  private fileOf(key: string): string {
    const base = key.startsWith('/') ? key.slice(1) : key;
    if (base === '' || base === '.' || base === '..' || base.includes('/') || base.includes('\0') || base.length > 255) {
      throw invalid(`shared memory key ${JSON.stringify(key)} is not a POSIX shared memory name ("/name", no other '/')`);
    }
    return path.join(this.dir, base);
  }

  async register(name: string, key: string, offset: unknown, byteSize: unknown): Promise<void> {
    if (typeof name !== 'string' || name === '') throw invalid('a shared memory region needs a name');
    if (typeof key !== 'string') throw invalid(`shared memory region '${name}' needs a key`);
    const off = byteCount(`shared memory region '${name}': offset`, offset ?? 0);
    const size = byteCount(`shared memory region '${name}': byte_size`, byteSize);
    if (this.regions.has(name) || this.pending.has(name)) throw invalid(`shared memory region '${name}' is already registered`);
    if (this.regions.size + this.pending.size >= this.maxRegions) throw invalid(`too many shared memory regions (at most ${this.maxRegions}): unregister some first`);
    const file = this.fileOf(key);
    this.pending.add(name);
    try {
      let handle: fsp.FileHandle;
      let writable = true;
      try {
        handle = await fsp.open(file, constants.O_RDWR | constants.O_NOFOLLOW);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EACCES' && (e as NodeJS.ErrnoException).code !== 'EROFS') throw e;
        handle = await fsp.open(file, constants.O_RDONLY | constants.O_NOFOLLOW);
        writable = false;
      }
      const stat = await handle.stat();
      if (!stat.isFile() || off + size > stat.size) {
        await handle.close();
        throw invalid(stat.isFile()
          ? `shared memory region '${name}': offset ${off} + byte_size ${size} is beyond the end of '${key}' (${stat.size} bytes)`
          : `shared memory key '${key}' is not a shared memory object`);
      }
      this.regions.set(name, { name, key, offset: off, byte_size: size, file: handle, writable });
    } catch (e) {
      if (e instanceof BrokerError) throw e;
      const code = (e as NodeJS.ErrnoException).code;
      throw invalid(`unable to open shared memory region '${name}' (key '${key}'): ${code === 'ENOENT' ? 'no such shared memory object' : code === 'ELOOP' ? 'the key is a symbolic link' : (e as Error).message}`);
    } finally {
      this.pending.delete(name);
    }
  }

  /** Unregisters one region, or every region when `name` is empty or undefined. */
  async unregister(name?: string): Promise<void> {
    const names = name ? [name] : [...this.regions.keys()];
    if (name && !this.regions.has(name)) throw invalid(`shared memory region '${name}' is not registered`);
    for (const n of names) {
      const r = this.regions.get(n);
      if (!r) continue;
      this.regions.delete(n);
      await r.file.close().catch(() => undefined);
    }
  }

  /** Every region, or the one named (INVALID_ARGUMENT when it is not registered). */
  status(name?: string): RegionStatus[] {
    if (name) {
      const r = this.regions.get(name);
      if (!r) throw invalid(`shared memory region '${name}' is not registered`);
      return [this.statusOf(r)];
    }
    return [...this.regions.values()].map((r) => this.statusOf(r));
  }

  private statusOf(r: Region): RegionStatus {
    return { name: r.name, key: r.key, offset: r.offset, byte_size: r.byte_size };
  }

  /** The region and absolute file position of `ref`, checked against the window and the file's size now. */
  private locate(what: string, ref: ShmRef, length: number): { region: Region; position: number } {
    const region = this.regions.get(ref.region);
    if (!region) throw invalid(`${what}: shared memory region '${ref.region}' is not registered`);
    if (ref.offset + length > region.byte_size) {
      throw invalid(`${what}: ${length} bytes at offset ${ref.offset} are beyond the end of shared memory region '${ref.region}' (${region.byte_size} bytes)`);
    }
    const position = region.offset + ref.offset;
    const size = fstatSync(region.file.fd).size;
    if (position + length > size) throw invalid(`${what}: shared memory region '${ref.region}' has shrunk: '${region.key}' is now ${size} bytes`);
    return { region, position };
  }

  /**
   * Reads `ref.byteSize` bytes of a region (a copy: the client may change the
   * region afterwards). Synchronous on purpose: a read from tmpfs is a memory
   * copy, and the request must reach the broker in the same turn as it arrived
   * so that the requests of a sequence keep their order.
   */
  read(what: string, ref: ShmRef): Buffer {
    const { region, position } = this.locate(what, ref, ref.byteSize);
    const buf = Buffer.allocUnsafe(ref.byteSize);
    let done = 0;
    while (done < buf.length) {
      const n = readSync(region.file.fd, buf, done, buf.length - done, position + done);
      if (n === 0) throw invalid(`${what}: shared memory region '${ref.region}' ended while reading`);
      done += n;
    }
    return buf;
  }

  /** Writes `data` into a region at `ref.offset`; it must fit in `ref.byteSize`. */
  async write(what: string, ref: ShmRef, data: Buffer): Promise<void> {
    if (data.length > ref.byteSize) {
      throw invalid(`${what}: shared_memory_byte_size ${ref.byteSize} is too small for the ${data.length} bytes of the result`);
    }
    const { region, position } = this.locate(what, ref, data.length);
    if (!region.writable) throw invalid(`${what}: shared memory region '${ref.region}' is read-only for the broker`);
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await region.file.write(data, done, data.length - done, position + done);
      done += bytesWritten;
    }
  }

  /** Checks that every region named exists before the request is queued (outputs: the window only). */
  check(refs: ShmRefs): void {
    for (const [kind, map] of [['input', refs.shmInputs], ['output', refs.shmOutputs]] as const) {
      for (const [name, ref] of map ?? []) {
        const region = this.regions.get(ref.region);
        if (!region) throw invalid(`${kind} '${name}': shared memory region '${ref.region}' is not registered`);
        if (ref.offset + ref.byteSize > region.byte_size) {
          throw invalid(`${kind} '${name}': offset ${ref.offset} + byte_size ${ref.byteSize} is beyond the end of shared memory region '${ref.region}' (${region.byte_size} bytes)`);
        }
      }
    }
  }

  /**
   * The inputs with their data read from the regions they name. The size is
   * checked against the shape before anything is read (a fixed-size datatype
   * needs exactly elements × size bytes) and against maxReadBytes, so a
   * reference cannot make the broker allocate what the tensor cannot use.
   */
  fillInputs(inputs: Tensor[], refs: Map<string, ShmRef>): Tensor[] {
    for (const t of inputs) {
      const ref = refs.get(t.name);
      if (!ref) continue;
      const size = elementSize(t.datatype);
      const want = size === undefined ? undefined : elementCount(t.shape) * size;
      if (want !== undefined && ref.byteSize !== want) {
        throw invalid(`input '${t.name}': shared_memory_byte_size ${ref.byteSize} does not match ${t.datatype} [${t.shape.join(', ')}] (${want} bytes)`);
      }
      if (ref.byteSize > this.maxReadBytes) throw new BrokerError('PAYLOAD_TOO_LARGE', `input '${t.name}': ${ref.byteSize} bytes of shared memory are more than the limit of ${this.maxReadBytes}`);
    }
    return inputs.map((t) => {
      const ref = refs.get(t.name);
      return ref ? { ...t, data: this.read(`input '${t.name}'`, ref) } : t;
    });
  }

  /** Writes the outputs that name a region into it; they stay in the result, marked, with no data. */
  async writeOutputs(result: InferResult, refs: Map<string, ShmRef>): Promise<InferResult> {
    const outputs = await Promise.all(result.outputs.map(async (t) => {
      const ref = refs.get(t.name);
      if (!ref) return t;
      await this.write(`output '${t.name}'`, ref, t.data);
      const out: Tensor = { ...t, data: Buffer.alloc(0) };
      written.set(out, { ...ref, byteSize: t.data.length });
      return out;
    }));
    return { ...result, outputs };
  }

  async close(): Promise<void> {
    await this.unregister();
  }
}
