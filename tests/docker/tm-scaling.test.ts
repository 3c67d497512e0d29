/**
 * Autoscaling and rolls with real containers: scale-up from one copy under
 * load, scale-down when idle, scale-to-zero with the request queued during the
 * cold start, a global cap refusing a start (log + metric) until room frees,
 * and a roll to a new image under steady load with zero failed requests.
 */
import { postJson, row, simpleBody, startTestBroker, waitFor, type TestBroker } from '../helpers/broker';
import { SIMPLE_V2, ensureTaskManagerImages } from '../helpers/test-images';
import { docker } from '../helpers/tm-docker';
import { imageTag } from '../../examples/build-images';

jest.setTimeout(240_000);
const TOKEN = 'tm-scaling-token';
const sleepyBody = { inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [1, 2], data: [1, 2] }] };

describe('autoscaling (Docker runtime, TB_MAX_COPIES=3)', () => {
  let b: TestBroker;
  const logs: Record<string, unknown>[] = [];
  const live = (model: string) => b.running.tasks.copies().filter((c) => c.model === model && c.state !== 'draining' && c.state !== 'stopped').length;

  beforeAll(async () => {
    await ensureTaskManagerImages();
    b = await startTestBroker({
      runtime: 'docker',
      config: { maxCopies: 3, autoscaleIntervalMs: 200 },
      logSink: (line) => logs.push(JSON.parse(line)),
      models: {
        sleepy: {
          image: imageTag('sleepy'), pull_policy: 'never', min_replicas: 1, max_replicas: 3, batch_size: 1, env: { SLEEPY_A_MS: '150', SLEEPY_B_MS: '0' },
          scale_up_queue_per_copy: 2, scale_up_cooldown_ms: 300, scale_down_cooldown_ms: 800, idle_ttl_ms: 1500,
        },
        zero: { image: imageTag('simple'), pull_policy: 'never', min_replicas: 0, max_replicas: 1, idle_ttl_ms: 1500, scale_down_cooldown_ms: 500 },
      },
    });
    await waitFor(() => live('sleepy') === 1 && b.running.broker.modelReady('sleepy').ready, 60_000, 'sleepy ready');
  });
  afterAll(async () => {
    await b?.stop();
  });

  test('scale to zero: no copy until a request; it is queued (not failed) during the cold start; idle copies stop again', async () => {
    expect(live('zero')).toBe(0);
    expect(b.running.broker.modelReady('zero')).toMatchObject({ ready: false, phase: 'at-zero', reason: expect.stringMatching(/scaled to zero/) });
    const res = await postJson(`${b.url}/v2/models/zero/infer`, simpleBody([row(16)], [row(16)]));
    expect(res.status).toBe(200);
    expect(logs.some((l) => l.msg === 'scaling decision' && l.model === 'zero' && l.decision === 'up' && /cold start/.test(String(l.reason)))).toBe(true);
    await waitFor(() => live('zero') === 0, 20_000, 'zero scaled back to zero');
    const down = logs.find((l) => l.msg === 'scaling decision' && l.model === 'zero' && l.decision === 'down')!;
    expect(down.inputs).toMatchObject({ queued: 0, ready: 1, minReplicas: 0, idleTtlMs: 1500 });
  });

  test('scale-up from one copy under load; a cap refuses a start (log + metric) and the request waits; scale-down when idle', async () => {
    const load = Promise.all(Array.from({ length: 60 }, () => postJson(`${b.url}/v2/models/sleepy/infer`, sleepyBody)));
    await waitFor(() => live('sleepy') === 3, 30_000, 'sleepy at 3 copies');
    const up = logs.find((l) => l.msg === 'scaling decision' && l.model === 'sleepy' && l.decision === 'up')!;
    expect(up.reason).toMatch(/queue per copy/);
    expect(up.inputs).toMatchObject({ ready: 1, queuePerCopy: 2 });

    // The box is full (3 copies): zero's cold start is refused by the cap, its request stays queued.
    const zero = postJson(`${b.url}/v2/models/zero/infer`, simpleBody([row(16)], [row(16)]));
    await waitFor(() => logs.some((l) => l.model === 'zero' && /scale-up refused: global cap TB_MAX_COPIES=3/.test(String(l.msg))), 10_000, 'refusal log');
    expect(await (await fetch(b.metricsUrl)).text()).toMatch(/tb_scale_refused_total\{model="zero",cap="copies"\} [1-9]/);

    const results = await load;
    expect(results.every((r) => r.status === 200)).toBe(true);
    // Idle: sleepy goes back to min_replicas, which makes room for zero.
    expect((await zero).status).toBe(200);
    await waitFor(() => live('sleepy') === 1, 30_000, 'sleepy back to 1');
    // Two copies went: by idle scale-down, or evicted (idle past its TTL, above min_replicas) to make room for zero.
    const downs = logs.filter((l) => (l.msg === 'scaling decision' && l.model === 'sleepy' && l.decision === 'down') || (l.msg === 'evicting an idle copy of another model to make room' && l.evicted === 'sleepy'));
    expect(downs.length).toBeGreaterThanOrEqual(2);
  });
});

describe('rolling update (Docker runtime)', () => {
  let b: TestBroker;
  beforeAll(async () => {
    await ensureTaskManagerImages();
    b = await startTestBroker({
      runtime: 'docker',
      adminToken: TOKEN,
      models: { simple: { image: imageTag('simple'), pull_policy: 'never', min_replicas: 2, max_replicas: 2, batch_size: 4, max_wait_ms: 2 } },
    });
    await waitFor(() => b.running.tasks.copies().filter((c) => c.state === 'ready').length === 2, 60_000, 'two copies');
  });
  afterAll(async () => {
    await b?.stop();
  });

  test('a new image under steady load: new copies ready before old ones drain, zero failed requests', async () => {
    const old = b.running.tasks.copies().map((c) => c.id);
    let stop = false;
    const statuses: number[] = [];
    const loop = async (i: number) => {
      while (!stop) statuses.push((await postJson(`${b.url}/v2/models/simple/infer`, simpleBody([row(16, i)], [row(16)]))).status);
    };
    const loops = Promise.all([0, 1, 2, 3, 4, 5].map(loop));
    // The load is flowing before the roll starts.
    await waitFor(() => statuses.length >= 20, 30_000, 'load flowing');
    const res = await fetch(`${b.url}/admin/models/simple`, {
      method: 'PATCH',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}` },
      body: JSON.stringify({ image: SIMPLE_V2, version: '2' }),
    });
    expect(res.status).toBe(200);
    await waitFor(() => {
      const cs = b.running.tasks.copies();
      return cs.length === 2 && cs.every((c) => c.image === SIMPLE_V2 && (c.state === 'ready' || c.state === 'busy') && !old.includes(c.id));
    }, 60_000, 'rolled to v2');
    // Some load lands on the new copies before it stops.
    const atRoll = statuses.length;
    await waitFor(() => statuses.length >= atRoll + 20, 30_000, 'load served by v2');
    stop = true;
    await loops;
    expect(statuses.length).toBeGreaterThan(50);
    expect(statuses.filter((s) => s !== 200)).toEqual([]);
    const running = await docker.listContainers({ filters: { label: [`tensorbroker.owner=${b.config.brokerId}`] } });
    expect(running.map((c) => c.Image)).toEqual([SIMPLE_V2, SIMPLE_V2]);
  });
});
