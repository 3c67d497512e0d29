/**
 * The Node SDK's sequence support against a fake broker, with the compiled
 * motion example: READY max_sequences, per-row control data, ctx.state per
 * sequence across batches, a fresh state on start, the state dropped (and the
 * model told) on END_SEQUENCE — unless the slot does not match.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { create } from '@bufbuild/protobuf';
import { BatchSchema, EndSequenceSchema, EndSequence_Reason, tensorsFromFrames, toMeta } from '../../proto/link';
import type { Tensor } from '../../proto/tensor';
import { startCopy, type FakeLinkBroker } from '../helpers/fake-link-broker';
import type { ChildProcess } from 'node:child_process';

const MAIN = path.resolve(__dirname, '../../dist/examples/models/motion/main.js');

const frames = (values: number[]): Tensor => ({
  name: 'FRAME', datatype: 'UINT8', shape: [values.length, 2, 2, 3],
  data: Buffer.concat(values.map((v) => Buffer.alloc(12, v))),
});

describe('Node SDK: sequences (motion model)', () => {
  let dir: string;
  let broker: FakeLinkBroker;
  let child: ChildProcess;
  let batchId = 0n;

  beforeAll(async () => {
    if (!fs.existsSync(MAIN)) throw new Error(`${MAIN} is missing: run \`npm run build\` first`);
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-sdkseq-'));
    ({ broker, child } = await startCopy(dir, [process.execPath, MAIN], 'm1', { TB_MODEL: 'motion', MOTION_MAX_SEQUENCES: '4' }));
  });
  afterAll(() => {
    if (child && child.exitCode === null) child.kill('SIGKILL');
    broker?.sock.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** One batch; items are [sequence id, slot, start, frame values]. Returns FRAME_INDEX, MOTION and ENDS per row. */
  async function batch(items: [string, number, boolean, number[]][]) {
    const t = frames(items.flatMap((it) => it[3]));
    await broker.send({
      case: 'batch',
      value: create(BatchSchema, {
        batchId: ++batchId, model: 'motion',
        items: items.map(([id, slot, start, vs], i) => ({ requestId: `r${i}`, rows: vs.length, sequence: { id, slot, start, end: false } })),
        tensors: [toMeta(t)],
      }),
    }, [t]);
    const r = await broker.next('result');
    expect(r.value.error).toBe('');
    const out = Object.fromEntries(tensorsFromFrames(r.value.tensors, r.frames).map((x) => [x.name, x]));
    const ints = (x: Tensor) => Array.from(new Int32Array(new Uint8Array(x.data).buffer));
    return { index: ints(out.FRAME_INDEX), motion: Array.from(new Float32Array(new Uint8Array(out.MOTION.data).buffer)), ends: ints(out.ENDS).slice(0, 3) };
  }

  const end = (id: string, slot: number, reason: EndSequence_Reason) =>
    broker.send({ case: 'endSequence', value: create(EndSequenceSchema, { id, slot, reason }) });

  test('READY carries max_sequences', async () => {
    const ready = await broker.next('ready');
    expect(ready.value).toMatchObject({ model: 'motion', maxBatch: 8, maxSequences: 4 });
  });

  test('state per sequence across batches; an item may carry several frames; start resets', async () => {
    expect((await batch([['A', 0, true, [10]], ['B', 1, true, [50, 52]]])).index).toEqual([0, 0, 1]);
    const r = await batch([['B', 1, false, [60]], ['A', 0, false, [14]]]);
    expect(r.index).toEqual([2, 1]);
    expect(r.motion).toEqual([8, 4]);
    expect((await batch([['A', 0, true, [0]]])).index).toEqual([0]);
  });

  test('END_SEQUENCE drops the state and tells the model; a mismatched slot is ignored', async () => {
    await end('B', 3, EndSequence_Reason.IDLE); // B lives in slot 1: not this one
    await end('A', 0, EndSequence_Reason.END);
    const r = await batch([['A', 0, false, [5]], ['B', 1, false, [61]]]);
    expect(r.index).toEqual([0, 3]); // A starts afresh (no state), B keeps its own
    expect(r.motion).toEqual([0, 1]);
    expect(r.ends).toEqual([1, 0, 1]); // the model saw both ends (end, idle), whatever the slot
  });
});
