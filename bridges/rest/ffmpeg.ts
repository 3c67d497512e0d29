/**
 * Video decoding with Debian's ffmpeg as a child process: the upload is piped
 * into `ffmpeg -i pipe:0 … -f rawvideo -pix_fmt rgb24 pipe:1` and RGB frames
 * are read back one at a time. Memory stays bounded: stdout is read only as
 * fast as the frames are consumed, so ffmpeg (and, through the pipe, the
 * upload) waits for the model. An MP4/MOV whose index (`moov`) comes after
 * its media data cannot be decoded from a pipe: such a file is first spooled
 * to a temporary file (disk, not memory) and decoded from there.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { BrokerError } from '../../core/errors';

export interface DecodeOptions {
  /** Frames per second to sample (`-vf fps=N`); undefined = every frame. */
  fps?: number;
  /** Scale to this size; one side alone keeps the aspect ratio. */
  width?: number;
  height?: number;
  /** Largest upload in bytes (413 beyond). */
  maxBytes: number;
  /** Largest frame in bytes (width × height × 3). */
  maxFrameBytes: number;
  /** The ffmpeg binary (default env TB_FFMPEG, else `ffmpeg` on the PATH). */
  ffmpeg?: string;
  /** Aborting kills ffmpeg and stops reading. */
  signal: AbortSignal;
  /** MP4 / QuickTime: may need a seekable file. */
  container: 'mp4' | 'other';
}

export interface DecodedVideo {
  width: number;
  height: number;
  /** RGB frames, height × width × 3 bytes each, in order. Ends when the video ends; throws on a decode error. */
  frames: AsyncIterable<Buffer>;
}

const invalid = (msg: string) => new BrokerError('INVALID_ARGUMENT', msg);

/** Counts bytes through the pipe; fails beyond `max` (PAYLOAD_TOO_LARGE, the words of a 413). */
export function limiter(max: number): Transform {
  let total = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      total += chunk.length;
      if (total > max) done(new BrokerError('PAYLOAD_TOO_LARGE', `the video is larger than the limit of ${max} bytes`));
      else done(null, chunk);
    },
  });
}

/**
 * Whether an MP4/MOV whose first bytes are `head` needs seeking: true when
 * the media data (`mdat`) comes before the index (`moov`), false when the
 * index (or a fragment, `moof`) comes first, undefined when more bytes are needed.
 */
export function mp4NeedsSeek(head: Buffer): boolean | undefined {
  let pos = 0;
  while (pos + 8 <= head.length) {
    let size = head.readUInt32BE(pos);
    const type = head.toString('latin1', pos + 4, pos + 8);
    if (type === 'moov' || type === 'moof') return false;
    if (type === 'mdat') return true;
    if (size === 1) {
      if (pos + 16 > head.length) return undefined;
      size = Number(head.readBigUInt64BE(pos + 8));
    }
    if (size < 8) return true; // 0 = "to the end of the file", or broken: let a file decide
    pos += size;
  }
  return undefined;
}

/** Reads the first bytes of `input` (up to 1 MiB) to decide; returns them with the rest of the stream. */
async function peekMp4(input: Readable): Promise<{ seek: boolean; head: Buffer }> {
  const chunks: Buffer[] = [];
  let total = 0;
  for (;;) {
    const chunk = input.read() as Buffer | null;
    if (chunk === null) {
      if (input.readableEnded) break;
      await new Promise<void>((resolve, reject) => {
        const done = () => { input.off('readable', done); input.off('end', done); input.off('error', fail); resolve(); };
        const fail = (e: Error) => { input.off('readable', done); input.off('end', done); reject(e); };
        input.once('readable', done);
        input.once('end', done);
        input.once('error', fail);
      });
      continue;
    }
    chunks.push(chunk);
    total += chunk.length;
    const head = Buffer.concat(chunks);
    const verdict = mp4NeedsSeek(head);
    if (verdict !== undefined) return { seek: verdict, head };
    if (total >= 1 << 20) return { seek: true, head };
  }
  return { seek: true, head: Buffer.concat(chunks) };
}

/** Keeps the last lines ffmpeg wrote (bounded) and finds the output frame size in them. */
class StderrTail {
  private text = '';
  size?: { width: number; height: number };
  push(chunk: Buffer): void {
    this.text = (this.text + chunk.toString('utf8')).slice(-16_384);
    if (!this.size) {
      const out = this.text.indexOf('Output #0');
      const m = out >= 0 ? /Video: rawvideo[^\n]*?, (\d+)x(\d+)/.exec(this.text.slice(out)) : null;
      if (m) this.size = { width: Number(m[1]), height: Number(m[2]) };
    }
  }
  /** The most telling line: the last one that is not progress or a blank. */
  lastError(): string {
    const lines = this.text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('frame=') && !l.startsWith('video:'));
    const bad = lines.filter((l) => /invalid|error|could not|cannot|failed|partial|not found/i.test(l) && !/^Conversion failed/.test(l));
    return (bad[0] ?? lines[lines.length - 1] ?? 'no output').slice(0, 300);
  }
}

