/**
 * REST video uploads: test videos made with ffmpeg (`testsrc`) are decoded by
 * the broker's ffmpeg into frames that run through the motion model as one
 * sequence; every frame's result comes back as an NDJSON line, as produced.
 */
import { execFileSync, execSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { SequenceStatus } from '../../core/sequence-scheduler';
import { getJson, modelMain, startTestBroker, waitFor, waitReady, type TestBroker } from '../helpers/broker';

const motion = (over: Record<string, unknown> = {}, env: Record<string, string> = {}) => ({
  command: ['node', modelMain('motion')],
  stateless: false,
  batch_size: 8,
  max_sequences: 2,
  sequence_idle_ms: 60_000,
  env,
  ...over,
});

const models = {
  motion: motion(),
  // One slot and 40 ms per batch: a long video takes seconds, long enough to abort mid-way.
  'motion-slow': motion({ max_sequences: 1 }, { MOTION_A_MS: '40' }),
  identity: { command: ['node', modelMain('identity')], batch_size: 4 },
};

interface Line {
  frame?: number;
  outputs?: { name: string; data: unknown[] }[];
  end?: boolean;
  frames?: number;
  error?: string;
  code?: string;
  width?: number;
  height?: number;
}

function parse(text: string): Line[] {
  return text.trim().split('\n').map((l) => JSON.parse(l) as Line);
}

const out = (l: Line, name: string) => (l.outputs!.find((o) => o.name === name)!.data as unknown[]).flat(2)[0];

describe('REST video uploads', () => {
  let b: TestBroker;
  let dir: string;
  const video = (name: string) => readFileSync(path.join(dir, name));

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'tb-video-'));
    const src = ['-hide_banner', '-loglevel', 'error', '-f', 'lavfi', '-i', 'testsrc=duration=2:size=160x120:rate=25'];
    execFileSync('ffmpeg', [...src, '-pix_fmt', 'yuv420p', path.join(dir, 'test.mp4')]); // index (moov) at the end
    execFileSync('ffmpeg', [...src, '-pix_fmt', 'yuv420p', '-movflags', '+faststart', path.join(dir, 'fast.mp4')]);
    execFileSync('ffmpeg', [...src, '-c:v', 'libvpx', '-b:v', '200k', path.join(dir, 'test.webm')]);
    execFileSync('ffmpeg', ['-hide_banner', '-loglevel', 'error', '-f', 'lavfi', '-i', 'testsrc=duration=20:size=160x120:rate=25',
      '-c:v', 'libvpx', '-b:v', '200k', path.join(dir, 'long.webm')]);
    b = await startTestBroker({ models });
    await Promise.all(Object.keys(models).map((m) => waitReady(b, m)));
  });
  afterAll(async () => {
    await b?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const post = (model: string, body: RequestInit['body'], type: string, query = '', init: RequestInit = {}) =>
    fetch(`${b.url}/v2/models/${model}/infer${query}`, { method: 'POST', headers: { 'content-type': type }, body, ...init, duplex: 'half' } as RequestInit);

  function expectAllFrames(lines: Line[], n: number): void {
    const frames = lines.filter((l) => l.frame !== undefined);
    expect(frames.map((l) => l.frame)).toEqual(Array.from({ length: n }, (_, i) => i));
    expect(frames.map((l) => out(l, 'FRAME_INDEX'))).toEqual(Array.from({ length: n }, (_, i) => i));
    expect(out(frames[0], 'MOTION')).toBe(0);
    expect(frames.slice(1).every((l) => (out(l, 'MOTION') as number) > 0)).toBe(true); // testsrc moves every frame
    expect(new Set(frames.map((l) => out(l, 'SLOT'))).size).toBe(1);
    expect(lines[lines.length - 1]).toMatchObject({ end: true, frames: n });
  }

  test('a 2-second MP4 (index at the end: spooled to a file) gives all 50 frame results as NDJSON', async () => {
    const before = (await getJson(`${b.url}/v2/models/motion/sequences`)) as SequenceStatus;
    const res = await post('motion', video('test.mp4'), 'video/mp4');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('application/x-ndjson');
    const lines = parse(await res.text());
    expectAllFrames(lines, 50);
    expect(lines[lines.length - 1]).toMatchObject({ width: 160, height: 120 });
    const after = (await getJson(`${b.url}/v2/models/motion/sequences`)) as SequenceStatus;
    expect(after.ended.end).toBe(before.ended.end + 1); // start on the first frame, end on the last
    expect(after.active).toBe(0);
  });

  test('a streamed WebM body and a fast-start MP4 are decoded as they arrive', async () => {
    const bytes = video('test.webm');
    const chunks = new ReadableStream<Uint8Array>({
      start(c) {
        for (let i = 0; i < bytes.length; i += 1000) c.enqueue(bytes.subarray(i, i + 1000));
        c.close();
      },
    });
    expectAllFrames(parse(await (await post('motion', chunks, 'video/webm')).text()), 50);
    expectAllFrames(parse(await (await post('motion', video('fast.mp4'), 'video/mp4')).text()), 50);
  });

  test('?fps= samples frames; ?width=&height= scale them', async () => {
    const lines = parse(await (await post('motion', video('test.webm'), 'video/webm', '?fps=10&width=80&height=60')).text());
    expectAllFrames(lines, 20);
    expect(lines[lines.length - 1]).toMatchObject({ width: 80, height: 60 });
  });

  test('multipart with one video part', async () => {
    const form = new FormData();
    form.append('video', new Blob([video('test.webm')], { type: 'video/webm' }), 'clip.webm');
    const res = await fetch(`${b.url}/v2/models/motion/infer`, { method: 'POST', body: form });
    expect(res.status).toBe(200);
    expectAllFrames(parse(await res.text()), 50);
  });

  test('a corrupt video is a 400 before any line; a stateless model a 400; video/ogg a 415', async () => {
    const junk = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919) & 255));
    const bad = await post('motion', junk, 'video/webm');
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: string }).error).toMatch(/could not be decoded/);
    const stateless = await post('identity', video('test.webm'), 'video/webm');
    expect(stateless.status).toBe(400);
    expect(((await stateless.json()) as { error: string }).error).toMatch(/stateless/);
    expect((await post('motion', video('test.webm'), 'video/ogg')).status).toBe(415);
  });

  test('results stream back as produced; aborting the upload kills ffmpeg, cancels the sequence and frees its slot', async () => {
    const before = (await getJson(`${b.url}/v2/models/motion-slow/sequences`)) as SequenceStatus;
    const ac = new AbortController();
    const res = await post('motion-slow', video('long.webm'), 'video/webm', '', { signal: ac.signal });
    expect(res.status).toBe(200);
    // Read the first three lines of a 500-frame (≥ 20 s) answer, then go away.
    const reader = res.body!.getReader();
    let text = '';
    while (text.split('\n').length <= 3) text += new TextDecoder().decode((await reader.read()).value);
    expect(parse(text.split('\n').slice(0, 3).join('\n')).map((l) => l.frame)).toEqual([0, 1, 2]);
    ac.abort();
    await waitFor(async () => ((await getJson(`${b.url}/v2/models/motion-slow/sequences`)) as SequenceStatus).ended.cancelled === before.ended.cancelled + 1,
      10_000, 'the sequence cancelled');
    // No ffmpeg of ours is left.
    await waitFor(() => {
      try {
        return execSync(`pgrep -P ${process.pid} -x ffmpeg || true`).toString().trim() === '';
      } catch {
        return true;
      }
    }, 10_000, 'ffmpeg killed');
    // The only slot is free at once (no idle timeout): a new video gets it and runs to its end.
    expectAllFrames(parse(await (await post('motion-slow', video('test.webm'), 'video/webm', '?fps=5')).text()), 10);
  });
});
