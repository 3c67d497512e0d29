/**
 * Video uploads as asynchronous jobs (issue 15), end to end: a real broker,
 * real redis-server, the motion model (stateful) as model processes, test
 * videos made with ffmpeg (`testsrc`) as in video.test.ts. A video job runs
 * as one sequence and its result is the NDJSON /infer streams for the same
 * upload (compared with a live /infer call); cancel, timeouts, a model error
 * and a copy killed mid-video; what submit refuses; the gRPC and ZeroMQ
 * result calls.
 */
import { execFileSync, execSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { SequenceStatus } from '../../core/sequence-scheduler';
import type { JobView } from '../../jobs/types';
import { serviceDefinition } from '../../bridges/grpc/service-definition';
import { JobService as JobServiceDesc } from '../../proto/gen/jobs_pb';
import { ZmqClient } from '../../sdk/node/zmq-client';
import { getJson, modelMain, postJson, simpleModel, startTestBroker, waitFor, waitReady, type TestBroker } from '../helpers/broker';

const motion = (over: Record<string, unknown> = {}, env: Record<string, string> = {}) => ({
  command: ['node', modelMain('motion')], stateless: false, batch_size: 8, max_sequences: 2, sequence_idle_ms: 60_000, env, ...over,
});

const models = {
  motion: motion(),
  // One slot and 40 ms per batch (one frame of a sequence per batch): a 6 s video takes 6 s, long enough to act mid-way.
  'motion-slow': motion({ max_sequences: 1 }, { MOTION_A_MS: '40' }),
  // The model's own error at frame 10 of every sequence.
  'motion-bad': motion({}, { MOTION_FAIL_AT: '10' }),
  simple: simpleModel(),
};
const MAX_VIDEO_BYTES = 256 * 1024;

interface Line {
  frame?: number;
  model_name?: string;
  model_version?: string;
  outputs?: { name: string; datatype: string; shape: number[]; data: unknown[] }[];
  end?: boolean;
  frames?: number;
  sequence_id?: string;
  error?: string;
  code?: string;
}

const parse = (text: string): Line[] => text.trim().split('\n').map((l) => JSON.parse(l) as Line);
const out = (l: Line, name: string) => (l.outputs!.find((o) => o.name === name)!.data as unknown[]).flat(2)[0];

/**
 * What of a line does not depend on the run: every field but the sequence id,
 * and of the outputs FRAME_INDEX and MOTION (the motion model's SLOT, ENDS,
 * BATCH_ROWS and COPY describe the copy's bookkeeping, not the frame).
 */
function content(l: Line): unknown {
  const { sequence_id: _id, outputs, ...rest } = l;
  return {
    ...rest,
    ...(outputs ? {
      outputs: outputs.map((o) => ({ name: o.name, datatype: o.datatype, shape: o.shape })),
      values: ['FRAME_INDEX', 'MOTION'].map((n) => out(l, n)),
    } : {}),
  };
}

let b: TestBroker;
let dir: string;
let blobDir: string;
const video = (name: string) => readFileSync(path.join(dir, name));

beforeAll(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'tb-jobs-video-'));
  blobDir = path.join(dir, 'blobs');
  const src = (s: number) => ['-hide_banner', '-loglevel', 'error', '-f', 'lavfi', '-i', `testsrc=duration=${s}:size=160x120:rate=25`];
  execFileSync('ffmpeg', [...src(2), '-c:v', 'libvpx', '-b:v', '200k', path.join(dir, 'test.webm')]);
  execFileSync('ffmpeg', [...src(2), '-pix_fmt', 'yuv420p', path.join(dir, 'test.mp4')]); // index (moov) at the end: spooled by the decoder
  execFileSync('ffmpeg', [...src(6), '-c:v', 'libvpx', '-b:v', '200k', path.join(dir, 'mid.webm')]);
  b = await startTestBroker({
    models,
    config: { maxVideoBytes: MAX_VIDEO_BYTES, jobs: { enabled: true, leaseMs: 900, blobDir, inlineMaxBytes: 64, sseHeartbeatMs: 100 } },
  });
  await Promise.all(Object.keys(models).map((m) => waitReady(b, m)));
}, 60_000);

