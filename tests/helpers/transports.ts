/**
 * One client interface over every bridge, for the conformance suite: a
 * request as raw tensors in, a normalised outcome out (decoded values, or the
 * broker's error code recovered from the protocol's own status).
 */
import { tensorToJson } from '../../bridges/rest/json-tensors';
import { parseJson, stringifyJson } from '../../bridges/rest/json-body';
import { HTTP_STATUS, type ErrorCode } from '../../core/errors';
import type { DataType, Tensor } from '../../proto/tensor';
import type { ServiceError } from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';
import { GRPC_STATUS } from '../../core/errors';
import { ModelInferRequestSchema, type ModelInferResponse } from '../../proto/gen/grpc_service_pb';
import { ZmqClient, ZmqClientError } from '../../sdk/node';
import { GrpcTestClient, type InferInit } from './grpc-client';
import type { TestBroker } from './broker';

export type Outcome =
  | { ok: true; outputs: Record<string, { datatype: DataType; shape: number[]; values: unknown[] }> }
  | { ok: false; code: ErrorCode | string; message: string };

export interface InferOptions {
  outputs?: string[];
  version?: string;
  timeoutUs?: number;
  /** Stateful models: KServe sequence_id/start/end (REST, gRPC), source_id/start/end (ZeroMQ). */
  sequence?: { id: string | number; start?: boolean; end?: boolean };
}

export interface Transport {
  name: string;
  infer(model: string, inputs: Tensor[], opts: InferOptions): Promise<Outcome>;
  close(): Promise<void>;
}

export interface TransportFactory {
  name: string;
  open(b: TestBroker): Promise<Transport>;
}

/** HTTP status back to the broker's code (the map is one-to-one except for 413). */
const FROM_HTTP = new Map<number, ErrorCode>(Object.entries(HTTP_STATUS).map(([code, status]) => [status, code as ErrorCode]));

export function decoded(outputs: Tensor[]): Outcome {
  return {
    ok: true,
    outputs: Object.fromEntries(outputs.map((t) => [t.name, { datatype: t.datatype, shape: t.shape, values: tensorToJson(t) }])),
  };
}

function modelPath(b: TestBroker, model: string, version?: string) {
  return `${b.url}/v2/models/${encodeURIComponent(model)}${version ? `/versions/${version}` : ''}/infer`;
}

function parameters(opts: InferOptions) {
  const p: Record<string, unknown> = {};
  if (opts.timeoutUs !== undefined) p.timeout = opts.timeoutUs;
  if (opts.sequence) Object.assign(p, { sequence_id: opts.sequence.id, sequence_start: !!opts.sequence.start, sequence_end: !!opts.sequence.end });
  return Object.keys(p).length > 0 ? p : undefined;
}

async function httpOutcome(res: Response, parse: (body: Buffer, headerLength: number | undefined) => Outcome): Promise<Outcome> {
  const body = Buffer.from(await res.arrayBuffer());
  if (res.status !== 200) {
    const message = JSON.parse(body.toString()).error as string;
    return { ok: false, code: FROM_HTTP.get(res.status) ?? `HTTP ${res.status}`, message };
  }
  const hl = res.headers.get('inference-header-content-length');
  return parse(body, hl === null ? undefined : Number(hl));
}

/** REST with JSON numbers both ways. */
export const restJson: TransportFactory = {
  name: 'REST JSON',
  async open(b) {
    return {
      name: 'REST JSON',
      async infer(model, inputs, opts) {
        const body = {
          inputs: inputs.map((t) => ({ name: t.name, datatype: t.datatype, shape: t.shape, data: tensorToJson(t) })),
          outputs: opts.outputs?.map((name) => ({ name })),
          parameters: parameters(opts),
        };
        // Exact both ways: INT64/UINT64 beyond 2^53 are written and read digit for digit.
        const res = await fetch(modelPath(b, model, opts.version), { method: 'POST', headers: { 'content-type': 'application/json' }, body: stringifyJson(body) });
        return httpOutcome(res, (buf) => {
          const json = parseJson(buf.toString(), 'the answer', true) as { outputs: { name: string; datatype: DataType; shape: number[]; data: unknown[] }[] };
          return { ok: true, outputs: Object.fromEntries(json.outputs.map((o) => [o.name, { datatype: o.datatype, shape: o.shape, values: o.data }])) };
        });
      },
      async close() {},
    };
  },
};

/** REST with the binary tensor extension both ways (tritonclient's default). */
export const restBinary: TransportFactory = {
  name: 'REST binary',
  async open(b) {
    return {
      name: 'REST binary',
      async infer(model, inputs, opts) {
        const header = Buffer.from(JSON.stringify({
          inputs: inputs.map((t) => ({ name: t.name, datatype: t.datatype, shape: t.shape, parameters: { binary_data_size: t.data.length } })),
          outputs: opts.outputs?.map((name) => ({ name, parameters: { binary_data: true } })),
          parameters: { ...parameters(opts), binary_data_output: true },
        }));
        const res = await fetch(modelPath(b, model, opts.version), {
          method: 'POST',
          headers: { 'content-type': 'application/octet-stream', 'inference-header-content-length': String(header.length) },
          body: Buffer.concat([header, ...inputs.map((t) => t.data)]),
        });
        return httpOutcome(res, (buf, hl) => {
          const json = JSON.parse(buf.subarray(0, hl).toString()) as { outputs: { name: string; datatype: DataType; shape: number[]; parameters: { binary_data_size: number } }[] };
          let offset = hl!;
          const tensors = json.outputs.map((o) => {
            const data = buf.subarray(offset, offset + o.parameters.binary_data_size);
            offset += data.length;
            return { name: o.name, datatype: o.datatype, shape: o.shape, data };
          });
          return decoded(tensors);
        });
      },
      async close() {},
    };
  },
};

