/**
 * End to end over real HTTP, real Redis, real ZeroMQ and real model
 * processes (process runtime): answers, batching, every error status, a
 * killed copy, registry changes at run time.
 */
import { getJson, modelMain, postJson, row, simpleBody, simpleModel, sleepyModel, startTestBroker, waitFor, waitReady, type TestBroker } from '../helpers/broker';

const fp32 = (rows: number) => ({ inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [rows, 2], data: Array.from({ length: rows * 2 }, (_, i) => i / 2) }] });

describe('REST bridge, process runtime', () => {
  let b: TestBroker;
  const infer = (model: string, body: unknown, headers?: Record<string, string>) => postJson(`${b.url}/v2/models/${model}/infer`, body, headers);

  beforeAll(async () => {
    b = await startTestBroker({
      adminToken: 'test-token',
      config: { bodyLimit: 64 * 1024 },
      models: {
        simple: simpleModel(),
        batched: simpleModel({ max_wait_ms: 5 }),
        failing: simpleModel({ env: { SIMPLE_FAIL_ON: '999' } }),
        slow: sleepyModel(400, { queue_capacity: 2 }),
        sleepy: sleepyModel(300),
        broken: { command: ['node', '-e', 'console.error("cannot load weights"); process.exit(7)'], startup_timeout_ms: 5000 },
      },
    });
    await Promise.all(['simple', 'batched', 'failing', 'slow', 'sleepy'].map((m) => waitReady(b, m)));
  });
  afterAll(() => b?.stop());

  test('simple: sums and differences, nested or flat data, id echoed', async () => {
    const a = [row(16), row(16, 100)];
    const c = [row(16, 1), row(16, 2)];
    const res = await infer('simple', simpleBody(a, c, { id: 'req-1' }));
    expect(res.status).toBe(200);
    expect(res.json).toMatchObject({ model_name: 'simple', model_version: '1', id: 'req-1' });
    const outputs = res.json.outputs as { name: string; datatype: string; shape: number[]; data: number[] }[];
    const byName = Object.fromEntries(outputs.map((o) => [o.name, o]));
    expect(byName.OUTPUT0).toMatchObject({ datatype: 'INT32', shape: [2, 16] });
    expect(byName.OUTPUT0.data).toEqual(a.flat().map((v, i) => v + c.flat()[i]));
    expect(byName.OUTPUT1.data).toEqual(a.flat().map((v, i) => v - c.flat()[i]));
  });

  test('requested outputs only, and a version path', async () => {
    const body = { ...simpleBody([row(16)], [row(16)]), outputs: [{ name: 'OUTPUT1' }] };
    const res = await postJson(`${b.url}/v2/models/simple/versions/1/infer`, body);
    expect(res.status).toBe(200);
    expect((res.json.outputs as { name: string }[]).map((o) => o.name)).toEqual(['OUTPUT1']);
    expect((await postJson(`${b.url}/v2/models/simple/versions/7/infer`, body)).status).toBe(404);
  });

  test('binary tensor extension: raw input bytes in, binary outputs out', async () => {
    const a = new Int32Array(row(16, 10));
    const c = new Int32Array(row(16, 1));
    const header = Buffer.from(JSON.stringify({
      inputs: [
        { name: 'INPUT0', datatype: 'INT32', shape: [1, 16], parameters: { binary_data_size: 64 } },
        { name: 'INPUT1', datatype: 'INT32', shape: [1, 16], parameters: { binary_data_size: 64 } },
      ],
      outputs: [{ name: 'OUTPUT0', parameters: { binary_data: true } }, { name: 'OUTPUT1' }],
    }));
    const res = await fetch(`${b.url}/v2/models/simple/infer`, {
      method: 'POST',
      headers: { 'content-type': 'application/octet-stream', 'inference-header-content-length': String(header.length) },
      body: Buffer.concat([header, Buffer.from(a.buffer), Buffer.from(c.buffer)]),
    });
    expect(res.status).toBe(200);
    const jsonLength = Number(res.headers.get('inference-header-content-length'));
    const body = Buffer.from(await res.arrayBuffer());
    const head = JSON.parse(body.subarray(0, jsonLength).toString());
    const [out0, out1] = head.outputs;
    expect(out0).toMatchObject({ name: 'OUTPUT0', datatype: 'INT32', shape: [1, 16], parameters: { binary_data_size: 64 } });
    const sums = new Int32Array(new Uint8Array(body.subarray(jsonLength, jsonLength + 64)).buffer);
    expect(Array.from(sums)).toEqual(Array.from(a, (v, i) => v + c[i]));
    expect(out1.data).toEqual(Array.from(a, (v, i) => v - c[i]));
    // A binary size that runs past the body is a 400.
    const short = await fetch(`${b.url}/v2/models/simple/infer`, {
      method: 'POST',
      headers: { 'inference-header-content-length': String(header.length) },
      body: Buffer.concat([header, Buffer.from(a.buffer)]),
    });
    expect(short.status).toBe(400);
  });

  test('64 concurrent requests are batched: execution_count < inference_count', async () => {
    const before = (await getJson(`${b.url}/v2/models/batched/stats`)).model_stats[0];
    const results = await Promise.all(Array.from({ length: 64 }, (_, i) => infer('batched', simpleBody([row(16, i)], [row(16)]))));
    results.forEach((r, i) => {
      expect(r.status).toBe(200);
      const out0 = (r.json.outputs as { name: string; data: number[] }[]).find((o) => o.name === 'OUTPUT0')!;
      expect(out0.data).toEqual(row(16, i).map((v, k) => v + k));
    });
    const after = (await getJson(`${b.url}/v2/models/batched/stats`)).model_stats[0];
    const inferences = after.inference_count - before.inference_count;
    const executions = after.execution_count - before.execution_count;
    expect(inferences).toBe(64);
    expect(executions).toBeLessThan(inferences);
    expect(after.batch_stats.some((s: { batch_size: number }) => s.batch_size > 1)).toBe(true);
  });

  test('server and model metadata, config, readiness', async () => {
    expect((await fetch(`${b.url}/v2/health/live`)).status).toBe(200);
    const server = await (await fetch(`${b.url}/v2`)).json();
    expect(server).toMatchObject({ name: 'tensorbroker', extensions: expect.arrayContaining(['statistics', 'model_configuration']) });
    const meta = await (await fetch(`${b.url}/v2/models/simple`)).json();
    expect(meta).toMatchObject({ name: 'simple', versions: ['1'], inputs: [{ name: 'INPUT0', datatype: 'INT32', shape: [-1, 16] }, { name: 'INPUT1' }] });
    const config = await (await fetch(`${b.url}/v2/models/simple/config`)).json();
    expect(config).toMatchObject({ name: 'simple', max_batch_size: 8, input: [{ name: 'INPUT0', data_type: 'TYPE_INT32', dims: [16] }, { name: 'INPUT1' }], dynamic_batching: {} });
    // `broken` never becomes ready, so the server as a whole is not ready.
    const ready = await fetch(`${b.url}/v2/health/ready`);
    expect(ready.status).toBe(503);
    expect(((await ready.json()) as { error: string }).error).toContain('broken');
  });

  test('400: malformed body, unknown input, wrong datatype, shape/data mismatch, bad values', async () => {
    const bad = async (body: unknown, fragment: string) => {
      const res = typeof body === 'string'
        ? await fetch(`${b.url}/v2/models/simple/infer`, { method: 'POST', headers: { 'content-type': 'application/json' }, body }).then(async (r) => ({ status: r.status, json: (await r.json()) as { error: string } }))
        : await infer('simple', body);
      expect(res.status).toBe(400);
      expect(String(res.json.error)).toContain(fragment);
    };
    await bad('{"inputs": [', 'not valid JSON');
    await bad({ inputs: 3 }, "'inputs'");
    const good = simpleBody([row(16)], [row(16)]);
    await bad({ inputs: [good.inputs[0], { ...good.inputs[1], name: 'INPUT9' }] }, 'INPUT9');
    await bad({ inputs: [good.inputs[0], { ...good.inputs[1], datatype: 'FP32' }] }, 'expects datatype INT32');
    await bad({ inputs: [good.inputs[0], { ...good.inputs[1], shape: [1, 15] }] }, 'needs 15 elements');
    await bad({ inputs: [good.inputs[0], { ...good.inputs[1], shape: [1, 8], data: row(8) }] }, 'does not match');
    await bad({ inputs: [good.inputs[0], { ...good.inputs[1], data: [...row(15), 'x'] }] }, 'is not a INT32 integer');
    await bad({ inputs: [good.inputs[0], { ...good.inputs[1], datatype: 'INT33' }] }, 'unknown datatype');
  });

  test('404 unknown model, 413 body over the limit', async () => {
    const missing = await infer('nope', simpleBody([row(16)], [row(16)]));
    expect(missing.status).toBe(404);
    expect(missing.json.error).toContain("unknown model 'nope'");
    expect((await fetch(`${b.url}/v2/models/nope`)).status).toBe(404);
    const big = await fetch(`${b.url}/v2/models/simple/infer`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: 'x'.repeat(100 * 1024) });
    expect(big.status).toBe(413);
    expect(((await big.json()) as { error: string }).error).toContain('limit');
  });

  test('429 with Retry-After when the queue is full; the admitted requests still succeed', async () => {
    const results = await Promise.all(Array.from({ length: 8 }, () => infer('slow', fp32(1))));
    const statuses = results.map((r) => r.status);
    expect(statuses.filter((s) => s === 429).length).toBeGreaterThan(0);
    expect(statuses.every((s) => s === 200 || s === 429)).toBe(true);
    const rejected = results.find((r) => r.status === 429)!;
    expect(Number(rejected.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(rejected.json.error).toContain('queue is full');
  });

  test('504 when the request deadline passes (timeout parameter, microseconds)', async () => {
    const res = await infer('sleepy', { ...fp32(1), parameters: { timeout: 50_000 } });
    expect(res.status).toBe(504);
    expect(res.json.error).toContain('deadline of 50 ms');
  });

  test("500 carries the model's own error; the other rows of the batch succeed", async () => {
    const [good, badRow] = await Promise.all([
      infer('failing', simpleBody([row(16)], [row(16)])),
      infer('failing', simpleBody([row(16, 999)], [row(16)])),
    ]);
    expect(good.status).toBe(200);
    expect(badRow.status).toBe(500);
    expect(badRow.json.error).toContain('row rejected by model');
  });

  test('503 with the reason when a model cannot start', async () => {
    await waitFor(async () => (await fetch(`${b.url}/v2/models/broken/ready`)).status === 503 && String((await getJson(`${b.url}/v2/models/broken/ready`)).error).includes('7'), 20_000, 'broken model reason');
    const ready = await getJson(`${b.url}/v2/models/broken/ready`);
    expect(ready.error).toMatch(/exit|code/i);
    const res = await infer('broken', simpleBody([row(16)], [row(16)]));
    expect(res.status).toBe(503);
    expect(res.json.error).toContain("model 'broken' is not ready");
  });

  test('a copy killed mid-batch gives errors, not hangs, and is replaced', async () => {
    // Earlier tests may leave a batch running (a deadline does not stop the model): wait for quiet.
    await waitFor(() => b.running.tasks.copies().some((c) => c.model === 'sleepy' && c.state === 'ready' && c.inFlight === 0), 5000, 'idle sleepy copy');
    const copy = b.running.tasks.copies().find((c) => c.model === 'sleepy' && c.state === 'ready')!;
    expect(copy.pid).toBeGreaterThan(0);
    const inFlight = infer('sleepy', fp32(1));
    await waitFor(() => b.running.tasks.copies().some((c) => c.id === copy.id && c.inFlight > 0), 5000, 'batch in flight');
    process.kill(copy.pid!, 'SIGKILL');
    const res = await inFlight;
    expect(res.status).toBe(503);
    expect(res.json.error).toMatch(/killed by SIGKILL|exited/i);
    await waitFor(() => b.running.tasks.copies().some((c) => c.model === 'sleepy' && c.state === 'ready' && c.id !== copy.id), 20_000, 'replacement copy');
    expect((await infer('sleepy', fp32(1))).status).toBe(200);
  });

  test('the admin API changes the registry and the broker applies it without a restart', async () => {
    const auth = { authorization: 'Bearer test-token' };
    const denied = await fetch(`${b.url}/admin/models/extra`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ image: 'x' }) });
    expect(denied.status).toBe(401);
    const refused = await fetch(`${b.url}/admin/models/extra`, { method: 'PUT', headers: { 'content-type': 'application/json', ...auth }, body: JSON.stringify({ command: 'rm -rf /' }) });
    expect(refused.status).toBe(400);

    // Lower the batch size of `batched` at run time: a 3-row request is now too big.
    const patch = await fetch(`${b.url}/admin/models/batched`, { method: 'PATCH', headers: { 'content-type': 'application/json', ...auth }, body: JSON.stringify({ batch_size: 2 }) });
    expect(patch.status).toBe(200);
    await waitFor(async () => (await getJson(`${b.url}/v2/models/batched/config`)).max_batch_size === 2, 5000, 'batch size change');
    const three = await infer('batched', simpleBody([row(16), row(16), row(16)], [row(16), row(16), row(16)]));
    expect(three.status).toBe(400);
    expect(three.json.error).toContain('at most 2 rows');

    const del = await fetch(`${b.url}/admin/models/failing`, { method: 'DELETE', headers: auth });
    expect(del.status).toBe(204);
    await waitFor(async () => (await infer('failing', simpleBody([row(16)], [row(16)]))).status === 404, 5000, 'model removed');
  });

  test('Prometheus metrics: requests by outcome, queue depth, batch rows, copies by state', async () => {
    const text = await (await fetch(b.metricsUrl)).text();
    expect(text).toMatch(/tb_requests_total\{model="simple",outcome="success"\} \d+/);
    expect(text).toMatch(/tb_requests_total\{model="slow",outcome="rejected"\} \d+/);
    expect(text).toContain('tb_queue_depth{model="simple"}');
    expect(text).toMatch(/tb_batch_rows_bucket\{le="8",model="batched"\} \d+/);
    expect(text).toMatch(/tb_copies\{model="simple",state="ready"\} 1/);
  });
});

describe('models.yaml problems', () => {
  test('a bad entry is reported and skipped; the good ones serve', async () => {
    const lines: string[] = [];
    const b = await startTestBroker({
      models: {},
      modelsText: `models:\n  simple:\n    command: node ${modelMain('simple')}\n  bad:\n    command: node x.js\n    batch_size: eight\n`,
      logSink: (l) => lines.push(l),
    });
    try {
      await waitReady(b, 'simple');
      expect((await postJson(`${b.url}/v2/models/bad/infer`, {})).status).toBe(404);
      expect(lines.some((l) => l.includes('bad') && l.includes('batch_size') && l.includes('"level":50'))).toBe(true);
    } finally {
      await b.stop();
    }
  });
});
