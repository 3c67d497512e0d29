/**
 * KServe v2 gRPC messages <-> the broker's InferRequest / InferResult.
 * Inputs arrive as `raw_input_contents` (one blob per input, tritonclient's
 * default; kept as views, no copy) or as typed `InferTensorContents` (turned
 * into raw little-endian bytes here). Outputs always leave as
 * `raw_output_contents`.
 */
import { create } from '@bufbuild/protobuf';
import { BrokerError } from '../../core/errors';
import { elementCount, encodeBytes, isDataType, type DataType, type Tensor } from '../../proto/tensor';
import type { InferRequest, InferResult } from '../../core/types';
import {
  ModelInferResponseSchema,
  type InferParameter,
  type InferTensorContents,
  type ModelInferRequest,
  type ModelInferResponse,
} from '../../proto/gen/grpc_service_pb';
import { classificationCounts } from '../shared/classification';
import { requestOptions } from '../shared/parameters';
import { shmRef, type ShmRef } from '../shared/shm';

const invalid = (msg: string) => new BrokerError('INVALID_ARGUMENT', msg);

export interface ParsedInfer {
  request: Omit<InferRequest, 'signal'>;
  /** The client's id, echoed in the answer ('' when it gave none, as Triton does). */
  clientId: string;
  /** Outputs asked for as top-k classes (classification extension). */
  classification?: Map<string, number>;
  /** Inputs read from, and outputs written into, shared memory regions. */
  shmInputs?: Map<string, ShmRef>;
  shmOutputs?: Map<string, ShmRef>;
}

const NO_VALUES: Readonly<Record<string, unknown>> = Object.freeze({});

/** InferParameter map -> plain values (bool, bigint, string or number) for requestOptions(). */
export function parameterValues(params: { [key: string]: InferParameter }): Record<string, unknown> {
  let out: Record<string, unknown> | undefined;
  // for-in, not Object.entries: most requests and tensors carry no parameters, and this runs for each.
  for (const key in params) (out ??= {})[key] = params[key].parameterChoice.value;
  return out ?? NO_VALUES;
}

function shapeOf(name: string, shape: bigint[]): number[] {
  return shape.map((d) => {
    if (d < 0n || d > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw invalid(`input '${name}': shape [${shape.join(',')}] has an invalid dimension`);
    }
    return Number(d);
  });
}

const view = (a: ArrayBufferView) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

type ContentField = Exclude<keyof InferTensorContents, '$typeName' | '$unknown'>;

/** Which typed field carries each datatype (FP16/BF16 have none). */
const FIELD: Record<Exclude<DataType, 'FP16' | 'BF16'>, ContentField> = {
  BOOL: 'boolContents',
  INT8: 'intContents', INT16: 'intContents', INT32: 'intContents',
  INT64: 'int64Contents',
  UINT8: 'uintContents', UINT16: 'uintContents', UINT32: 'uintContents',
  UINT64: 'uint64Contents',
  FP32: 'fp32Contents',
  FP64: 'fp64Contents',
  BYTES: 'bytesContents',
};

const SNAKE: Record<ContentField, string> = {
  boolContents: 'bool_contents', intContents: 'int_contents', int64Contents: 'int64_contents',
  uintContents: 'uint_contents', uint64Contents: 'uint64_contents', fp32Contents: 'fp32_contents',
  fp64Contents: 'fp64_contents', bytesContents: 'bytes_contents',
};

const INT_RANGE: Partial<Record<DataType, [number, number, Int8ArrayConstructor | Int16ArrayConstructor | Uint8ArrayConstructor | Uint16ArrayConstructor]>> = {
  INT8: [-128, 127, Int8Array],
  INT16: [-32768, 32767, Int16Array],
  UINT8: [0, 255, Uint8Array],
  UINT16: [0, 65535, Uint16Array],
};

/** Typed contents -> raw little-endian bytes (BYTES: 4-byte LE length + bytes per element). */
export function contentsToRaw(name: string, datatype: DataType, shape: number[], c: InferTensorContents): Buffer {
  if (datatype === 'FP16' || datatype === 'BF16') {
    throw invalid(`input '${name}': ${datatype} has no typed contents field; send it in raw_input_contents`);
  }
  const field = FIELD[datatype];
  const values = c[field];
  const count = elementCount(shape);
  if (values.length !== count) {
    const other = (Object.keys(SNAKE) as ContentField[]).find((f) => f !== field && c[f].length > 0);
    const hint = values.length === 0 && other ? ` (${datatype} takes ${SNAKE[field]}, the request filled ${SNAKE[other]})` : '';
    throw invalid(`input '${name}': shape [${shape.join(',')}] needs ${count} elements, ${SNAKE[field]} has ${values.length}${hint}`);
  }
  const range = INT_RANGE[datatype];
  if (range) {
    const [min, max, Ctor] = range;
    const ints = values as number[];
    const arr = new Ctor(count);
    for (let i = 0; i < count; i++) {
      const v = ints[i];
      if (v < min || v > max) throw invalid(`input '${name}': element ${i} (${v}) is out of the ${datatype} range`);
      arr[i] = v;
    }
    return view(arr);
  }
  switch (datatype) {
    case 'BOOL':
      return view(Uint8Array.from(values as boolean[], (b) => (b ? 1 : 0)));
    case 'INT32':
      return view(Int32Array.from(values as number[]));
    case 'UINT32':
      return view(Uint32Array.from(values as number[]));
    case 'INT64':
      return view(BigInt64Array.from(values as bigint[]));
    case 'UINT64':
      return view(BigUint64Array.from(values as bigint[]));
    case 'FP32':
      return view(Float32Array.from(values as number[]));
    case 'FP64':
      return view(Float64Array.from(values as number[]));
    case 'BYTES':
      return encodeBytes(values as Uint8Array[]);
    default:
      throw invalid(`input '${name}': unsupported datatype ${datatype}`);
  }
}

