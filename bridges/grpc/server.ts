/**
 * The KServe v2 / Triton gRPC bridge: a grpc-js server with one service,
 * inference.GRPCInferenceService, over the BrokerApi.
 */
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { BrokerApi } from '../../core/broker';
import type { SharedMemoryRegistry } from '../shared/shm';
import { AccessControl } from '../shared/access';
import { applyGrpcJsFixes } from './grpcjs-fixes';
import { createHandlers } from './handlers';
import { SERVER_SERVICE } from './service-definition';
import { addJobService } from './jobs-service';
import type { JobsApi } from '../../jobs/types';

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
  /** Who may call what (bridges/shared/access.ts); default: everything open except control from non-loopback peers. */
  access?: AccessControl;
  /** PEM certificate chain and private key: serve TLS instead of plaintext. */
  tls?: { cert: Buffer; key: Buffer };
  /** ModelStreamInfer: requests in flight per stream before the stream stops reading (default 64). */
  streamWindow?: number;
  /** Asynchronous jobs: serves tensorbroker.jobs.v1.JobService too (jobs-service.ts). */
  jobs?: JobsApi;
}

export interface GrpcBridge {
  port: number;
  /** Stops accepting calls, lets running calls finish within graceMs, then cancels the rest. */
  close(graceMs: number): Promise<void>;
}

/** The grpc-js server options of the bridge; the bench's bare floor server (bench/bare-grpc.ts) uses the same. */
export function serverOptions(maxMessageBytes: number): grpc.ServerOptions {
  return {
    'grpc.max_receive_message_length': maxMessageBytes,
    'grpc.max_send_message_length': maxMessageBytes,
    // Channelz (per-call counters and timestamps for grpc's debug service) is not served here: skip its bookkeeping.
    'grpc.enable_channelz': 0,
  };
}

export async function startGrpcBridge(opts: GrpcBridgeOptions): Promise<GrpcBridge> {
  // The caller names the component (app/server.ts: 'grpc-bridge'); a second `component` key would repeat it.
  const log = opts.logger;
  if (!applyGrpcJsFixes()) log.warn('grpc-js internals changed: long deadlines and response compression are not fixed up');
  const server = new grpc.Server(serverOptions(opts.maxMessageBytes));
  const handlersAccess = opts.access ?? new AccessControl();
  const handlers = createHandlers({
    broker: opts.broker,
    logger: log,
    version: opts.version,
    access: handlersAccess,
    streamWindow: opts.streamWindow ?? 64,
    shm: opts.shm,
  });
  server.addService(SERVER_SERVICE, handlers as unknown as grpc.UntypedServiceImplementation);
  if (opts.jobs) addJobService(server, { broker: opts.broker, jobs: opts.jobs, access: handlersAccess, logger: log });
  const credentials = opts.tls
    ? grpc.ServerCredentials.createSsl(null, [{ cert_chain: opts.tls.cert, private_key: opts.tls.key }], false)
    : grpc.ServerCredentials.createInsecure();

  const host = opts.host.includes(':') && !opts.host.startsWith('[') ? `[${opts.host}]` : opts.host;
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(`${host}:${opts.port}`, credentials, (err, bound) => (err ? reject(err) : resolve(bound)));
  });
  const access = handlersAccess;
  log.info({ host: opts.host, port, maxMessageBytes: opts.maxMessageBytes, tls: opts.tls !== undefined, apiKeys: access.inferenceKeyed, adminToken: access.adminConfigured }, 'gRPC bridge listening');

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
