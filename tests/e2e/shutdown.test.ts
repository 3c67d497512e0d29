/** Graceful shutdown: every accepted request ends in exactly one answer. */
import { modelMain, postJson, startTestBroker, waitFor, waitReady } from '../helpers/broker';

const body = { inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [1, 1], data: [3] }] };
const models = { sleepy: { command: ['node', modelMain('sleepy')], batch_size: 2, env: { SLEEPY_A_MS: '300', SLEEPY_B_MS: '0' } } };

async function loaded(b: Awaited<ReturnType<typeof startTestBroker>>, n: number) {
  await waitFor(() => b.running.broker.load().reduce((k, m) => k + m.queued + m.running, 0) === n, 10_000, `${n} requests admitted`);
}

describe('graceful shutdown', () => {
  test('within the grace period, queued and running requests are all served; new ones get 503', async () => {
    const b = await startTestBroker({ models, config: { shutdownGraceMs: 10_000 } });
    await waitReady(b, 'sleepy');
    const url = `${b.url}/v2/models/sleepy/infer`;
    const answers = Promise.all(Array.from({ length: 6 }, () => postJson(url, body)));
    await loaded(b, 6);
    const closing = b.stop();
    await waitFor(() => !b.running.broker.ready().ready, 5000, 'broker refusing work');
    const late = await postJson(url, body).catch(() => ({ status: 0, json: {} }));
    // Refused with 503 while draining, or the listener is already gone: never accepted and then dropped.
    expect([0, 503]).toContain(late.status);
    expect((await answers).map((r) => r.status)).toEqual([200, 200, 200, 200, 200, 200]);
    await closing;
  });

  test('past the grace period, queued requests fail with 503 and the running batch still finishes', async () => {
    const b = await startTestBroker({ models, config: { shutdownGraceMs: 100 } });
    await waitReady(b, 'sleepy');
    const answers = Promise.all(Array.from({ length: 6 }, () => postJson(`${b.url}/v2/models/sleepy/infer`, body)));
    await loaded(b, 6);
    await b.stop();
    const results = await answers;
    const statuses = results.map((r) => r.status).sort();
    expect(statuses.filter((s) => s === 200).length).toBeGreaterThanOrEqual(1);
    expect(statuses.filter((s) => s === 503).length).toBeGreaterThanOrEqual(1);
    expect(statuses.every((s) => s === 200 || s === 503)).toBe(true);
    for (const r of results.filter((x) => x.status === 503)) expect(r.json.error).toContain('shutting down');
  });
});
