/**
 * A stateful model (registry `stateless: false`): per sequence (a video
 * stream) it keeps the previous frame and answers, per frame, its index within
 * the sequence and a motion score, the mean absolute difference of its bytes
 * to the previous frame (0 for the first). Its answers prove per-sequence
 * state and order: a frame routed to the wrong copy or slot, or out of order,
 * gets the wrong index.
 *
 * Input FRAME: UINT8 [-1, -1, -1, 3] (one frame per row; an item may carry
 * several consecutive frames of its sequence). Outputs FRAME_INDEX INT32
 * [-1, 1], MOTION FP32 [-1, 1], and diagnostics for tests and benchmarks:
 * SLOT INT32 [-1, 1] (the sequence's slot), BATCH_ROWS INT32 [-1, 1] (rows of
 * the batch the frame was in), ENDS INT32 [-1, 3] (sequences this copy was
 * told to end so far: end, cancelled, idle), COPY BYTES [-1, 1] (TB_COPY_ID).
 *
 * Env: MOTION_A_MS + MOTION_B_MS × rows = extra time per batch (a timer;
 * default 0), MOTION_MAX_BATCH (8), MOTION_MAX_SEQUENCES (0 = the registry's),
 * MOTION_CREDITS (1 or 2 batches in flight, run one after the other; default 1),
 * MOTION_FAIL_AT (a sequence's frame of this index fails as the model's own
 * error, for tests; default -1 = never).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { bytesTensor, serve, tensorFrom, type BatchContext, type EndSequenceReason, type Model, type Tensor } from '../../../sdk/node';

const num = (name: string, dflt: number): number => {
  const v = Number(process.env[name]);
  return process.env[name] !== undefined && process.env[name] !== '' && Number.isFinite(v) ? v : dflt;
};
const A_MS = num('MOTION_A_MS', 0);
const B_MS = num('MOTION_B_MS', 0);
const FAIL_AT = num('MOTION_FAIL_AT', -1);
const COPY = process.env.TB_COPY_ID ?? `pid-${process.pid}`;

interface MotionState {
  /** Frames seen so far. */
  index: number;
  /** The previous frame's bytes (a copy: inputs are views of the link message). */
  prev?: Uint8Array;
}

const ends: Record<Exclude<EndSequenceReason, 'unspecified'>, number> = { end: 0, cancelled: 0, idle: 0 };

/** Mean absolute difference of two equally long byte arrays. */
function meanAbsDiff(a: Uint8Array, b: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    sum += d < 0 ? -d : d;
  }
  return a.length > 0 ? sum / a.length : 0;
}

export const motion: Model = {
  metadata: {
    name: 'motion',
    version: '1',
    maxBatch: num('MOTION_MAX_BATCH', 8),
    maxSequences: num('MOTION_MAX_SEQUENCES', 0) || undefined,
    credits: num('MOTION_CREDITS', 1),
    inputs: [{ name: 'FRAME', datatype: 'UINT8', shape: [-1, -1, -1, 3] }],
    outputs: [
      { name: 'FRAME_INDEX', datatype: 'INT32', shape: [-1, 1] },
      { name: 'MOTION', datatype: 'FP32', shape: [-1, 1] },
      { name: 'SLOT', datatype: 'INT32', shape: [-1, 1] },
      { name: 'BATCH_ROWS', datatype: 'INT32', shape: [-1, 1] },
      { name: 'ENDS', datatype: 'INT32', shape: [-1, 3] },
      { name: 'COPY', datatype: 'BYTES', shape: [-1, 1] },
    ],
  },

  createState: (): MotionState => ({ index: 0 }),

  async predictBatch(inputs: Record<string, Tensor>, ctx: BatchContext) {
    const frame = inputs.FRAME;
    if (!frame) throw new Error('FRAME is required');
    const n = ctx.totalRows;
    const frameBytes = frame.shape[1] * frame.shape[2] * frame.shape[3];
    const bytes = new Uint8Array(frame.data.buffer, frame.data.byteOffset, frame.data.length);
    const index = new Int32Array(n);
    const score = new Float32Array(n);
    const slot = new Int32Array(n);
    ctx.items.forEach((item, i) => {
      if (!item.sequence) {
        ctx.failItem(i, 'motion is stateful: the request needs a sequence');
        return;
      }
      const state = ctx.state<MotionState>(i);
      if (FAIL_AT >= 0 && state.index <= FAIL_AT && FAIL_AT < state.index + item.rows) {
        ctx.failItem(i, `MOTION_FAIL_AT: frame ${FAIL_AT} fails`);
        return;
      }
      for (let r = item.offset; r < item.offset + item.rows; r++) {
        const cur = bytes.subarray(r * frameBytes, (r + 1) * frameBytes);
        // A frame of another size than the previous one starts the comparison afresh.
        score[r] = state.prev && state.prev.length === cur.length ? meanAbsDiff(cur, state.prev) : 0;
        if (state.prev && state.prev.length === cur.length) state.prev.set(cur);
        else state.prev = Uint8Array.from(cur);
        index[r] = state.index++;
        slot[r] = item.sequence.slot;
      }
    });
    if (A_MS > 0 || B_MS > 0) await sleep(A_MS + B_MS * n);
    const endsRow = [ends.end, ends.cancelled, ends.idle];
    return [
      tensorFrom('FRAME_INDEX', 'INT32', [n, 1], index),
      tensorFrom('MOTION', 'FP32', [n, 1], score),
      tensorFrom('SLOT', 'INT32', [n, 1], slot),
      tensorFrom('BATCH_ROWS', 'INT32', [n, 1], new Int32Array(n).fill(n)),
      tensorFrom('ENDS', 'INT32', [n, 3], Int32Array.from({ length: n * 3 }, (_, k) => endsRow[k % 3])),
      bytesTensor('COPY', Array<string>(n).fill(COPY), [n, 1]),
    ];
  },

  endSequence(_id: string, reason: EndSequenceReason) {
    if (reason !== 'unspecified') ends[reason]++;
  },
};

if (require.main === module) void serve(motion);
