/**
 * A copy that takes two batches in flight (READY credits 2), end to end with the
 * sleepy example as a real process: the second batch goes out while the first
 * runs and waits at the copy; the SDK runs them one after the other. A copy
 * killed with both batches in flight: every request gets exactly one answer,
 * UNAVAILABLE without retry_on_failure, and with it each request runs once more
 * on the replacement copy (and fails if that one dies too).
 */
import { getJson, modelMain, postJson, startTestBroker, waitFor, waitReady, type TestBroker } from '../helpers/broker';

// 4 rows per batch; a batch takes 400 ms, so a test sees both batches at the copy.
const pipe = (extra: Record<string, unknown> = {}) => ({
  command: ['node', modelMain('sleepy')],
  batch_size: 4,
  max_wait_ms: 0,
  min_replicas: 1,
  max_replicas: 1,
  timeout_ms: 30_000,
  env: { SLEEPY_A_MS: '400', SLEEPY_B_MS: '0', SLEEPY_CREDITS: '2' },
  ...extra,
});

const models = { pipe: pipe(), 'pipe-retry': pipe({ retry_on_failure: true }) };

interface Counts { success: number; fail: number; batches: number }

async function counts(b: TestBroker, model: string): Promise<Counts> {
  const s = (await getJson(`${b.url}/v2/models/${model}/stats`)).model_stats[0];
  return { success: s.inference_stats.success.count, fail: s.inference_stats.fail.count, batches: s.execution_count };
}

/** The model's serving copy ('busy' = ready with batches in flight). */
const copyOf = (b: TestBroker, model: string) => b.running.tasks.copies().find((c) => c.model === model && (c.state === 'ready' || c.state === 'busy'));

/**
 * Five one-row requests at once; each answer is its status and its INPUT0 echoed back.
 * The first finds the copy idle and goes alone; the other four make a full batch that
 * goes to the copy's second credit while the first runs: all five are in flight.
 */
const N = 5;
function send5(b: TestBroker, model: string): Promise<{ status: number; value?: number; message?: string }[]> {
  return Promise.all(Array.from({ length: N }, async (_, i) => {
    const r = await postJson(`${b.url}/v2/models/${model}/infer`, { inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [1, 2], data: [i, i] }] });
    return r.status === 200 ? { status: 200, value: r.json.outputs[0].data[0] } : { status: r.status, message: r.json.error };
  }));
}

const own = Array.from({ length: N }, (_, i) => [200, i]);

describe('a copy with two batches in flight (credits 2)', () => {
  let b: TestBroker;
  beforeAll(async () => {
    b = await startTestBroker({ models });
    await Promise.all(Object.keys(models).map((m) => waitReady(b, m)));
  });
  afterAll(async () => {
    await b?.stop();
  });

  test('the second full batch goes out while the first runs; both answer, each request with its own rows', async () => {
    expect(copyOf(b, 'pipe')?.credits).toBe(2);
    const before = await counts(b, 'pipe');
    const answers = send5(b, 'pipe');
    await waitFor(() => copyOf(b, 'pipe')?.inFlight === 2, 20_000, 'two batches at the copy');
    expect((await answers).map((a) => [a.status, a.value])).toEqual(own);
    const after = await counts(b, 'pipe');
    expect(after.batches - before.batches).toBe(2);
    expect(after.success - before.success).toBe(N);
  });

  test('killed with two batches in flight: every request answered once, UNAVAILABLE (no retry_on_failure)', async () => {
    const before = await counts(b, 'pipe');
    const answers = send5(b, 'pipe');
    await waitFor(() => copyOf(b, 'pipe')?.inFlight === 2, 20_000, 'two batches at the copy');
    process.kill(copyOf(b, 'pipe')!.pid!, 'SIGKILL');
    const got = await answers;
    expect(got.map((a) => a.status)).toEqual(Array(N).fill(503));
    for (const a of got) expect(a.message).toMatch(/exited|SIGKILL|lost/);
    const after = await counts(b, 'pipe');
    expect(after.fail - before.fail).toBe(N);
    expect(after.success - before.success).toBe(0);
    await waitReady(b, 'pipe');
  });

  test('with retry_on_failure: both batches run again on the replacement copy, once', async () => {
    const first = copyOf(b, 'pipe-retry')!;
    let before = await counts(b, 'pipe-retry');
    let answers = send5(b, 'pipe-retry');
    await waitFor(() => copyOf(b, 'pipe-retry')?.inFlight === 2, 20_000, 'two batches at the copy');
    process.kill(first.pid!, 'SIGKILL');
    expect((await answers).map((a) => [a.status, a.value])).toEqual(own);
    let after = await counts(b, 'pipe-retry');
    expect([after.success - before.success, after.fail - before.fail]).toEqual([N, 0]);
    expect(copyOf(b, 'pipe-retry')!.id).not.toBe(first.id);

    // The next copy dies while it holds the retried rows: they are not retried a second time.
    before = after;
    answers = send5(b, 'pipe-retry');
    await waitFor(() => copyOf(b, 'pipe-retry')?.inFlight === 2, 20_000, 'two batches at the copy');
    const second = copyOf(b, 'pipe-retry')!;
    process.kill(second.pid!, 'SIGKILL');
    // Its replacement takes a full batch of 4 retried rows (the fifth waits for the copy to be idle).
    await waitFor(() => { const c = copyOf(b, 'pipe-retry'); return !!c && c.id !== second.id && c.inFlight > 0; }, 30_000, 'the retried rows at the next copy');
    process.kill(copyOf(b, 'pipe-retry')!.pid!, 'SIGKILL');
    const got = await answers;
    const failed = got.filter((a) => a.status === 503);
    expect(failed.length).toBeGreaterThanOrEqual(4);
    for (const a of got) if (a.status === 200) expect(own).toContainEqual([200, a.value]);
    after = await counts(b, 'pipe-retry');
    // Exactly one answer per request: N outcomes in all, the failures are the ones the broker counted.
    expect(after.success - before.success + after.fail - before.fail).toBe(N);
    expect(after.fail - before.fail).toBe(failed.length);
  });
});
