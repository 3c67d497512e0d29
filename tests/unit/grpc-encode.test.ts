/**
 * The hand-written answer encoder (bridges/grpc/encode.ts) against the generic
 * path (toInferResponse + toBinary): the same bytes, and the same message when
 * decoded, for every shape of answer the bridges send.
 */
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import { toInferResponse } from '../../bridges/grpc/convert';
import { encodeInferResponse, encodeStreamResponse } from '../../bridges/grpc/encode';
import type { InferResult } from '../../core/types';
import type { Tensor } from '../../proto/tensor';
import { ModelInferResponseSchema, ModelStreamInferResponseSchema } from '../../proto/gen/grpc_service_pb';

const tensor = (name: string, datatype: string, shape: number[], bytes: number): Tensor => ({
  name, datatype: datatype as Tensor['datatype'], shape, data: Buffer.from(Array.from({ length: bytes }, (_, i) => (i * 7 + 3) & 0xff)),
});

const cases: [string, InferResult, string][] = [
  ['two INT32 outputs, no client id', { id: 'x', model: 'simple', version: '1', outputs: [tensor('OUTPUT0', 'INT32', [1, 16], 64), tensor('OUTPUT1', 'INT32', [1, 16], 64)] }, ''],
  ['a client id, no version', { id: 'x', model: 'm', version: '', outputs: [tensor('Y', 'UINT8', [1, 3], 3)] }, 'client-7'],
  ['unicode names and id', { id: 'x', model: 'modèle-ü', version: '2', outputs: [tensor('sortie→', 'BYTES', [1, 1], 9)] }, 'ид-🙂'],
  ['no outputs', { id: 'x', model: 'm', version: '1', outputs: [] }, 'a'],
  ['a scalar (empty shape) and an empty tensor', { id: 'x', model: 'm', version: '1', outputs: [tensor('S', 'FP32', [], 4), tensor('E', 'FP32', [0, 4], 0)] }, ''],
  ['big dimensions (> 2^31, > 2^35) and a 200 KB output', { id: 'x', model: 'm', version: '1', outputs: [tensor('B', 'UINT8', [1, 200_000], 200_000), tensor('D', 'INT64', [3_000_000_000, 2 ** 40, 0], 0)] }, 'id'],
  ['a negative dimension (the generic path)', { id: 'x', model: 'm', version: '1', outputs: [tensor('N', 'FP32', [-1, 2], 8)] }, ''],
  ['a long model name (length varint of 2 bytes)', { id: 'x', model: 'm'.repeat(300), version: '1', outputs: [tensor('Y', 'FP32', [1, 40], 160)] }, 'q'.repeat(200)],
];

describe('encodeInferResponse', () => {
  for (const [what, result, clientId] of cases) {
    for (const final of [undefined, true, false]) {
      test(`${what}, final ${final}`, () => {
        const want = toInferResponse(result, clientId, final);
        const got = encodeInferResponse(result, clientId, final);
        expect(Buffer.from(got).equals(Buffer.from(toBinary(ModelInferResponseSchema, want)))).toBe(true);
        expect(fromBinary(ModelInferResponseSchema, got)).toEqual(fromBinary(ModelInferResponseSchema, toBinary(ModelInferResponseSchema, want)));
      });
    }
  }
});

describe('encodeStreamResponse', () => {
  for (const [what, result, clientId] of cases) {
    test(what, () => {
      const want = toBinary(ModelStreamInferResponseSchema, create(ModelStreamInferResponseSchema, { inferResponse: toInferResponse(result, clientId, true) }));
      const got = encodeStreamResponse(result, clientId, true);
      expect(Buffer.from(got).equals(Buffer.from(want))).toBe(true);
      const back = fromBinary(ModelStreamInferResponseSchema, got);
      expect(back.errorMessage).toBe('');
      expect(back.inferResponse?.id).toBe(clientId);
      expect(back.inferResponse?.parameters.triton_final_response?.parameterChoice).toEqual({ case: 'boolParam', value: true });
    });
  }
});
