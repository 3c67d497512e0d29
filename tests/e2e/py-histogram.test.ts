/**
 * Python models (sdk/python/tensorbroker_model) through the whole broker with the
 * process runtime: the py-histogram example over REST image uploads and the ZeroMQ
 * bridge, and the SDK's test model for per-item and per-batch errors. Run by
 * Debian's /usr/bin/python3; skipped, with the reason printed, only when
 * python3-zmq/numpy/protobuf are missing.
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import sharp from 'sharp';
import { ZmqClient, typedArray } from '../../sdk/node';
import { getJson, postJson, ROOT, startTestBroker, waitReady, type TestBroker } from '../helpers/broker';

const PYTHON = '/usr/bin/python3';
const missing = (() => {
  const r = spawnSync(PYTHON, ['-c', 'import zmq, numpy, google.protobuf'], { encoding: 'utf8' });
  if (r.error) return `${PYTHON} cannot run (${r.error.message})`;
  return r.status === 0 ? undefined : `${PYTHON} lacks a module: ${r.stderr.trim().split('\n').pop()}`;
})();
if (missing) console.warn(`SKIPPING the Python model tests: ${missing}. Install python3-zmq python3-numpy python3-protobuf.`);
const describeIfPython = missing ? describe.skip : describe;

const BINS = 16;
const pyModel = (file: string, extra: Record<string, unknown> = {}) => ({
  command: [PYTHON, path.join(ROOT, file)],
  env: { PYTHONPATH: path.join(ROOT, 'sdk', 'python'), PYTHONDONTWRITEBYTECODE: '1' },
  batch_size: 8,
  max_wait_ms: 20,
  ...extra,
});

/** The histogram the model must give: counts of v * BINS / 256 per channel. */
function expectedHistogram(rgb: Uint8Array): number[] {
  const h = new Array<number>(3 * BINS).fill(0);
  for (let i = 0; i < rgb.length; i++) h[(i % 3) * BINS + (rgb[i] >> 4)]++;
  return h;
}

