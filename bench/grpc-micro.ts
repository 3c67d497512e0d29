/**
 * `node dist/bench/grpc-micro.js`: CPU time per call of the gRPC bridge's own
 * per-request steps, in one process, old way vs new way side by side (the
 * `simple` reply and request of bench/grpc.ts). CPU time, not wall time, so a
 * busy machine moves it little. See bench/README.md, "gRPC".
 */
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import { parseInferRequest, toInferResponse } from '../bridges/grpc/convert';
import { encodeInferResponse, encodeStreamResponse } from '../bridges/grpc/encode';
import type { InferResult } from '../core/types';
import { ModelInferRequestSchema, ModelInferResponseSchema, ModelStreamInferResponseSchema } from '../proto/gen/grpc_service_pb';

const data = Buffer.from(new Int32Array(16).fill(7).buffer);
const result: InferResult = {
  id: 'g1', model: 'simple', version: '1',
  outputs: [{ name: 'OUTPUT0', datatype: 'INT32', shape: [1, 16], data }, { name: 'OUTPUT1', datatype: 'INT32', shape: [1, 16], data }],
};
const reqBytes = toBinary(ModelInferRequestSchema, create(ModelInferRequestSchema, {
  modelName: 'simple', id: 's1',
  inputs: ['INPUT0', 'INPUT1'].map((name) => ({ name, datatype: 'INT32', shape: [1n, 16n] })),
  rawInputContents: [data, data],
}));

/** CPU µs per call of `fn`, best of 5 rounds of n calls. */
function cost(fn: () => unknown, n = 50_000): number {
  let best = Infinity;
  for (let r = 0; r < 5; r++) {
    const t0 = process.cpuUsage();
    for (let i = 0; i < n; i++) fn();
    const t = process.cpuUsage(t0);
    best = Math.min(best, (t.user + t.system) / n);
  }
  return best;
}

const rows: [string, string, number][] = [
  ['unary answer', 'create + toBinary (before)', cost(() => toBinary(ModelInferResponseSchema, toInferResponse(result, 's1')))],
  ['unary answer', 'encodeInferResponse (after)', cost(() => encodeInferResponse(result, 's1'))],
  ['stream answer', 'create + toBinary (before)', cost(() => toBinary(ModelStreamInferResponseSchema, create(ModelStreamInferResponseSchema, { inferResponse: toInferResponse(result, 's1', true) })))],
  ['stream answer', 'encodeStreamResponse (after)', cost(() => encodeStreamResponse(result, 's1', true))],
  ['request', 'fromBinary', cost(() => fromBinary(ModelInferRequestSchema, reqBytes))],
  ['request', 'fromBinary + parseInferRequest', cost(() => parseInferRequest(fromBinary(ModelInferRequestSchema, reqBytes), 'x'))],
];
process.stdout.write('| step | how | CPU µs per call |\n|---|---|---:|\n');
for (const [step, how, us] of rows) process.stdout.write(`| ${step} | ${how} | ${us.toFixed(2)} |\n`);