/** The ZeroMQ client bridge, through the Node SDK's ZmqClient. */
export const zmqTransport: TransportFactory = {
  name: 'ZeroMQ',
  async open(b) {
    const client = new ZmqClient(b.zmqEndpoint, { window: 64 });
    return {
      name: 'ZeroMQ',
      async infer(model, inputs, opts) {
        try {
          const res = await client.infer(model, inputs, {
            outputs: opts.outputs,
            version: opts.version,
            parameters: opts.timeoutUs !== undefined ? { timeout: opts.timeoutUs } : undefined,
            sequence: opts.sequence && { id: String(opts.sequence.id), start: opts.sequence.start, end: opts.sequence.end },
          });
          return decoded(res.outputs);
        } catch (e) {
          if (e instanceof ZmqClientError) return { ok: false, code: e.code, message: e.message };
          throw e;
        }
      },
      close: () => client.close(),
    };
  },
};

const FROM_GRPC = new Map<number, ErrorCode>(
  (Object.entries(GRPC_STATUS) as [ErrorCode, number][]).filter(([code]) => code !== 'PAYLOAD_TOO_LARGE' && code !== 'UNSUPPORTED_MEDIA_TYPE').map(([code, n]) => [n, code]),
);

function grpcRequest(model: string, inputs: Tensor[], opts: InferOptions, id: string): InferInit {
  return create(ModelInferRequestSchema, {
    modelName: model,
    modelVersion: opts.version ?? '',
    id,
    inputs: inputs.map((t) => ({ name: t.name, datatype: t.datatype, shape: t.shape.map(BigInt) })),
    rawInputContents: inputs.map((t) => t.data),
    outputs: (opts.outputs ?? []).map((name) => ({ name })),
    parameters: grpcParameters(opts),
  });
}

function grpcParameters(opts: InferOptions): InferInit['parameters'] {
  const p: NonNullable<InferInit['parameters']> = {};
  if (opts.timeoutUs !== undefined) p.timeout = { parameterChoice: { case: 'int64Param', value: BigInt(opts.timeoutUs) } };
  const seq = opts.sequence;
  if (seq) {
    p.sequence_id = typeof seq.id === 'number'
      ? { parameterChoice: { case: 'int64Param', value: BigInt(seq.id) } }
      : { parameterChoice: { case: 'stringParam', value: seq.id } };
    p.sequence_start = { parameterChoice: { case: 'boolParam', value: !!seq.start } };
    p.sequence_end = { parameterChoice: { case: 'boolParam', value: !!seq.end } };
  }
  return p;
}

function grpcOutputs(res: ModelInferResponse): Outcome {
  return decoded(res.outputs.map((o, i) => ({
    name: o.name,
    datatype: o.datatype as DataType,
    shape: o.shape.map(Number),
    data: Buffer.from(res.rawOutputContents[i]),
  })));
}

/** gRPC ModelInfer (unary), raw contents both ways (tritonclient's default). */
export const grpcUnary: TransportFactory = {
  name: 'gRPC unary',
  async open(b) {
    const client = new GrpcTestClient(b.running.ports.grpc);
    let n = 0;
    return {
      name: 'gRPC unary',
      async infer(model, inputs, opts) {
        try {
          return grpcOutputs(await client.unary('modelInfer', grpcRequest(model, inputs, opts, `u${++n}`)));
        } catch (e) {
          const err = e as ServiceError;
          return { ok: false, code: FROM_GRPC.get(err.code) ?? `gRPC ${err.code}`, message: err.details };
        }
      },
      async close() {
        client.close();
      },
    };
  },
};

/** gRPC ModelStreamInfer: one stream, many requests, answers matched by id. */
export const grpcStream: TransportFactory = {
  name: 'gRPC stream',
  async open(b) {
    const client = new GrpcTestClient(b.running.ports.grpc);
    const stream = client.stream();
    const waiting = new Map<string, (o: Outcome) => void>();
    stream.on('data', (msg) => {
      const id = msg.inferResponse?.id ?? '';
      const done = waiting.get(id);
      if (!done) return;
      waiting.delete(id);
      if (msg.errorMessage) {
        const code = msg.inferResponse?.parameters.error_code?.parameterChoice;
        done({ ok: false, code: code?.case === 'stringParam' ? code.value : 'UNKNOWN', message: msg.errorMessage });
      } else done(grpcOutputs(msg.inferResponse!));
    });
    stream.on('error', () => undefined);
    let n = 0;
    return {
      name: 'gRPC stream',
      infer(model, inputs, opts) {
        const id = `s${++n}`;
        return new Promise<Outcome>((resolve) => {
          waiting.set(id, resolve);
          stream.write(grpcRequest(model, inputs, opts, id));
        });
      },
      async close() {
        stream.end();
        client.close();
      },
    };
  },
};

export const TRANSPORTS: TransportFactory[] = [restJson, restBinary, grpcUnary, grpcStream, zmqTransport];