function ffmpegArgs(input: string, o: DecodeOptions): string[] {
  const filters: string[] = [];
  if (o.fps !== undefined) filters.push(`fps=${o.fps}`);
  if (o.width !== undefined || o.height !== undefined) filters.push(`scale=${o.width ?? -2}:${o.height ?? -2}`);
  return [
    '-hide_banner', '-nostats', '-loglevel', 'info',
    '-i', input,
    '-map', '0:v:0', '-an', '-sn', '-dn',
    ...(filters.length > 0 ? ['-vf', filters.join(',')] : []),
    '-f', 'rawvideo', '-pix_fmt', 'rgb24', 'pipe:1',
  ];
}

/**
 * Starts decoding `input` (the upload). Resolves once ffmpeg reported the
 * frame size; rejects with INVALID_ARGUMENT when the video cannot be decoded,
 * PAYLOAD_TOO_LARGE past the limits, UNAVAILABLE when ffmpeg is missing.
 */
export async function decodeVideo(input: Readable, o: DecodeOptions): Promise<DecodedVideo> {
  let source = 'pipe:0';
  let spoolDir: string | undefined;
  let head: Buffer | undefined;
  const cleanup = () => {
    if (spoolDir) void rm(spoolDir, { recursive: true, force: true });
    spoolDir = undefined;
  };
  if (o.container === 'mp4') {
    const peek = await peekMp4(input);
    head = peek.head;
    if (peek.seek) {
      spoolDir = await mkdtemp(path.join(os.tmpdir(), 'tb-video-'));
      source = path.join(spoolDir, 'upload.mp4');
      const file = createWriteStream(source);
      file.write(head);
      try {
        await pipeline(input, limiter(o.maxBytes - head.length), file, { signal: o.signal });
      } catch (e) {
        cleanup();
        throw e instanceof BrokerError ? e : new BrokerError('CANCELLED', `the upload ended early: ${(e as Error).message}`);
      }
      head = undefined;
    }
  }

  const proc: ChildProcessWithoutNullStreams = spawn(o.ffmpeg ?? process.env.TB_FFMPEG ?? 'ffmpeg', ffmpegArgs(source, o), { stdio: ['pipe', 'pipe', 'pipe'] });
  const tail = new StderrTail();
  let failure: BrokerError | undefined;
  const kill = () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
  };
  o.signal.addEventListener('abort', kill, { once: true });
  const exited = new Promise<number | null>((resolve) => {
    proc.once('close', (code) => {
      o.signal.removeEventListener('abort', kill);
      cleanup();
      resolve(code);
    });
  });
  proc.once('error', (e: NodeJS.ErrnoException) => {
    failure = e.code === 'ENOENT'
      ? new BrokerError('UNAVAILABLE', 'video uploads need ffmpeg, which is not installed on the broker host')
      : new BrokerError('INTERNAL', `ffmpeg could not be started: ${e.message}`);
  });
  proc.stdin.on('error', () => undefined); // EPIPE when ffmpeg stops reading (corrupt input, or killed)
  if (source === 'pipe:0') {
    const lim = limiter(o.maxBytes - (head?.length ?? 0));
    lim.on('error', (e) => {
      failure ??= e instanceof BrokerError ? e : invalid(e.message);
      kill();
    });
    if (head) proc.stdin.write(head);
    input.on('error', () => kill());
    input.pipe(lim).pipe(proc.stdin);
  } else proc.stdin.end();

  // The frame size, from ffmpeg's report on its output stream (written before the first frame).
  const size = await new Promise<{ width: number; height: number } | undefined>((resolve) => {
    proc.stderr.on('data', (chunk: Buffer) => {
      tail.push(chunk);
      if (tail.size) resolve(tail.size);
    });
    void exited.then(() => resolve(tail.size));
  });
  const decodeError = () => failure ?? (o.signal.aborted
    ? new BrokerError('CANCELLED', 'the client went away')
    : invalid(`the video could not be decoded: ${tail.lastError()}`));
  if (!size) {
    await exited;
    throw decodeError();
  }
  const frameBytes = size.width * size.height * 3;
  if (frameBytes > o.maxFrameBytes) {
    kill();
    throw new BrokerError('PAYLOAD_TOO_LARGE', `frames of ${size.width}x${size.height} are larger than the limit of ${o.maxFrameBytes} bytes (scale them with ?width= / ?height=)`);
  }

  async function* frames(): AsyncGenerator<Buffer> {
    let frame = Buffer.allocUnsafe(frameBytes);
    let filled = 0;
    try {
      for await (const chunk of proc.stdout as AsyncIterable<Buffer>) {
        let pos = 0;
        while (pos < chunk.length) {
          const n = Math.min(frameBytes - filled, chunk.length - pos);
          chunk.copy(frame, filled, pos, pos + n);
          filled += n;
          pos += n;
          if (filled === frameBytes) {
            yield frame;
            frame = Buffer.allocUnsafe(frameBytes);
            filled = 0;
          }
        }
      }
      const code = await exited;
      if (code !== 0 || failure) throw decodeError();
    } finally {
      kill();
    }
  }
  return { ...size, frames: frames() };
}
