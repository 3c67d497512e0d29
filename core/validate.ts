import { BrokerError } from './errors';
import { checkTensorData } from '../proto/tensor';
import type { InferRequest, ModelMetadata } from './types';

const invalid = (msg: string) => new BrokerError('INVALID_ARGUMENT', msg);

/**
 * Rows the request carries along the batch dimension (the first dimension of every input).
 * A non-batching model (`whole`) has no batch dimension: every request counts as one row.
 */
export function requestRows(req: InferRequest, whole = false): number {
  if (req.inputs.length === 0) throw invalid(`model '${req.model}': the request has no inputs`);
  const names = new Set<string>();
  let rows = -1;
  for (const t of req.inputs) {
    if (names.has(t.name)) throw invalid(`input '${t.name}' is given twice`);
    names.add(t.name);
    const err = checkTensorData(t);
    if (err) throw invalid(err);
    if (whole) continue;
    if (t.shape.length === 0) throw invalid(`input '${t.name}': a batching model needs a batch dimension (shape is [])`);
    if (rows === -1) rows = t.shape[0];
    else if (t.shape[0] !== rows) {
      throw invalid(`inputs disagree on the batch dimension: '${req.inputs[0].name}' has ${rows} rows, '${t.name}' has ${t.shape[0]}`);
    }
  }
  if (whole) return 1;
  if (rows < 1) throw invalid('the batch dimension must be at least 1');
  return rows;
}

/** Checks names, datatypes and shapes against what the model declared in READY. */
export function validateAgainst(req: InferRequest, meta: ModelMetadata, rows: number, maxRows: number, whole = false): void {
  if (rows > maxRows) {
    throw invalid(`model '${meta.name}' takes at most ${maxRows} rows per request, got ${rows}`);
  }
  const given = new Map(req.inputs.map((t) => [t.name, t]));
  const unknown = [...given.keys()].filter((n) => !meta.inputs.some((s) => s.name === n));
  if (unknown.length > 0) {
    throw invalid(`model '${meta.name}' has no input named ${unknown.map((n) => `'${n}'`).join(', ')}`);
  }
  for (const spec of meta.inputs) {
    const t = given.get(spec.name);
    if (!t) {
      if (spec.optional) continue;
      throw invalid(`model '${meta.name}' needs input '${spec.name}', which is missing`);
    }
    if (t.datatype !== spec.datatype) {
      throw invalid(`input '${spec.name}': model '${meta.name}' expects datatype ${spec.datatype}, got ${t.datatype}`);
    }
    if (t.shape.length !== spec.shape.length || spec.shape.some((d, i) => (whole || i > 0) && d !== -1 && d !== t.shape[i])) {
      throw invalid(`input '${spec.name}': shape ${JSON.stringify(t.shape)} does not match the model's ${JSON.stringify(spec.shape)}`);
    }
  }
  if (req.outputs) {
    const known = new Set(meta.outputs.map((o) => o.name));
    const bad = req.outputs.filter((o) => !known.has(o));
    if (bad.length > 0) throw invalid(`model '${meta.name}' has no output named ${bad.map((n) => `'${n}'`).join(', ')}`);
  }
}

/** Requests with equal keys may share a batch: same inputs, datatypes and non-batch dimensions. */
export function shapeKey(req: InferRequest): string {
  return req.inputs
    .map((t) => `${t.name}:${t.datatype}:${t.shape.slice(1).join('x')}`)
    .sort()
    .join('|');
}

/** Per-request limits, the same for every bridge. */
export interface RequestLimits {
  /** Input tensors per request. */
  maxTensors: number;
  /** Elements per input tensor. */
  maxElements: number;
  /** Bytes per BYTES element. */
  maxStringBytes: number;
}

export const DEFAULT_LIMITS: RequestLimits = { maxTensors: 64, maxElements: 64 * 1024 * 1024, maxStringBytes: 16 * 1024 * 1024 };

/** Checks a request against the limits; call before any per-element work where possible. */
export function checkLimits(req: InferRequest, limits: RequestLimits): void {
  if (req.inputs.length > limits.maxTensors) {
    throw invalid(`the request has ${req.inputs.length} input tensors; the limit is ${limits.maxTensors}`);
  }
  for (const t of req.inputs) {
    const count = t.shape.reduce((n, d) => n * d, 1);
    if (count > limits.maxElements) {
      throw invalid(`input '${t.name}' has ${count} elements; the limit is ${limits.maxElements}`);
    }
    // No element can be longer than the whole tensor: only walk the elements when that could pass the limit.
    if (t.datatype === 'BYTES' && t.data.length > limits.maxStringBytes) {
      for (let pos = 0; pos + 4 <= t.data.length;) {
        const len = t.data.readUInt32LE(pos);
        if (len > limits.maxStringBytes) {
          throw invalid(`input '${t.name}' has a ${len}-byte BYTES element; the limit is ${limits.maxStringBytes}`);
        }
        pos += 4 + len;
      }
    }
  }
}
