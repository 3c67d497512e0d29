/**
 * examples/clients/detect-{rest,grpc,zmq}: each sends a picture file to the text-detector
 * through its bridge and saves the annotated JPEG. Run compiled (`npm run build`) against
 * a broker with the process runtime; all three must find the same boxes on the text.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import sharp from 'sharp';
import { demoPicture, overlap, type RenderedPicture } from '../../examples/models/text-detector/pictures';
import { modelMain, ROOT, startTestBroker, waitReady, type TestBroker } from '../helpers/broker';

jest.setTimeout(120_000);
const run = promisify(execFile);
const script = (name: string) => path.join(ROOT, 'dist', 'examples', 'clients', `${name}.js`);

interface Report { bridge: string; boxes: { x1: number; y1: number; x2: number; y2: number; score: number }[]; annotated: string }

describe('text-detector client examples, one per bridge', () => {
  let b: TestBroker;
  let dir: string;
  let picture: RenderedPicture;
  let file: string;

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'tb-clients-'));
    b = await startTestBroker({
      models: { 'text-detector': { command: ['node', modelMain('text-detector')], batch_size: 4, timeout_ms: 60_000 } },
    });
    picture = await demoPicture(640, 480);
    file = path.join(dir, 'picture.jpg');
    writeFileSync(file, await sharp(picture.data, { raw: { width: 640, height: 480, channels: 3 } }).jpeg({ quality: 92 }).toBuffer());
    await waitReady(b, 'text-detector', 60_000);
  });
  afterAll(async () => {
    await b?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const endpoints = () => ({
    'detect-rest': b.url,
    'detect-grpc': `127.0.0.1:${b.running.ports.grpc}`,
    'detect-zmq': b.zmqEndpoint,
  });

  test.each(['detect-rest', 'detect-grpc', 'detect-zmq'] as const)('%s: boxes on the text lines, annotated JPEG saved', async (name) => {
    const out = path.join(dir, `${name}.jpg`);
    const { stdout } = await run(process.execPath, [script(name), file, '--endpoint', endpoints()[name], '--out', out, '--json'], { timeout: 60_000 });
    const r = JSON.parse(stdout) as Report;
    expect(r.annotated).toBe(out);
    expect(r.boxes).toHaveLength(picture.truth.length);
    for (const t of picture.truth) expect(Math.max(...r.boxes.map((bx) => overlap(t, bx)))).toBeGreaterThan(0.9);
    const meta = await sharp(readFileSync(out)).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(['jpeg', 640, 480]);
  });

  test('without a picture the scripts use the rendered demo picture; the plain output lists the boxes', async () => {
    const out = path.join(dir, 'demo.jpg');
    const { stdout } = await run(process.execPath, [script('detect-zmq'), '--endpoint', b.zmqEndpoint, '--out', out], { timeout: 60_000 });
    expect(stdout).toMatch(/^ZeroMQ: 4 text box\(es\) in demo picture/);
    expect(stdout).toContain(`annotated picture: ${out}`);
  });
});
