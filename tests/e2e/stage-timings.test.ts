/**
 * The per-stage histograms (core/stage-timings.ts) on the metrics endpoint:
 * one REST and one ZeroMQ request through a real broker and copy each move
 * the counts of their bridge's stages and of the shared core and link stages,
 * with bucket counts that add up (Prometheus histogram form).
 */
import { ZmqClient } from '../../sdk/node';
import { simpleBody, postJson, row, simpleModel, startTestBroker, waitReady, type TestBroker } from '../helpers/broker';

type Counts = Map<string, { count: number; sum: number; inf: number }>;

async function stages(url: string): Promise<Counts> {
  const text = await (await fetch(url)).text();
  const out: Counts = new Map();
  for (const m of text.matchAll(/^tb_stage_seconds_(count|sum|bucket)\{path="([^"]+)",stage="([^"]+)"(?:,le="([^"]+)")?\} (\S+)$/gm)) {
    const key = `${m[2]}/${m[3]}`;
    const c = out.get(key) ?? { count: 0, sum: 0, inf: 0 };
    if (m[1] === 'count') c.count = Number(m[5]);
    else if (m[1] === 'sum') c.sum = Number(m[5]);
    else if (m[4] === '+Inf') c.inf = Number(m[5]);
    out.set(key, c);
  }
  return out;
}

const grew = (a: Counts, b: Counts, key: string) => (b.get(key)?.count ?? 0) - (a.get(key)?.count ?? 0);

describe('per-stage timings on /metrics', () => {
  let b: TestBroker;
  beforeAll(async () => {
    b = await startTestBroker({ models: { simple: simpleModel({ max_wait_ms: 0 }) } });
    await waitReady(b, 'simple');
  });
  afterAll(() => b?.stop());

  test('a REST request records parse, admit, queue, batch, link, compute, debatch, encode and write', async () => {
    const before = await stages(b.metricsUrl);
    const res = await postJson(`${b.url}/v2/models/simple/infer`, simpleBody([row(16)], [row(16, 1)]));
    expect(res.status).toBe(200);
    const after = await stages(b.metricsUrl);
    for (const key of ['rest/parse', 'core/admit', 'core/queue', 'core/batch', 'link/link_send', 'core/compute', 'link/link_receive', 'core/debatch', 'rest/encode', 'rest/write']) {
      expect([key, grew(before, after, key)]).toEqual([key, 1]);
    }
    for (const [key, c] of after) {
      expect([key, c.inf]).toEqual([key, c.count]); // +Inf bucket = count
      expect(c.sum).toBeGreaterThanOrEqual(0);
    }
  });

  test('a ZeroMQ request records the bridge\'s parse, encode and write', async () => {
    const client = new ZmqClient(b.zmqEndpoint, { window: 1, timeoutMs: 10_000 });
    try {
      const before = await stages(b.metricsUrl);
      const data = (v: number) => Buffer.from(new Int32Array(16).fill(v).buffer);
      await client.infer('simple', [
        { name: 'INPUT0', datatype: 'INT32', shape: [1, 16], data: data(2) },
        { name: 'INPUT1', datatype: 'INT32', shape: [1, 16], data: data(3) },
      ]);
      // The write stage is recorded once zeromq took the reply: the client has it, so it was.
      const after = await stages(b.metricsUrl);
      for (const key of ['zmq/parse', 'core/admit', 'link/link_send', 'zmq/encode', 'zmq/write']) expect([key, grew(before, after, key)]).toEqual([key, 1]);
    } finally {
      await client.close();
    }
  });
});
