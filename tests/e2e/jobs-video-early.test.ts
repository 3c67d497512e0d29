/**
 * Video jobs, what is answered without waiting (issue 15), end to end: a real
 * broker, real redis-server, the motion model as model processes. Leases are
 * 10 minutes here, so a worker's heartbeat (a third of the lease) never comes
 * during a test: a running job hears of its cancel from the job events
 * instead. A replayed Idempotency-Key and a full queue are answered before the
 * upload ends (it is never stored). Consumers of processes that are gone leave
 * the streams' groups.
 */
import { execFileSync, execSync } from 'node:child_process';
import http from 'node:http';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Redis from 'ioredis';
import type { SequenceStatus } from '../../core/sequence-scheduler';
import { GROUP, JobKeys } from '../../jobs/keys';
import type { JobView } from '../../jobs/types';
import { getJson, modelMain, startTestBroker, waitFor, waitReady, type TestBroker } from '../helpers/broker';

const motion = (over: Record<string, unknown> = {}, env: Record<string, string> = {}) => ({
  command: ['node', modelMain('motion')], stateless: false, batch_size: 8, max_sequences: 2, sequence_idle_ms: 60_000, env, ...over,
});
const models = {
  motion: motion(),
  // One slot and 40 ms per frame: a 6 s video takes 6 s.
  'motion-slow': motion({ max_sequences: 1 }, { MOTION_A_MS: '40' }),
};
const LEASE_MS = 600_000;

let b: TestBroker;
let dir: string;
let redis: Redis;
let keys: JobKeys;
const video = (name: string) => readFileSync(path.join(dir, name));
const job = (id: string): Promise<JobView> => getJson(`${b.url}/v2/jobs/${id}`);
const sequences = (model: string): Promise<SequenceStatus> => getJson(`${b.url}/v2/models/${model}/sequences`);
const ffmpegChildren = (): string => execSync(`pgrep -P ${process.pid} -x ffmpeg || true`).toString().trim();

beforeAll(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'tb-jobs-early-'));
  const src = (s: number) => ['-hide_banner', '-loglevel', 'error', '-f', 'lavfi', '-i', `testsrc=duration=${s}:size=160x120:rate=25`];
  execFileSync('ffmpeg', [...src(2), '-c:v', 'libvpx', '-b:v', '200k', path.join(dir, 'test.webm')]);
  execFileSync('ffmpeg', [...src(6), '-c:v', 'libvpx', '-b:v', '200k', path.join(dir, 'mid.webm')]);
  b = await startTestBroker({
    models,
    config: { jobs: { enabled: true, leaseMs: LEASE_MS, blobDir: path.join(dir, 'blobs'), maxQueued: 1, consumerIdleMs: 2000 } },
  });
  redis = new Redis(b.redis.url);
  keys = new JobKeys(`${b.config.redisPrefix}jobs:`);
  await Promise.all(Object.keys(models).map((m) => waitReady(b, m)));
}, 60_000);

