/**
 * The KServe v2 / Triton gRPC bridge: a grpc-js server with one service,
 * inference.GRPCInferenceService, over the BrokerApi.
 */
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { BrokerApi } from '../../core/broker';
import type { SharedMemoryRegistry } from '../shared/shm';
import { createHandlers } from './handlers';
import { INFERENCE_SERVICE } from './service-definition';

export interface GrpcBridgeOptions {
  broker: BrokerApi;
  host: string;
  /** 0 = chosen by the OS (the bound port is returned). */
  port: number;
  /** Largest message each way (grpc-js defaults to 4 MiB received). */
  maxMessageBytes: number;
  logger: Logger;
  /** Reported by ServerMetadata. */
  version: string;
  /** System shared memory regions, shared with the REST bridge. */
  shm?: SharedMemoryRegistry;
}

export interface GrpcBridge {
  port: number;
  /** Stops accepting calls, lets running calls finish within graceMs, then cancels the rest. */
  close(graceMs: number): Promise<void>;
}

export async function startGrpcBridge(opts: GrpcBridgeOptions): Promise<GrpcBridge> {
  const log = opts.logger.child({ component: 'grpc' });
  const server = new grpc.Server({
    'grpc.max_receive_message_length': opts.maxMessageBytes,
    'grpc.max_send_message_length': opts.maxMessageBytes,
  });
  const handlers = createHandlers({ broker: opts.broker, logger: log, version: opts.version, shm: opts.shm });
  server.addService(INFERENCE_SERVICE, handlers as unknown as grpc.UntypedServiceImplementation);

  const host = opts.host.includes(':') && !opts.host.startsWith('[') ? `[${opts.host}]` : opts.host;
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(`${host}:${opts.port}`, grpc.ServerCredentials.createInsecure(), (err, bound) => (err ? reject(err) : resolve(bound)));
  });
  log.info({ host: opts.host, port, maxMessageBytes: opts.maxMessageBytes }, 'gRPC bridge listening');

  let closing: Promise<void> | undefined;
  return {
    port,
    close(graceMs: number) {
      closing ??= new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          log.warn({ graceMs }, 'gRPC calls still running after the grace period: cancelling them');
          server.forceShutdown();
          resolve();
        }, graceMs);
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      });
      return closing;
    },
  };
}
