/**
 * The raw form of the binary tensor extension: `Inference-Header-Content-Length: 0`
 * means there is no JSON header and the whole body is the one input of a
 * single-input model, batch 1. Datatype and shape come from the model's metadata.
 */
import { BrokerError } from '../../core/errors';
import { elementSize, type Tensor } from '../../proto/tensor';
import type { ModelMetadata } from '../../core/types';

const invalid = (msg: string) => new BrokerError('INVALID_ARGUMENT', msg);

/**
 * The tensor a raw body stands for. Non-batch dimensions of -1: for BYTES the
 * body is one element (each -1 is 1); for other types exactly one may be
 * variable and is worked out from the byte size.
 */
export function rawInputTensor(meta: ModelMetadata, body: Buffer): Tensor {
  if (meta.inputs.length !== 1) {
    throw invalid(`the raw form (Inference-Header-Content-Length: 0) needs a model with one input; model '${meta.name}' has ` +
      `${meta.inputs.length} (${meta.inputs.map((t) => t.name).join(', ')}): send a JSON header`);
  }
  const spec = meta.inputs[0];
  const where = `raw body for input '${spec.name}' (${spec.datatype} ${JSON.stringify(spec.shape)})`;
  if (spec.shape.length === 0) throw invalid(`${where}: the input has no batch dimension`);
  const dims = spec.shape.slice(1);
  const size = elementSize(spec.datatype);
  if (size === undefined) {
    // BYTES: the body is the content of a single element.
    if (dims.some((d) => d !== -1 && d !== 1)) throw invalid(`${where}: the raw form carries one BYTES element, the input needs more per row`);
    const prefix = Buffer.allocUnsafe(4);
    prefix.writeUInt32LE(body.length);
    return { name: spec.name, datatype: 'BYTES', shape: [1, ...dims.map(() => 1)], data: Buffer.concat([prefix, body]) };
  }
  if (body.length % size !== 0) throw invalid(`${where}: ${body.length} bytes is not a whole number of ${size}-byte elements`);
  const elements = body.length / size;
  const variable = dims.flatMap((d, i) => (d === -1 ? [i] : []));
  const fixed = dims.reduce((n, d) => (d === -1 ? n : n * d), 1);
  if (variable.length === 0) {
    if (elements !== fixed) throw invalid(`${where}: needs ${fixed * size} bytes, got ${body.length}`);
    return { name: spec.name, datatype: spec.datatype, shape: [1, ...dims], data: body };
  }
  if (variable.length > 1) {
    throw invalid(`${where}: ${variable.length} dimensions are variable and a raw body can size only one; ` +
      'send a JSON header (Inference-Header-Content-Length: <its length>) with the shape');
  }
  if (fixed === 0 || elements % fixed !== 0) {
    throw invalid(`${where}: ${body.length} bytes is not a whole number of rows of ${fixed * size} bytes`);
  }
  const shape = [1, ...dims];
  shape[variable[0] + 1] = elements / fixed;
  return { name: spec.name, datatype: spec.datatype, shape, data: body };
}
