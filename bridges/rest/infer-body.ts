/**
 * KServe v2 inference bodies <-> the broker's InferRequest / InferResult.
 * JSON form, plus the binary tensor extension (a JSON header of
 * Inference-Header-Content-Length bytes followed by raw tensor bytes).
 */
import { BrokerError } from '../../core/errors';
import { isDataType, type Tensor } from '../../proto/tensor';
import type { InferRequest, InferResult } from '../../core/types';
import { classificationCounts } from '../shared/classification';
import { requestOptions } from '../shared/parameters';
import { shmRef, writtenTo, type ShmRef } from '../shared/shm';
import { tensorFromJson, tensorToJson } from './json-tensors';
import { checkExact } from './json-body';
import { quote } from '../shared/truncate';

/** Longest tensor name accepted: names are echoed in errors, and no model has longer ones. */
export const MAX_NAME_LENGTH = 1024;

const invalid = (msg: string) => new BrokerError('INVALID_ARGUMENT', msg);

type Params = Record<string, unknown>;

export interface ParsedInfer {
  request: Omit<InferRequest, 'model' | 'version' | 'signal'>;
  /** Output names wanted in binary form (Triton's binary_data); '*' = all. */
  binaryOutputs: Set<string>;
  /** The request's own `id`, echoed in the answer; undefined when the client gave none. */
  clientId?: string;
  /** Outputs asked for as top-k classes (classification extension). */
  classification?: Map<string, number>;
  /** Inputs read from, and outputs written into, shared memory regions. */
  shmInputs?: Map<string, ShmRef>;
  shmOutputs?: Map<string, ShmRef>;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Parses a request body. `binary` is the bytes after the JSON header (binary
 * extension), or undefined for a pure JSON body.
 */
export function parseInferBody(header: unknown, binary: Buffer | undefined, fallbackId: string): ParsedInfer {
  if (!isObject(header)) throw invalid('the request body must be a JSON object');
  const params: Params = isObject(header.parameters) ? header.parameters : {};
  if (!Array.isArray(header.inputs) || header.inputs.length === 0) throw invalid("the request needs a non-empty 'inputs' array");
  let offset = 0;
  let shmInputs: Map<string, ShmRef> | undefined;
  let shmOutputs: Map<string, ShmRef> | undefined;
  const inputs: Tensor[] = header.inputs.map((raw: unknown, i: number) => {
    if (!isObject(raw)) throw invalid(`inputs[${i}] must be an object`);
    const { name, datatype, shape } = raw;
    if (typeof name !== 'string' || name === '') throw invalid(`inputs[${i}] needs a 'name'`);
    if (name.length > MAX_NAME_LENGTH) throw invalid(`inputs[${i}]: the name ${quote(name)} is longer than ${MAX_NAME_LENGTH} characters`);
    if (!isDataType(datatype)) throw invalid(`input '${name}': unknown datatype ${quote(datatype)}`);
    if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
      throw invalid(`input '${name}': 'shape' must be an array of non-negative integers`);
    }
    const p = isObject(raw.parameters) ? raw.parameters : {};
    const ref = shmRef(`input '${name}'`, p);
    if (ref) {
      if (raw.data !== undefined || p.binary_data_size !== undefined) throw invalid(`input '${name}' names a shared memory region and carries data too`);
      (shmInputs ??= new Map()).set(name, ref);
      return { name, datatype, shape: shape as number[], data: Buffer.alloc(0) }; // read from the region before the request is queued
    }
    const size = p.binary_data_size;
    if (size !== undefined) {
      if (!binary) throw invalid(`input '${name}' has binary_data_size but the request has no Inference-Header-Content-Length`);
      if (typeof size !== 'number' || !Number.isInteger(size) || size < 0) throw invalid(`input '${name}': binary_data_size must be a non-negative integer`);
      if (offset + size > binary.length) throw invalid(`input '${name}': binary_data_size ${size} runs past the end of the body`);
      const data = binary.subarray(offset, offset + size);
      offset += size;
      return { name, datatype, shape: shape as number[], data };
    }
    if (raw.data === undefined) throw invalid(`input '${name}' has neither 'data' nor binary_data_size`);
    return tensorFromJson(name, datatype, shape as number[], raw.data);
  });
  if (binary && offset !== binary.length) throw invalid(`the body has ${binary.length - offset} bytes after the last binary input`);

