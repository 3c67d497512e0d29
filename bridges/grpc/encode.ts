/**
 * The answers of ModelInfer and ModelStreamInfer written straight to protobuf
 * bytes: one size pass, one Buffer, each output's bytes copied in once. The
 * generic path (create() + the reflective toBinary) built a message object
 * with BigInt shapes per answer and cost more CPU and garbage per call than
 * the rest of the bridge (bench/README.md, "gRPC"). Decodes to exactly what
 * toInferResponse() builds (tests/unit/grpc-encode.test.ts); the server's
 * serializer passes these Buffers through (service-definition.ts).
 *
 * Wire format: field numbers of proto/grpc_service.proto; fields in number
 * order, empty strings left out, shapes packed, as toBinary writes them.
 */
import { create, toBinary } from '@bufbuild/protobuf';
import type { InferResult } from '../../core/types';
import { ModelInferResponseSchema } from '../../proto/gen/grpc_service_pb';
import { toInferResponse } from './convert';

const varintSize = (n: number) => (n < 0x80 ? 1 : n < 0x4000 ? 2 : n < 0x200000 ? 3 : n < 0x10000000 ? 4 : n < 2 ** 35 ? 5 : n < 2 ** 42 ? 6 : n < 2 ** 49 ? 7 : n < 2 ** 56 ? 8 : 9);

function writeVarint(buf: Buffer, at: number, n: number): number {
  while (n >= 0x80) {
    buf[at++] = (n % 0x80) | 0x80;
    n = Math.floor(n / 0x80);
  }
  buf[at++] = n;
  return at;
}

/** UTF-8 bytes of the strings that repeat in every answer (model, version, output names, datatypes); bounded. */
const utf8Cache = new Map<string, Buffer>();
function utf8(s: string): Buffer {
  let b = utf8Cache.get(s);
  if (b === undefined) {
    b = Buffer.from(s, 'utf8');
    if (utf8Cache.size >= 4096) utf8Cache.clear();
    utf8Cache.set(s, b);
  }
  return b;
}

/** The `parameters` entry `triton_final_response: <flag>` (field 4), encoded once by toBinary itself. */
const FINAL = [false, true].map((value) => {
  const b = toBinary(ModelInferResponseSchema, create(ModelInferResponseSchema, {
    parameters: { triton_final_response: { parameterChoice: { case: 'boolParam', value } } },
  }));
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength);
});

const fieldSize = (len: number) => 1 + varintSize(len) + len; // tag (field < 16) + length + bytes

function writeBytes(buf: Buffer, at: number, tag: number, bytes: Uint8Array): number {
  buf[at++] = tag;
  at = writeVarint(buf, at, bytes.byteLength);
  buf.set(bytes, at);
  return at + bytes.byteLength;
}

function writeString(buf: Buffer, at: number, tag: number, s: string, len: number): number {
  buf[at++] = tag;
  at = writeVarint(buf, at, len);
  return at + buf.write(s, at, len, 'utf8');
}

const TAG = (field: number, wire: number) => (field << 3) | wire;

/** Whether every shape dimension is a non-negative safe integer (what the fast path writes; others go through toBinary). */
const plainShapes = (r: InferResult) => r.outputs.every((t) => t.shape.every((d) => Number.isSafeInteger(d) && d >= 0));

/** The bytes of one ModelInferResponse; `final` as in toInferResponse (stream answers carry triton_final_response). */
export function encodeInferResponse(result: InferResult, clientId: string, final?: boolean, headroom = 0): Buffer {
  if (!plainShapes(result)) return slowEncode(result, clientId, final, headroom);
  // `?? ''`: as create() would, should a result ever come without them at run time.
  const model = utf8(result.model ?? '');
  const version = utf8(result.version ?? '');
  const idLen = Buffer.byteLength(clientId, 'utf8');
  const params = final === undefined ? undefined : FINAL[final ? 1 : 0];
  let size = (model.length ? fieldSize(model.length) : 0) + (version.length ? fieldSize(version.length) : 0) + (idLen ? fieldSize(idLen) : 0) + (params?.length ?? 0);
  const outs = result.outputs;
  const tensorLen: number[] = new Array(outs.length);
  const shapeLen: number[] = new Array(outs.length);
  for (let i = 0; i < outs.length; i++) {
    const t = outs[i];
    let sl = 0;
    for (const d of t.shape) sl += varintSize(d);
    shapeLen[i] = sl;
    const name = utf8(t.name).length;
    const dt = utf8(t.datatype).length;
    const len = (name ? fieldSize(name) : 0) + (dt ? fieldSize(dt) : 0) + (sl ? fieldSize(sl) : 0);
    tensorLen[i] = len;
    size += fieldSize(len) + fieldSize(t.data.byteLength);
  }
  const buf = Buffer.allocUnsafe(headroom + size);
  let at = headroom;
  if (model.length) at = writeBytes(buf, at, TAG(1, 2), model);
  if (version.length) at = writeBytes(buf, at, TAG(2, 2), version);
  if (idLen) at = writeString(buf, at, TAG(3, 2), clientId, idLen);
  if (params) {
    params.copy(buf, at);
    at += params.length;
  }
  for (let i = 0; i < outs.length; i++) {
    const t = outs[i];
    buf[at++] = TAG(5, 2);
    at = writeVarint(buf, at, tensorLen[i]);
    const name = utf8(t.name);
    const dt = utf8(t.datatype);
    if (name.length) at = writeBytes(buf, at, TAG(1, 2), name);
    if (dt.length) at = writeBytes(buf, at, TAG(2, 2), dt);
    if (shapeLen[i]) {
      buf[at++] = TAG(3, 2);
      at = writeVarint(buf, at, shapeLen[i]);
      for (const d of t.shape) at = writeVarint(buf, at, d);
    }
  }
  for (const t of outs) at = writeBytes(buf, at, TAG(6, 2), t.data);
  return buf;
}

function slowEncode(result: InferResult, clientId: string, final: boolean | undefined, headroom: number): Buffer {
  const b = toBinary(ModelInferResponseSchema, toInferResponse(result, clientId, final));
  const buf = Buffer.allocUnsafe(headroom + b.byteLength);
  buf.set(b, headroom);
  return buf;
}

/** The bytes of a ModelStreamInferResponse whose infer_response (field 2) is this result. */
export function encodeStreamResponse(result: InferResult, clientId: string, final: boolean): Buffer {
  // Encode the inner message with room before it for the outer tag and length (at most 1 + 5 bytes).
  const inner = encodeInferResponse(result, clientId, final, 6);
  const len = inner.length - 6;
  const head = 1 + varintSize(len);
  const start = 6 - head;
  inner[start] = TAG(2, 2);
  writeVarint(inner, start + 1, len);
  return inner.subarray(start);
}