afterAll(async () => {
  await b?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const submit = (model: string, body: RequestInit['body'], type: string | undefined, query = '', headers: Record<string, string> = {}) =>
  fetch(`${b.url}/v2/models/${model}/jobs${query}`, { method: 'POST', headers: { ...(type ? { 'content-type': type } : {}), ...headers }, body });
const infer = (model: string, body: RequestInit['body'], type: string, query = '') =>
  fetch(`${b.url}/v2/models/${model}/infer${query}`, { method: 'POST', headers: { 'content-type': type }, body });
const job = (id: string): Promise<JobView> => getJson(`${b.url}/v2/jobs/${id}`);
const sequences = (model: string): Promise<SequenceStatus> => getJson(`${b.url}/v2/models/${model}/sequences`);
const blobs = () => readdirSync(blobDir).sort();

/** Follows the job's Server-Sent Events to their end: the statuses seen, the last being final. */
async function follow(id: string, onStatus?: (s: string) => void): Promise<string[]> {
  const res = await fetch(`${b.url}/v2/jobs/${id}/events`);
  expect(res.status).toBe(200);
  const statuses: string[] = [];
  let buf = '';
  const decoder = new TextDecoder();
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buf += decoder.decode(chunk, { stream: true });
    let i: number;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const data = /^data: (.+)$/m.exec(buf.slice(0, i))?.[1];
      buf = buf.slice(i + 2);
      if (data) {
        const s = `${(JSON.parse(data) as JobView).status}`;
        statuses.push(s);
        onStatus?.(s);
      }
    }
  }
  return statuses;
}

async function accepted(res: Response): Promise<string> {
  const text = await res.text();
  expect({ status: res.status, text }).toMatchObject({ status: 202 });
  return (JSON.parse(text) as { id: string }).id;
}

/** ffmpeg processes started by this process (the broker runs in it). */
const ffmpegChildren = (): string => {
  try {
    return execSync(`pgrep -P ${process.pid} -x ffmpeg || true`).toString().trim();
  } catch {
    return '';
  }
};

describe('a video on a stateful model is a job', () => {
  test('202, one sequence, and the result is the NDJSON /infer streams for the same upload (options kept)', async () => {
    const before = await sequences('motion');
    const id = await accepted(await submit('motion', video('test.webm'), 'video/webm', '?fps=10&width=80&height=60&priority=high&max_attempts=2'));
    const statuses = await follow(id);
    expect(statuses[statuses.length - 1]).toBe('succeeded');
    const v = await job(id);
    expect(v).toMatchObject({ priority: 'high', max_attempts: 2, attempts: 1, video: { content_type: 'video/webm', options: { fps: '10', width: '80', height: '60' } } });

    const res = await fetch(`${b.url}/v2/jobs/${id}/result`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/x-ndjson/);
    const lines = parse(await res.text());
    const direct = await infer('motion', video('test.webm'), 'video/webm', '?fps=10&width=80&height=60');
    expect(direct.status).toBe(200);
    const live = parse(await direct.text());
    expect(lines).toHaveLength(live.length);
    expect(lines.map(content)).toEqual(live.map(content));
    expect(lines.filter((l) => l.frame !== undefined).map((l) => out(l, 'FRAME_INDEX'))).toEqual(Array.from({ length: 20 }, (_, i) => i));
    expect(lines[lines.length - 1]).toMatchObject({ end: true, frames: 20, width: 80, height: 60, sequence_id: `job-${id}-1` });
    // One sequence each (the job's and /infer's), started on the first frame and ended on the last.
    const after = await sequences('motion');
    expect(after.ended.end).toBe(before.ended.end + 2);
    expect(after.active).toBe(0);
    // The input and the result went through the blob store; the input is gone once the job is final.
    expect(blobs()).toContain(`${id}.result`);
    expect(blobs()).not.toContain(`${id}.input`);
  });

  test('a multipart video part and an MP4 with its index at the end; an Idempotency-Key replays the job', async () => {
    const form = () => {
      const f = new FormData();
      f.append('video', new Blob([video('test.mp4')], { type: 'video/mp4' }), 'clip.mp4');
      return f;
    };
    const key = `video-${Date.now()}`;
    const first = await fetch(`${b.url}/v2/models/motion/jobs`, { method: 'POST', body: form(), headers: { 'idempotency-key': key } });
    const id = await accepted(first);
    const again = await fetch(`${b.url}/v2/models/motion/jobs`, { method: 'POST', body: form(), headers: { 'idempotency-key': key } });
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    expect(await accepted(again)).toBe(id);
    expect((await follow(id)).pop()).toBe('succeeded');
    const lines = parse(await (await fetch(`${b.url}/v2/jobs/${id}/result`)).text());
    const live = parse(await (await fetch(`${b.url}/v2/models/motion/infer`, { method: 'POST', body: form() })).text());
    expect(lines.map(content)).toEqual(live.map(content));
    expect(lines).toHaveLength(51); // 50 frames and the closing line
  });
});