describeIfPython('Python models through the broker (process runtime)', () => {
  let b: TestBroker;
  let client: ZmqClient;

  beforeAll(async () => {
    b = await startTestBroker({
      models: {
        'py-histogram': pyModel('examples/models/py-histogram/model.py'),
        'py-sdk': pyModel('tests/python/sdk_test_model.py'),
      },
    });
    client = new ZmqClient(b.zmqEndpoint, { timeoutMs: 20_000 });
    await Promise.all(['py-histogram', 'py-sdk'].map((m) => waitReady(b, m)));
  });
  afterAll(async () => {
    await client?.close();
    await b?.stop();
  });

  test('metadata comes from the Python model\'s READY', async () => {
    const md = await getJson(`${b.url}/v2/models/py-histogram`);
    expect(md.inputs).toEqual([{ name: 'IMAGE', datatype: 'UINT8', shape: [-1, -1, -1, 3] }]);
    expect(md.outputs).toEqual([
      { name: 'HISTOGRAM', datatype: 'INT32', shape: [-1, 3, BINS] },
      { name: 'MEAN_RGB', datatype: 'FP32', shape: [-1, 3] },
    ]);
  });

  test('REST image upload of a solid colour: all pixels in one bin per channel, exact mean', async () => {
    const png = await sharp({ create: { width: 40, height: 30, channels: 3, background: { r: 200, g: 16, b: 95 } } }).png().toBuffer();
    const res = await fetch(`${b.url}/v2/models/py-histogram/infer`, { method: 'POST', headers: { 'content-type': 'image/png' }, body: png });
    expect(res.status).toBe(200);
    const json = (await res.json()) as { outputs: { name: string; shape: number[]; data: number[] }[] };
    const hist = json.outputs.find((o) => o.name === 'HISTOGRAM')!;
    expect(hist.shape).toEqual([1, 3, BINS]);
    const want = new Array<number>(3 * BINS).fill(0);
    want[200 >> 4] = 1200;
    want[BINS + (16 >> 4)] = 1200;
    want[2 * BINS + (95 >> 4)] = 1200;
    expect(hist.data).toEqual(want);
    expect(json.outputs.find((o) => o.name === 'MEAN_RGB')!.data).toEqual([200, 16, 95]);
  });

  test('multipart upload of two pictures: one request of two rows, in order', async () => {
    const form = new FormData();
    for (const [name, colour] of [['black', { r: 0, g: 0, b: 0 }], ['white', { r: 255, g: 255, b: 255 }]] as const) {
      const png = await sharp({ create: { width: 8, height: 8, channels: 3, background: colour } }).png().toBuffer();
      form.append(name, new Blob([png], { type: 'image/png' }), `${name}.png`);
    }
    const res = await fetch(`${b.url}/v2/models/py-histogram/infer`, { method: 'POST', body: form });
    expect(res.status).toBe(200);
    const json = (await res.json()) as { outputs: { name: string; data: number[] }[] };
    expect(json.outputs.find((o) => o.name === 'MEAN_RGB')!.data).toEqual([0, 0, 0, 255, 255, 255]);
  });

  test('32 concurrent random pictures over ZeroMQ: exact histograms, batched', async () => {
    const before = (await getJson(`${b.url}/v2/models/py-histogram/stats`)).model_stats[0];
    const pics = Array.from({ length: 32 }, () => {
      const data = Buffer.alloc(24 * 20 * 3);
      for (let i = 0; i < data.length; i++) data[i] = Math.floor(Math.random() * 256);
      return data;
    });
    const results = await Promise.all(pics.map((data) => client.infer('py-histogram', [{ name: 'IMAGE', datatype: 'UINT8', shape: [1, 20, 24, 3], data }], { outputs: ['HISTOGRAM'] })));
    results.forEach((r, i) => {
      expect(r.outputs.map((t) => t.name)).toEqual(['HISTOGRAM']);
      expect(Array.from(typedArray(r.outputs[0]) as Int32Array)).toEqual(expectedHistogram(pics[i]));
    });
    const after = (await getJson(`${b.url}/v2/models/py-histogram/stats`)).model_stats[0];
    expect(after.inference_count - before.inference_count).toBe(32);
    expect(after.execution_count - before.execution_count).toBeLessThan(32);
  });

  test('a row the Python model rejects fails only its request; the others in the batch succeed', async () => {
    const body = (v: number) => ({ inputs: [{ name: 'X', datatype: 'FP32', shape: [1, 4], data: [v, 0, 0, 0] }], outputs: [{ name: 'Y' }] });
    const results = await Promise.all([1, 999, 2, 3].map((v) => postJson(`${b.url}/v2/models/py-sdk/infer`, body(v))));
    expect(results.map((r) => r.status)).toEqual([200, 500, 200, 200]);
    expect(results[1].json.error).toMatch(/row rejected by model/);
    expect(results[2].json.outputs[0].data).toEqual([4, 0, 0, 0]);
  });

  test('an exception in predict_batch is a 500 with its message; the copy keeps serving', async () => {
    const bad = await postJson(`${b.url}/v2/models/py-sdk/infer`, { inputs: [{ name: 'X', datatype: 'FP32', shape: [1, 4], data: [-1, 0, 0, 0] }] });
    expect(bad.status).toBe(500);
    expect(bad.json.error).toMatch(/asked to raise/);
    const good = await postJson(`${b.url}/v2/models/py-sdk/infer`, { inputs: [{ name: 'X', datatype: 'FP32', shape: [1, 4], data: [5, 0, 0, 0] }], outputs: [{ name: 'Y' }] });
    expect(good.status).toBe(200);
    expect(good.json.outputs[0].data).toEqual([10, 0, 0, 0]);
  });
});