  const binaryOutputs = new Set<string>();
  if (params.binary_data_output === true) binaryOutputs.add('*');
  let outputs: string[] | undefined;
  if (header.outputs !== undefined) {
    if (!Array.isArray(header.outputs)) throw invalid("'outputs' must be an array");
    outputs = header.outputs.map((o: unknown, i: number) => {
      if (!isObject(o) || typeof o.name !== 'string') throw invalid(`outputs[${i}] needs a 'name'`);
      if (o.name.length > MAX_NAME_LENGTH) throw invalid(`outputs[${i}]: the name ${quote(o.name)} is longer than ${MAX_NAME_LENGTH} characters`);
      const op = isObject(o.parameters) ? o.parameters : {};
      const ref = shmRef(`output '${o.name}'`, op);
      if (ref) (shmOutputs ??= new Map()).set(o.name, ref);
      if (op.binary_data === true) binaryOutputs.add(o.name);
      else if (op.binary_data === false) binaryOutputs.delete(o.name);
      return o.name;
    });
  }

  if (header.id !== undefined && typeof header.id !== 'string' && typeof header.id !== 'number' && typeof header.id !== 'bigint') {
    throw invalid(`the request's 'id' must be a string (got ${quote(header.id)})`);
  }
  checkExact(header.id, "the request's 'id'");
  checkExact(params.sequence_id, "parameter 'sequence_id'");
  const id = header.id === undefined ? fallbackId : String(header.id);
  const classification = Array.isArray(header.outputs)
    ? classificationCounts(header.outputs.map((o: Record<string, unknown>) => [o.name as string, isObject(o.parameters) ? o.parameters.classification : undefined]))
    : undefined;
  return {
    request: { id, inputs, outputs, ...requestOptions(params) },
    binaryOutputs,
    clientId: header.id === undefined ? undefined : id,
    ...(classification ? { classification } : {}),
    ...(shmInputs ? { shmInputs } : {}),
    ...(shmOutputs ? { shmOutputs } : {}),
  };
}

/** Splits a binary-extension body into its JSON header (text) and the raw bytes after it. */
export function splitBinaryBody(body: Buffer, headerLength: number): { header: string; binary: Buffer } {
  if (!Number.isInteger(headerLength) || headerLength < 0 || headerLength > body.length) {
    throw invalid(`Inference-Header-Content-Length ${quote(headerLength)} does not fit a body of ${body.length} bytes`);
  }
  return { header: body.toString('utf8', 0, headerLength), binary: body.subarray(headerLength) };
}

export interface EncodedResponse {
  json: Record<string, unknown>;
  /** Raw output bytes to append after the JSON (binary extension), in output order. */
  binary: Buffer[];
}

export function encodeInferResult(result: InferResult, id: string | undefined, binaryOutputs: Set<string>): EncodedResponse {
  const binary: Buffer[] = [];
  const outputs = result.outputs.map((t) => {
    const out: Record<string, unknown> = { name: t.name, datatype: t.datatype, shape: t.shape };
    const shm = writtenTo(t);
    if (shm) out.parameters = { shared_memory_region: shm.region, shared_memory_byte_size: shm.byteSize, shared_memory_offset: shm.offset };
    else if (binaryOutputs.has('*') || binaryOutputs.has(t.name)) {
      out.parameters = { binary_data_size: t.data.length };
      binary.push(t.data);
    } else out.data = tensorToJson(t);
    return out;
  });
  const json: Record<string, unknown> = { model_name: result.model, model_version: result.version };
  if (id !== undefined) json.id = id;
  json.outputs = outputs;
  return { json, binary };
}
