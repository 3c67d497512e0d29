/**
 * Triton's classification extension: an output requested with
 * `classification: k` comes back as BYTES [rows, k], per row the k highest
 * elements as "value:index" or "value:index:label", best first. Elements are
 * compared in the output's own datatype (INT64/UINT64 as bigints, so no
 * precision is lost); ties keep the lower index first. k above the number of
 * classes is cut to it, as Triton does.
 */
import type { BrokerApi, ModelDescription } from '../../core/broker';
import { BrokerError } from '../../core/errors';
import type { InferRequest, InferResult } from '../../core/types';
import { elementCount, encodeBytes, type Tensor, type TensorSpec } from '../../proto/tensor';

const invalid = (msg: string) => new BrokerError('INVALID_ARGUMENT', msg);

/** The largest class count accepted: bounds the strings one answer makes. */
export const MAX_CLASS_COUNT = 1 << 16;

/** The class counts of a request's outputs, from (name, `classification` parameter) pairs; undefined when none asks. */
export function classificationCounts(outputs: Iterable<[string, unknown]>): Map<string, number> | undefined {
  let counts: Map<string, number> | undefined;
  for (const [name, v] of outputs) {
    const k = classCount(name, v);
    if (k !== undefined) (counts ??= new Map()).set(name, k);
  }
  return counts;
}

/** Validates a `classification` parameter (number, bigint or decimal string); undefined when absent. */
export function classCount(output: string, v: unknown): number | undefined {
  if (v === undefined || v === null) return undefined;
  const n = typeof v === 'bigint' ? Number(v) : typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > MAX_CLASS_COUNT) {
    throw invalid(`output '${output}': parameter 'classification' must be an integer from 1 to ${MAX_CLASS_COUNT} (got ${JSON.stringify(String(v))})`);
  }
  return n;
}

type Reader = (buf: Buffer, i: number) => number | bigint;

function f16(h: number): number {
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  const sign = h & 0x8000 ? -1 : 1;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

const bf16Scratch = new DataView(new ArrayBuffer(4));
function bf16(h: number): number {
  bf16Scratch.setUint32(0, h << 16);
  return bf16Scratch.getFloat32(0);
}

const READERS: Partial<Record<Tensor['datatype'], Reader>> = {
  BOOL: (b, i) => b.readUInt8(i),
  UINT8: (b, i) => b.readUInt8(i),
  INT8: (b, i) => b.readInt8(i),
  UINT16: (b, i) => b.readUInt16LE(i * 2),
  INT16: (b, i) => b.readInt16LE(i * 2),
  UINT32: (b, i) => b.readUInt32LE(i * 4),
  INT32: (b, i) => b.readInt32LE(i * 4),
  UINT64: (b, i) => b.readBigUInt64LE(i * 8),
  INT64: (b, i) => b.readBigInt64LE(i * 8),
  FP16: (b, i) => f16(b.readUInt16LE(i * 2)),
  BF16: (b, i) => bf16(b.readUInt16LE(i * 2)),
  FP32: (b, i) => b.readFloatLE(i * 4),
  FP64: (b, i) => b.readDoubleLE(i * 8),
};

/** The shortest decimal that reads back as the same float32 ("3.3", not "3.299999952316284"). */
function shortFloat32(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  for (let p = 1; p < 9; p++) {
    const s = Number(v.toPrecision(p));
    if (Math.fround(s) === v) return String(s);
  }
  return String(v);
}

/** Shortest decimal for a half/bfloat16 value: ≤ 5 significant digits tell every one apart. */
const shortHalf = (v: number) => (Number.isFinite(v) ? String(Number(v.toPrecision(5))) : String(v));

function format(datatype: Tensor['datatype'], v: number | bigint): string {
  if (typeof v === 'bigint') return v.toString();
  if (datatype === 'FP32') return shortFloat32(v);
  if (datatype === 'FP16' || datatype === 'BF16') return shortHalf(v);
  return String(v);
}

/** Greater first; NaN last; ties by index (stable sort). */
function compare(a: number | bigint, b: number | bigint): number {
  if (typeof a === 'bigint' || typeof b === 'bigint') return a > b ? -1 : a < b ? 1 : 0;
  if (Number.isNaN(a)) return Number.isNaN(b) ? 0 : 1;
  if (Number.isNaN(b)) return -1;
  return b - a;
}

/**
 * The top-`count` classes of each row of `t` (first dimension = rows, the
 * rest = classes), as a BYTES tensor [rows, min(count, classes)] of the same
 * name. `labels[i]`, when given and present, is appended to index i.
 */
export function classify(t: Tensor, count: number, labels?: readonly string[]): Tensor {
  const read = READERS[t.datatype];
  if (!read) throw invalid(`output '${t.name}': classification needs a numeric output, not ${t.datatype}`);
  if (t.shape.length === 0) throw invalid(`output '${t.name}': classification needs an output with at least one dimension`);
  const rows = t.shape.length === 1 ? 1 : t.shape[0];
  const classes = t.shape.length === 1 ? t.shape[0] : elementCount(t.shape.slice(1));
  const k = Math.min(count, classes);
  const items: string[] = [];
  const order = Array.from({ length: classes }, (_, i) => i);
  for (let r = 0; r < rows; r++) {
    const values = order.map((i) => read(t.data, r * classes + i));
    const top = [...order].sort((a, b) => compare(values[a], values[b])).slice(0, k);
    for (const i of top) {
      const label = labels?.[i];
      items.push(`${format(t.datatype, values[i])}:${i}${label !== undefined && label !== '' ? `:${label}` : ''}`);
    }
  }
  const shape = t.shape.length === 1 ? [k] : [rows, k];
  return { name: t.name, datatype: 'BYTES', shape, data: encodeBytes(items) };
}

/** Class labels of each output: the registry's (models.yaml label files) win over those a copy declared in READY. */
export type LabelSource = (output: string) => readonly string[] | undefined;

/** Replaces the outputs named in `counts` by their classification; other outputs unchanged. */
export function applyClassification(outputs: Tensor[], counts: ReadonlyMap<string, number> | undefined, labelsOf?: LabelSource): Tensor[] {
  if (!counts || counts.size === 0) return outputs;
  return outputs.map((t) => {
    const k = counts.get(t.name);
    if (k === undefined) return t;
    return classify(t, k, labelsOf?.(t.name));
  });
}

/** The labels of a model's outputs: registry first, then the READY output specs. */
export function modelLabels(registry: ModelDescription['labels'], specs: readonly TensorSpec[] | undefined): LabelSource {
  return (output) => registry?.[output] ?? specs?.find((s) => s.name === output)?.labels;
}

/**
 * broker.infer, then the classification of the outputs that asked for it,
 * labelled from models.yaml (label files) or else the model's READY output specs.
 */
export async function inferClassified(broker: Pick<BrokerApi, 'infer' | 'describe'>, req: InferRequest, counts: ReadonlyMap<string, number> | undefined): Promise<InferResult> {
  const result = await broker.infer(req);
  if (!counts || counts.size === 0) return result;
  let d: ModelDescription | undefined;
  try {
    d = broker.describe(result.model, result.version);
  } catch {
    d = undefined; // the model went away meanwhile: "value:index" only
  }
  return { ...result, outputs: applyClassification(result.outputs, counts, modelLabels(d?.labels, d?.metadata?.outputs)) };
}
