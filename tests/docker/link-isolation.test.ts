/**
 * Issue 11 #6 on Docker: a model's container sees only its own copy's socket
 * folder, read-only. A process in it (also as root) cannot rename or delete its
 * socket, and cannot reach another copy's socket or the broker's. Both models keep
 * serving. TB_TEST_SIMPLE_IMAGE runs it on another build of the simple image.
 */
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import type { BatchRequest } from '../../core/model-copies';
import type { Tensor } from '../../proto/tensor';
import { ensureTestImages } from '../helpers/images';
import { dockerTm, modelSpec, until, type DockerTm } from '../helpers/tm-docker';

const IMAGE = process.env.TB_TEST_SIMPLE_IMAGE ?? 'tensorbroker/simple:dev';

const PROBE = `
const fs = require('fs');
const out = { entries: fs.readdirSync('/run/tensorbroker'), uid: process.getuid() };
for (const [what, fn] of [['rename', () => fs.renameSync('/run/tensorbroker/link.sock', '/run/tensorbroker/x')],
                          ['unlink', () => fs.unlinkSync('/run/tensorbroker/link.sock')],
                          ['create', () => fs.writeFileSync('/run/tensorbroker/link.sock2', '')]]) {
  try { fn(); out[what] = 'done'; } catch (e) { out[what] = e.code; }
}
out.others = process.argv.slice(1).map((p) => fs.existsSync(p));
console.log(JSON.stringify(out));
`;

function probe(containerId: string, user: string, paths: string[]): Record<string, unknown> {
  const text = execFileSync('docker', ['exec', '-u', user, containerId, 'node', '-e', PROBE, ...paths], { encoding: 'utf8' });
  return JSON.parse(text.trim().split('\n').pop()!);
}

function int32(name: string, value: number): Tensor {
  return { name, datatype: 'INT32', shape: [1, 16], data: Buffer.from(new Int32Array(16).fill(value).buffer) };
}

let nextBatch = 1n;
const batch = (model: string, a: number): BatchRequest => ({
  batchId: nextBatch++, model, items: [{ requestId: 'r', rows: 1 }], tensors: [int32('INPUT0', a), int32('INPUT1', 1)], outputs: [], deadline: Date.now() + 10_000,
});

describe('link isolation between containers', () => {
  let d: DockerTm;
  beforeAll(async () => {
    await ensureTestImages(['simple']);
  });
  afterEach(async () => d?.close());

  test("a container sees only its own socket, read-only, even as root; both models keep serving", async () => {
    d = dockerTm();
    await d.tm.reconcile([modelSpec('simple', IMAGE), modelSpec('victim', IMAGE)]);
    await until(() => d.tm.copies().filter((c) => c.state === 'ready').length === 2, 60_000, 'two ready copies');
    const [mine, victim] = ['simple', 'victim'].map((m) => d.tm.copies().find((c) => c.model === m)!);
    // d.dir is the broker's socket folder. Paths as the host sees them, and as a container would if the folder were shared.
    const others = [
      path.join(d.dir, 'copies', victim.id, 'link.sock'), path.join(d.dir, 'link.sock'),
      `/run/tensorbroker/copies/${victim.id}/link.sock`, '/run/tensorbroker/link.key',
    ];
    for (const user of ['', '0']) {
      const seen = probe(mine.runtimeId!, user || '1000', others);
      expect(seen).toMatchObject({ entries: ['link.sock'], rename: 'EROFS', unlink: 'EROFS', create: 'EROFS', others: [false, false, false, false] });
    }
    for (const model of ['simple', 'victim']) {
      const res = await d.tm.controller(model)!.available()!.execute(batch(model, 41));
      expect(res.tensors[0].data.readInt32LE(0)).toBe(42);
    }
  });
});
