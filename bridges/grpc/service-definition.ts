/**
 * The grpc-js ServiceDefinition of `inference.GRPCInferenceService`, built from
 * the @bufbuild descriptors generated from proto/grpc_service.proto: one entry
 * per rpc, (de)serialised with toBinary/fromBinary (no proto-loader). The
 * server and the test client share it.
 */
import type * as grpc from '@grpc/grpc-js';
import { create, fromBinary, toBinary, type DescMessage, type DescMethod, type DescService, type MessageInitShape, type MessageShape } from '@bufbuild/protobuf';
import { GRPCInferenceService } from '../../proto/gen/grpc_service_pb';

/**
 * Accepts a message, a plain initializer (create() returns a message unchanged)
 * or the message's bytes already encoded (encode.ts), passed on as they are.
 */
function serializer<D extends DescMessage>(schema: D): (m: MessageInitShape<D> | Uint8Array) => Buffer {
  return (m) => {
    if (m instanceof Uint8Array) return Buffer.isBuffer(m) ? m : Buffer.from(m.buffer, m.byteOffset, m.byteLength);
    const bytes = toBinary(schema, create(schema, m));
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  };
}

/** Decoded `bytes` fields are views into `buf` (no copy). Throws on malformed input. */
function deserializer<D extends DescMessage>(schema: D): (buf: Buffer) => MessageShape<D> {
  return (buf) => fromBinary(schema, buf);
}

/**
 * What the server's request deserializer hands on for bytes that are not a
 * valid message. grpc-js answers a throwing deserializer with INTERNAL (and no
 * reason); the handlers answer this with INVALID_ARGUMENT instead.
 */
export class Undecodable {
  constructor(readonly reason: string) {}
}

function lenientDeserializer<D extends DescMessage>(schema: D): (buf: Buffer) => MessageShape<D> | Undecodable {
  return (buf) => {
    try {
      return fromBinary(schema, buf);
    } catch (e) {
      return new Undecodable(`the request is not a valid ${schema.typeName}: ${(e as Error).message}`);
    }
  };
}

export function methodPath(service: DescService, method: DescMethod): string {
  return `/${service.typeName}/${method.name}`;
}

/** Keys are the proto rpc names (`ModelInfer`); `originalName` is the camelCase local name. */
export function serviceDefinition(service: DescService, opts: { lenientRequests?: boolean } = {}): grpc.ServiceDefinition {
  const def: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const m of service.methods) {
    def[m.name] = {
      path: methodPath(service, m),
      requestStream: m.methodKind === 'client_streaming' || m.methodKind === 'bidi_streaming',
      responseStream: m.methodKind === 'server_streaming' || m.methodKind === 'bidi_streaming',
      requestSerialize: serializer(m.input) as (m: unknown) => Buffer,
      requestDeserialize: opts.lenientRequests ? lenientDeserializer(m.input) : deserializer(m.input),
      responseSerialize: serializer(m.output) as (m: unknown) => Buffer,
      responseDeserialize: deserializer(m.output),
      originalName: m.localName,
    };
  }
  return def;
}

export const INFERENCE_SERVICE: grpc.ServiceDefinition = serviceDefinition(GRPCInferenceService);

/** The server's copy: undecodable requests reach the handlers as `Undecodable`. */
export const SERVER_SERVICE: grpc.ServiceDefinition = serviceDefinition(GRPCInferenceService, { lenientRequests: true });
