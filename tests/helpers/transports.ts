/**
 * One client interface over every bridge, for the conformance suite: a
 * request as raw tensors in, a normalised outcome out (decoded values, or the
 * broker's error code recovered from the protocol's own status).
 */
import { tensorToJson } from '../../bridges/rest/json-tensors';
import { HTTP_STATUS, type ErrorCode } from '../../core/errors';
import type { DataType, Tensor } from '../../core/tensor';
import type { TestBroker } from './broker';

export type Outcome =
  | { ok: true; outputs: Record<string, { datatype: DataType; shape: number[]; values: unknown[] }> }
  | { ok: false; code: ErrorCode | string; message: string };

export interface InferOptions {
  outputs?: string[];
  version?: string;
  timeoutUs?: number;
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
  return opts.timeoutUs !== undefined ? { timeout: opts.timeoutUs } : undefined;
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
        const res = await fetch(modelPath(b, model, opts.version), { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
        return httpOutcome(res, (buf) => {
          const json = JSON.parse(buf.toString()) as { outputs: { name: string; datatype: DataType; shape: number[]; data: unknown[] }[] };
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

export const TRANSPORTS: TransportFactory[] = [restJson, restBinary];