describe('what a video job refuses, as /infer does', () => {
  test('past the video size limit: 413, and nothing is kept (no blob, no job)', async () => {
    const before = blobs();
    const queued = await getJson(`${b.url}/v2/models/motion/jobs/queue`);
    const res = await submit('motion', Buffer.alloc(MAX_VIDEO_BYTES + 100_000, 7), 'video/webm');
    expect(res.status).toBe(413);
    expect(((await res.json()) as { error: string }).error).toMatch(`larger than the limit of ${MAX_VIDEO_BYTES} bytes`);
    expect(blobs()).toEqual(before);
    expect(await getJson(`${b.url}/v2/models/motion/jobs/queue`)).toEqual(queued);
  });

  test('a video on a stateless model: /infer\'s 400; tensors on a stateful model: 400; bad options: 400', async () => {
    const viaJob = await submit('simple', video('test.webm'), 'video/webm');
    const viaInfer = await infer('simple', video('test.webm'), 'video/webm');
    expect([viaJob.status, viaInfer.status]).toEqual([400, 400]);
    const message = ((await viaJob.json()) as { error: string }).error;
    expect(message).toMatch(/stateless: a video upload is a sequence and needs a stateful model/);
    expect(message).toBe(((await viaInfer.json()) as { error: string }).error);
    // The same for a multipart video part.
    const form = new FormData();
    form.append('video', new Blob([video('test.webm')], { type: 'video/webm' }), 'clip.webm');
    const multipart = await fetch(`${b.url}/v2/models/simple/jobs`, { method: 'POST', body: form });
    expect(multipart.status).toBe(400);
    expect(((await multipart.json()) as { error: string }).error).toBe(message);

    const tensors = await postJson(`${b.url}/v2/models/motion/jobs`, { inputs: [{ name: 'FRAME', datatype: 'UINT8', shape: [1, 1, 1, 3], data: [1, 2, 3] }] });
    expect(tensors.status).toBe(400);
    expect(tensors.json.error).toMatch(/stateful: a job on it is a video upload/);
    for (const [query, why] of [['?fps=0', /fps/], ['?width=x', /width/], ['?input=NOPE', /no input named/], ['?sequence_id=7', /sequence of its own/],
      ['?ttl_seconds=0', /ttl_seconds/], ['?webhook_url=http://127.0.0.1:9/x', /signing secret/]] as const) {
      const r = await submit('motion', video('mid.webm'), 'video/webm', query); // larger than the upload's buffers: refused ones are drained
      expect({ query, status: r.status }).toEqual({ query, status: 400 });
      expect(((await r.json()) as { error: string }).error).toMatch(why);
    }
    expect((await submit('motion', video('test.webm'), 'video/ogg')).status).toBe(415);
  });

  test('a video that cannot be decoded: the job fails at once (not retried) with /infer\'s 400', async () => {
    const junk = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919) & 255));
    const id = await accepted(await submit('motion', junk, 'video/webm'));
    expect((await follow(id)).pop()).toBe('failed');
    expect((await job(id)).attempts).toBe(1);
    const res = await fetch(`${b.url}/v2/jobs/${id}/result`);
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: string }).error).toMatch(/could not be decoded/);
  });
});

