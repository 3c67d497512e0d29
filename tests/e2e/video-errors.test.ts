/**
 * inferVideo against a fake broker, with the real ffmpeg: an error after the
 * first lines becomes an error line that ends the stream (the sequence is
 * cancelled); an error on the first frame is the request's own error; MP4
 * box peeking.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import type { BrokerApi } from '../../core/broker';
import { BrokerError } from '../../core/errors';
import type { InferRequest, InferResult } from '../../core/types';
import { mp4NeedsSeek } from '../../bridges/rest/ffmpeg';
import { inferVideo } from '../../bridges/rest/video';

function fakeBroker(failAt: number, seen: InferRequest[]): BrokerApi {
  return {
    awaitMetadata: async () => ({ name: 'm', version: '1', maxBatch: 8, inputs: [{ name: 'FRAME', datatype: 'UINT8', shape: [-1, -1, -1, 3] }], outputs: [] }),
    describe: () => ({ stateless: false }),
    infer: async (req: InferRequest): Promise<InferResult> => {
      seen.push(req);
      const frame = seen.length - 1;
      if (frame === failAt) throw new BrokerError('DEADLINE_EXCEEDED', 'deadline of 5 ms passed in the queue');
      return { id: req.id, model: 'm', version: '1', outputs: [{ name: 'N', datatype: 'INT32', shape: [1, 1], data: Buffer.from(new Int32Array([frame]).buffer) }] };
    },
  } as unknown as BrokerApi;
}

describe('inferVideo', () => {
  let dir: string;
  let webm: Buffer;
  beforeAll(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'tb-video-err-'));
    execFileSync('ffmpeg', ['-hide_banner', '-loglevel', 'error', '-f', 'lavfi', '-i', 'testsrc=duration=1:size=64x48:rate=25', '-c:v', 'libvpx', path.join(dir, 'v.webm')]);
    webm = readFileSync(path.join(dir, 'v.webm'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const run = (failAt: number, seen: InferRequest[]) => inferVideo({
    broker: fakeBroker(failAt, seen), model: 'm', body: Readable.from([webm]), mediaType: 'video/webm', query: {},
    requestId: 'r', signal: new AbortController().signal, maxBytes: 1 << 30, maxElements: 1 << 26,
  });

  test('a failure after the first lines: an error line naming the frame ends the stream, the sequence is cancelled', async () => {
    const seen: InferRequest[] = [];
    const res = await run(5, seen);
    let text = '';
    for await (const chunk of res.stream) text += String(chunk);
    const lines = text.trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.slice(0, 5).map((l) => l.frame)).toEqual([0, 1, 2, 3, 4]);
    expect(lines[5]).toMatchObject({ frame: 5, code: 'DEADLINE_EXCEEDED', error: expect.stringContaining('deadline'), frames: 5 });
    expect(lines).toHaveLength(6);
    expect(seen[0].sequence).toMatchObject({ start: true, end: false, id: res.sequenceId });
    expect(seen[0].sequence!.owner!.aborted).toBe(true); // the sequence is cancelled
  });

  test('a failure on the first frame is the error of the request itself', async () => {
    await expect(run(0, [])).rejects.toMatchObject({ code: 'DEADLINE_EXCEEDED' });
  });

  test('every frame of the sequence carries start on the first and end on the last only', async () => {
    const seen: InferRequest[] = [];
    const res = await run(-1, seen);
    for await (const chunk of res.stream) void chunk;
    expect(seen).toHaveLength(25);
    expect(seen.map((r) => [r.sequence!.start, r.sequence!.end]).filter(([s, e]) => s || e)).toEqual([[true, false], [false, true]]);
    expect(seen[24].sequence!.end).toBe(true);
    expect(seen[0].inputs[0].shape).toEqual([1, 48, 64, 3]);
  });

  test('MP4 boxes: index first streams, media data first needs a file', () => {
    const box = (type: string, size: number) => {
      const b = Buffer.alloc(8);
      b.writeUInt32BE(size);
      b.write(type, 4, 'latin1');
      return b;
    };
    expect(mp4NeedsSeek(Buffer.concat([box('ftyp', 8), box('moov', 8)]))).toBe(false);
    expect(mp4NeedsSeek(Buffer.concat([box('ftyp', 8), box('free', 8), box('mdat', 8)]))).toBe(true);
    expect(mp4NeedsSeek(Buffer.concat([box('ftyp', 8), box('moof', 8)]))).toBe(false);
    expect(mp4NeedsSeek(box('ftyp', 32))).toBeUndefined();
  });
});