afterAll(async () => {
  redis?.disconnect();
  await b?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function submit(model: string, body: Buffer, headers: Record<string, string> = {}): Promise<{ status: number; json: JobView & { error?: string }; headers: http.IncomingHttpHeaders }> {
  const res = await fetch(`${b.url}/v2/models/${model}/jobs`, { method: 'POST', headers: { 'content-type': 'video/webm', ...headers }, body });
  return { status: res.status, json: (await res.json()) as JobView & { error?: string }, headers: Object.fromEntries(res.headers) };
}

/**
 * Starts an upload, sends its first bytes and no more: the answer comes only
 * if the broker answers before the body ends. `finish()` ends the body.
 */
function partialUpload(model: string, first: Buffer, headers: Record<string, string> = {}) {
  const u = new URL(`${b.url}/v2/models/${model}/jobs`);
  let answer: { status: number; headers: http.IncomingHttpHeaders; body: string } | undefined;
  const req = http.request({ host: u.hostname, port: u.port, path: u.pathname, method: 'POST', headers: { 'content-type': 'video/webm', ...headers } }, (res) => {
    let body = '';
    res.setEncoding('utf8');
    res.on('data', (c: string) => (body += c));
    res.on('end', () => (answer = { status: res.statusCode!, headers: res.headers, body }));
  });
  req.on('error', () => undefined); // the broker may close once it answered
  req.write(first);
  return {
    answered: () => answer,
    finish: () => new Promise<void>((resolve) => req.end(resolve)),
  };
}

test('a cancel reaches a running video job at once (its next heartbeat is minutes away): ffmpeg killed, sequence cancelled', async () => {
  const before = await sequences('motion-slow');
  const r = await submit('motion-slow', video('mid.webm'));
  expect(r.status).toBe(202);
  const id = r.json.id;
  await waitFor(async () => (await job(id)).status === 'running' && (await sequences('motion-slow')).active === 1 && ffmpegChildren() !== '',
    20_000, 'the video job running');
  const del = await fetch(`${b.url}/v2/jobs/${id}`, { method: 'DELETE' });
  expect(((await del.json()) as JobView).status).toBe('cancelled');
  // Well within the video's 6 s, and far from the first heartbeat (LEASE_MS / 3).
  await waitFor(async () => (await sequences('motion-slow')).ended.cancelled === before.ended.cancelled + 1, 15_000, 'the sequence cancelled');
  await waitFor(() => ffmpegChildren() === '', 10_000, 'ffmpeg killed');
  const after = await sequences('motion-slow');
  expect(after.ended.end).toBe(before.ended.end); // never reached its last frame
  expect(after.active).toBe(0);
  await waitFor(async () => (await redis.xlen(keys.stream('motion-slow', 'normal'))) === 0, 15_000, 'the cancelled job\'s entry gone');
}, 60_000);

test('a replayed Idempotency-Key is answered before the upload ends, with the first job', async () => {
  const first = await submit('motion', video('test.webm'), { 'idempotency-key': 'video-once' });
  expect(first.status).toBe(202);
  const again = partialUpload('motion', video('test.webm').subarray(0, 4096), { 'idempotency-key': 'video-once' });
  try {
    await waitFor(() => again.answered() !== undefined, 15_000, 'the replay answered while its upload is still open');
    const a = again.answered()!;
    expect(a.status).toBe(202);
    expect(a.headers['idempotent-replayed']).toBe('true');
    expect((JSON.parse(a.body) as JobView).id).toBe(first.json.id);
  } finally {
    await again.finish();
  }
  await waitFor(async () => (await job(first.json.id)).status === 'succeeded', 30_000, 'the first job succeeded');
  // One job only: the replay stored nothing and queued nothing.
  await waitFor(async () => (await redis.xlen(keys.stream('motion', 'normal'))) === 0, 15_000, 'the first job\'s entry gone');
  expect(readdirSync(path.join(dir, 'blobs')).filter((f) => f !== `${first.json.id}.input`)).toEqual([]);
}, 60_000);

test('a full queue is a 429 before the upload ends', async () => {
  const running = await submit('motion-slow', video('mid.webm')); // its entry fills the queue (maxQueued 1) while it runs
  expect(running.status).toBe(202);
  const refused = partialUpload('motion-slow', video('mid.webm').subarray(0, 4096));
  try {
    await waitFor(() => refused.answered() !== undefined, 15_000, 'the refusal answered while its upload is still open');
    const a = refused.answered()!;
    expect(a.status).toBe(429);
    expect(a.headers['retry-after']).toBeDefined();
    expect(JSON.parse(a.body)).toMatchObject({ error: expect.stringContaining('job queue of model \'motion-slow\' is full') });
  } finally {
    await refused.finish();
  }
  await fetch(`${b.url}/v2/jobs/${running.json.id}`, { method: 'DELETE' });
  await waitFor(async () => (await redis.xlen(keys.stream('motion-slow', 'normal'))) === 0, 15_000, 'the cancelled job\'s entry gone');
}, 60_000);

test('consumers of gone processes leave the group; one holding an entry stays', async () => {
  const stream = keys.stream('motion', 'low');
  await waitFor(async () => (await redis.exists(stream)) === 1, 10_000, 'the worker created the stream and group');
  // 'ghost-idle' holds nothing; 'ghost-holding' takes an entry and never acknowledges it (in one
  // transaction with the XADD, so the broker's blocked read cannot take the entry first).
  await redis.xgroup('CREATECONSUMER', stream, GROUP, 'ghost-idle');
  const added = await redis.multi()
    .xadd(stream, '*', 'id', 'no-such-job-0000000000')
    .xreadgroup('GROUP', GROUP, 'ghost-holding', 'COUNT', 1, 'STREAMS', stream, '>')
    .exec();
  const entry = added![0][1] as string;
  expect(await redis.xpending(stream, GROUP, '-', '+', 10, 'ghost-holding')).toHaveLength(1);
  const names = async () => ((await redis.xinfo('CONSUMERS', stream, GROUP)) as unknown[][]).map((c) => String(c[1]));
  expect(await names()).toEqual(expect.arrayContaining(['ghost-idle', 'ghost-holding']));
  await waitFor(async () => !(await names()).includes('ghost-idle'), 15_000, 'the idle ghost removed');
  expect(await names()).toContain('ghost-holding');
  await redis.multi().xack(stream, GROUP, entry).xdel(stream, entry).exec();
  await waitFor(async () => !(await names()).includes('ghost-holding'), 15_000, 'the other ghost removed once it holds nothing');
}, 60_000);
