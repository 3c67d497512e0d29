/**
 * The CV examples as containers with the Docker runtime, images built offline (never
 * pulled): py-histogram on tb-python-base:local (the host's python3 + Debian's numpy,
 * pyzmq, protobuf) and text-detector (onnxruntime-node + sharp) on tb-node-base:local.
 */
import Docker from 'dockerode';
import sharp from 'sharp';
import { OFFLINE_BASE, buildExampleImages, buildPythonImages, imageTag } from '../../examples/build-images';
import { demoPicture, overlap } from '../../examples/models/text-detector/pictures';
import { LABEL_OWNER } from '../../task-manager/docker-runtime';
import { getJson, startTestBroker, waitReady, type TestBroker } from '../helpers/broker';

jest.setTimeout(300_000);

const docker = new Docker({ socketPath: '/var/run/docker.sock' });
const quiet = (msg: string) => { if (process.env.TB_IMAGES_VERBOSE) process.stderr.write(`[images] ${msg}\n`); };
const force = process.env.TB_REBUILD_IMAGES === '1';

type Outputs = { outputs: { name: string; shape: number[]; data: number[] }[] };

describe('Python and ONNX example models in containers', () => {
  let b: TestBroker;

  beforeAll(async () => {
    // Built unless an image with the same inputs (label) exists: never a stale one.
    await buildPythonImages({ models: ['py-histogram'], log: quiet, force });
    await buildExampleImages({ models: ['text-detector'], baseImage: process.env.TB_BASE_IMAGE ?? OFFLINE_BASE, log: quiet, force });
    b = await startTestBroker({
      runtime: 'docker',
      models: {
        'py-histogram': { image: imageTag('py-histogram'), batch_size: 8, max_wait_ms: 5 },
        'text-detector': { image: imageTag('text-detector'), batch_size: 4, max_wait_ms: 5, timeout_ms: 60_000, startup_timeout_ms: 120_000 },
      },
    });
    await waitReady(b, 'py-histogram', 120_000);
    await waitReady(b, 'text-detector', 120_000);
  });
  afterAll(async () => {
    if (!b) return;
    const owner = b.config.brokerId;
    await b.stop();
    expect(await docker.listContainers({ all: true, filters: { label: [`${LABEL_OWNER}=${owner}`] } })).toEqual([]);
  });

  test('py-histogram container: a colour histogram of an uploaded picture', async () => {
    const md = await getJson(`${b.url}/v2/models/py-histogram`);
    expect(md.outputs.map((o: { name: string }) => o.name)).toEqual(['HISTOGRAM', 'MEAN_RGB']);
    const png = await sharp({ create: { width: 10, height: 10, channels: 3, background: { r: 255, g: 128, b: 0 } } }).png().toBuffer();
    const res = await fetch(`${b.url}/v2/models/py-histogram/infer`, { method: 'POST', headers: { 'content-type': 'image/png' }, body: png });
    expect(res.status).toBe(200);
    const out = (await res.json()) as Outputs;
    const hist = out.outputs.find((o) => o.name === 'HISTOGRAM')!.data;
    expect([hist[15], hist[16 + 8], hist[32]]).toEqual([100, 100, 100]);
    expect(hist.reduce((a, v) => a + v, 0)).toBe(300);
  });

  test('text-detector container: boxes on the demo picture\'s text lines', async () => {
    const p = await demoPicture(640, 480);
    const png = await sharp(p.data, { raw: { width: p.width, height: p.height, channels: 3 } }).png().toBuffer();
    const res = await fetch(`${b.url}/v2/models/text-detector/infer`, { method: 'POST', headers: { 'content-type': 'image/png' }, body: png });
    expect(res.status).toBe(200);
    const out = Object.fromEntries(((await res.json()) as Outputs).outputs.map((o) => [o.name, o]));
    const count = out.COUNT.data[0];
    expect(count).toBe(p.truth.length);
    const boxes = Array.from({ length: count }, (_, k) => {
      const [x1, y1, x2, y2] = out.BOXES.data.slice(k * 4, k * 4 + 4);
      return { x1, y1, x2, y2 };
    });
    for (const t of p.truth) expect(Math.max(...boxes.map((bx) => overlap(t, bx)))).toBeGreaterThan(0.9);
    // Without a GPU in the container the copy runs on the CPU execution provider.
    const copy = b.running.tasks.copies().find((c) => c.model === 'text-detector');
    expect(copy?.state).toBe('ready');
  });
});