describe('running a video job', () => {
  test('cancel while it runs: ffmpeg is killed, the model is told the sequence was cancelled, the job ends cancelled', async () => {
    const before = await sequences('motion-slow');
    const id = await accepted(await submit('motion-slow', video('mid.webm'), 'video/webm'));
    // Running, its sequence holding the only slot, ffmpeg decoding.
    await waitFor(async () => (await job(id)).status === 'running' && (await sequences('motion-slow')).active === 1 && ffmpegChildren() !== '',
      20_000, 'the video job running');
    const del = await fetch(`${b.url}/v2/jobs/${id}`, { method: 'DELETE' });
    expect(((await del.json()) as JobView).status).toBe('cancelled');
    await waitFor(async () => (await sequences('motion-slow')).ended.cancelled === before.ended.cancelled + 1, 10_000, 'the sequence cancelled');
    await waitFor(() => ffmpegChildren() === '', 10_000, 'ffmpeg killed');
    const after = await sequences('motion-slow');
    expect(after.active).toBe(0);
    expect(after.ended.end).toBe(before.ended.end); // never reached its last frame
    expect((await job(id)).status).toBe('cancelled');
    expect((await fetch(`${b.url}/v2/jobs/${id}/result`)).status).toBe(410);
    await waitFor(() => !blobs().includes(`${id}.input`), 10_000, 'the input dropped');
  });

  test('a video job starts only when a sequence slot is free: it waits for a live video instead of the sequence backlog', async () => {
    const before = await sequences('motion-slow');
    const live = infer('motion-slow', video('mid.webm'), 'video/webm');
    await waitFor(async () => (await sequences('motion-slow')).active === 1, 20_000, 'the live video holding the only slot');
    const id = await accepted(await submit('motion-slow', video('test.webm'), 'video/webm', '?fps=5'));
    const done = follow(id);
    expect(parse(await (await live).text()).pop()).toMatchObject({ end: true, frames: 150 });
    expect((await done).pop()).toBe('succeeded');
    const after = await sequences('motion-slow');
    expect(after.ended.end).toBe(before.ended.end + 2);
    expect(after.backlogged).toBe(before.backlogged); // the job's sequence never waited for a slot
  }, 60_000);

  test('timeout_seconds is for the whole video: past it the sequence is cancelled and the job fails (no attempts left)', async () => {
    const before = await sequences('motion-slow');
    const id = await accepted(await submit('motion-slow', video('mid.webm'), 'video/webm', '?timeout_seconds=1&max_attempts=1'));
    expect((await follow(id)).pop()).toBe('failed');
    const v = await job(id);
    expect(v.last_error).toMatch(/timeout_seconds/);
    const res = await fetch(`${b.url}/v2/jobs/${id}/result`);
    expect(res.status).toBe(504);
    await waitFor(async () => (await sequences('motion-slow')).ended.cancelled === before.ended.cancelled + 1, 10_000, 'the sequence cancelled');
    await waitFor(() => ffmpegChildren() === '', 10_000, 'ffmpeg killed');
  });

  test('the model\'s own error mid-video fails the job at once: not retried, not dead-lettered', async () => {
    const queue = await getJson(`${b.url}/v2/models/motion-bad/jobs/queue`);
    const id = await accepted(await submit('motion-bad', video('test.webm'), 'video/webm', '?max_attempts=3'));
    expect((await follow(id)).pop()).toBe('failed');
    const v = await job(id);
    expect(v.attempts).toBe(1);
    expect(v.last_error).toMatch(/MOTION_FAIL_AT: frame 10 fails/);
    // /infer streamed 10 frames, then the same error as a line.
    const live = parse(await (await infer('motion-bad', video('test.webm'), 'video/webm')).text());
    expect(live).toHaveLength(11);
    expect(live[10].error).toBe(v.last_error);
    const res = await fetch(`${b.url}/v2/jobs/${id}/result`);
    expect(res.status).not.toBe(200);
    expect(((await res.json()) as { error: string }).error).toBe(v.last_error);
    expect((await getJson(`${b.url}/v2/models/motion-bad/jobs/queue`)).dead_lettered).toBe(queue.dead_lettered);
  });

  test('a copy killed mid-video: the job runs again from the start on a new sequence and succeeds', async () => {
    const copy = b.running.tasks.copies().find((c) => c.model === 'motion-slow' && (c.state === 'ready' || c.state === 'busy'))!;
    const id = await accepted(await submit('motion-slow', video('mid.webm'), 'video/webm'));
    await waitFor(async () => (await sequences('motion-slow')).copies.some((c) => c.sequences.some((s) => s.id === `job-${id}-1`)), 20_000, 'the first attempt\'s sequence');
    process.kill(copy.pid!, 'SIGKILL');
    expect((await follow(id)).pop()).toBe('succeeded');
    const v = await job(id);
    expect(v.attempts).toBe(2);
    const lines = parse(await (await fetch(`${b.url}/v2/jobs/${id}/result`)).text());
    // A clean sequence: every frame from index 0, on the new copy.
    expect(lines.filter((l) => l.frame !== undefined).map((l) => out(l, 'FRAME_INDEX'))).toEqual(Array.from({ length: 150 }, (_, i) => i));
    expect(lines[lines.length - 1]).toMatchObject({ end: true, frames: 150, sequence_id: `job-${id}-2` });
  }, 60_000);
});