const hasContents = (c: InferTensorContents | undefined) =>
  c !== undefined && (Object.keys(SNAKE) as ContentField[]).some((f) => c[f].length > 0);

function shmOutputRefs(msg: ModelInferRequest): Map<string, ShmRef> | undefined {
  let refs: Map<string, ShmRef> | undefined;
  for (const o of msg.outputs) {
    const ref = shmRef(`output '${o.name}'`, parameterValues(o.parameters));
    if (ref) (refs ??= new Map()).set(o.name, ref);
  }
  return refs;
}

/** ModelInferRequest -> InferRequest (without the abort signal). Throws INVALID_ARGUMENT. */
export function parseInferRequest(msg: ModelInferRequest, fallbackId: string): ParsedInfer {
  if (msg.modelName === '') throw invalid('the request needs a model_name');
  if (msg.inputs.length === 0) throw invalid('the request has no inputs');
  const raw = msg.rawInputContents;
  // Inputs in shared memory have no raw_input_contents entry: the entries are the other inputs', in order (as tritonclient sends them).
  const refs = msg.inputs.map((t) => shmRef(`input '${t.name}'`, parameterValues(t.parameters)));
  const carried = refs.filter((r) => r === undefined).length;
  if (raw.length > 0 && raw.length !== carried) {
    throw invalid(`raw_input_contents has ${raw.length} entries for ${carried} inputs not in shared memory; give one per input, in order`);
  }
  let shmInputs: Map<string, ShmRef> | undefined;
  let nextRaw = 0;
  const inputs: Tensor[] = msg.inputs.map((t, i) => {
    const name = t.name;
    if (name === '') throw invalid(`inputs[${i}] needs a name`);
    if (!isDataType(t.datatype)) throw invalid(`input '${name}': unknown datatype ${JSON.stringify(t.datatype)}`);
    const shape = shapeOf(name, t.shape);
    const ref = refs[i];
    if (ref) {
      if (hasContents(t.contents)) throw invalid(`input '${name}' names a shared memory region and has contents too`);
      (shmInputs ??= new Map()).set(name, ref);
      return { name, datatype: t.datatype, shape, data: Buffer.alloc(0) }; // read from the region before the request is queued
    }
    if (raw.length > 0) {
      if (hasContents(t.contents)) throw invalid(`input '${name}' has typed contents while the request uses raw_input_contents`);
      return { name, datatype: t.datatype, shape, data: view(raw[nextRaw++]) };
    }
    if (!t.contents) throw invalid(`input '${name}' has no data: give its contents or raw_input_contents`);
    return { name, datatype: t.datatype, shape, data: contentsToRaw(name, t.datatype, shape, t.contents) };
  });
  const outputs = msg.outputs.length > 0 ? msg.outputs.map((o) => o.name) : undefined;
  return {
    request: {
      id: msg.id !== '' ? msg.id : fallbackId,
      model: msg.modelName,
      version: msg.modelVersion !== '' ? msg.modelVersion : undefined,
      inputs,
      outputs,
      ...requestOptions(parameterValues(msg.parameters)),
    },
    clientId: msg.id,
    classification: classificationCounts(msg.outputs.map((o) => [o.name, parameterValues(o.parameters).classification])),
    shmInputs,
    shmOutputs: shmOutputRefs(msg),
  };
}

/**
 * Milliseconds left until the call's deadline (epoch ms or a Date; Infinity =
 * none), or undefined without one. Throws DEADLINE_EXCEEDED when it has passed.
 */
export function deadlineMs(deadline: Date | number, now = Date.now()): number | undefined {
  const at = deadline instanceof Date ? deadline.getTime() : deadline;
  if (!Number.isFinite(at)) return undefined;
  const left = at - now;
  if (left <= 0) throw new BrokerError('DEADLINE_EXCEEDED', 'the call deadline passed before the request was queued');
  return Math.max(1, Math.floor(left));
}

/** Longest delay a Node timer takes (setTimeout fires at once beyond it). */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * The request's timeout: the smaller of the client's deadline and its `timeout`
 * parameter. A deadline further away than a timer can wait (24.8 days) is left
 * to gRPC itself (grpcjs-fixes.ts keeps it exact), so it never overflows a timer.
 */
export function withDeadline<T extends { timeoutMs?: number }>(req: T, deadline: Date | number): T {
  const left = deadlineMs(deadline);
  if (left === undefined || left > MAX_TIMER_MS) return req;
  return { ...req, timeoutMs: req.timeoutMs === undefined ? left : Math.min(req.timeoutMs, left) };
}

/** `final`: set Triton's `triton_final_response` parameter (stream answers), else leave it out (unary). */
export function toInferResponse(result: InferResult, clientId: string, final?: boolean): ModelInferResponse {
  return create(ModelInferResponseSchema, {
    ...(final === undefined ? {} : { parameters: { triton_final_response: { parameterChoice: { case: 'boolParam' as const, value: final } } } }),
    modelName: result.model,
    modelVersion: result.version,
    id: clientId,
    outputs: result.outputs.map((t) => ({ name: t.name, datatype: t.datatype, shape: t.shape.map((d) => BigInt(d)) })),
    rawOutputContents: result.outputs.map((t) => t.data),
  });
}