describe('other bridges: a video job\'s result is NDJSON, fetched over REST', () => {
  test('gRPC GetResult and ZeroMQ RESULT answer INVALID_ARGUMENT naming GET /v2/jobs/{id}/result; Get works on both', async () => {
    const id = await accepted(await submit('motion', video('test.webm'), 'video/webm', '?fps=5'));
    expect((await follow(id)).pop()).toBe('succeeded');

    const def = serviceDefinition(JobServiceDesc);
    const client = new grpc.Client(`127.0.0.1:${b.running.ports.grpc}`, grpc.credentials.createInsecure());
    const unary = (method: 'GetResult' | 'Get') => new Promise<{ status?: string }>((resolve, reject) => {
      const d = def[method];
      client.makeUnaryRequest(d.path, d.requestSerialize, d.responseDeserialize as (x: Buffer) => { status?: string }, { id }, new grpc.Metadata(),
        { deadline: Date.now() + 20_000 }, (err, res) => (err ? reject(err) : resolve(res!)));
    });
    const zmq = new ZmqClient(b.zmqEndpoint, { timeoutMs: 20_000 });
    try {
      const err = (await unary('GetResult').then(() => undefined, (e: grpc.ServiceError) => e))!;
      expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(err.details).toMatch(`fetch it over REST: GET /v2/jobs/${id}/result`);
      expect((await unary('Get')).status).toBe('succeeded');
      await expect(zmq.jobResult(id)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringContaining(`GET /v2/jobs/${id}/result`) });
      expect((await zmq.getJob(id)).status).toBe('succeeded');
    } finally {
      client.close();
      await zmq.close();
    }
  });
});
