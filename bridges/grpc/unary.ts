/**
 * The unary rpcs that describe and control (everything but inference). Each
 * is checked against the access policy, decoded, and its errors mapped once.
 */
import type * as grpc from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';
import { BrokerError } from '../../core/errors';
import { withoutLogLines, type CallClass } from '../shared/access';
import { EXTENSIONS } from '../shared/extensions';
import { tritonConfig } from '../shared/model-config';
import {
  ModelConfigResponseSchema,
  ModelReadyResponseSchema,
  ModelStatisticsResponseSchema,
  RepositoryModelLoadResponseSchema,
  RepositoryModelUnloadResponseSchema,
  ServerLiveResponseSchema,
  ServerMetadataResponseSchema,
  ServerReadyResponseSchema,
  type ModelRepositoryParameter,
} from '../../proto/gen/grpc_service_pb';
import { callerOf } from './caller';
import { decoded, type HandlerContext } from './context';
import { configMessage, metadataMessage, repositoryIndexMessage, statisticsMessage } from './describe';
import type { InferenceHandlers } from './handlers';
import { toGrpcStatus } from './status';
import type { Undecodable } from './service-definition';

const opt = (s: string) => (s === '' ? undefined : s);

/** Triton's load parameters `config` / `file:*` replace a model's files: the broker has none to replace. */
function refuseOverrides(params: { [key: string]: ModelRepositoryParameter }): void {
  const bad = Object.keys(params).filter((k) => k === 'config' || k.startsWith('file:'));
  if (bad.length > 0) throw new BrokerError('INVALID_ARGUMENT', `load parameter(s) ${bad.join(', ')} are not supported: models are defined in the registry`);
}

type Unary = Exclude<keyof InferenceHandlers, 'ModelInfer' | 'ModelStreamInfer'>;

/** A unary rpc whose answer is computed from the request alone; access, decoding and errors handled here. */
export function unaryCall(ctx: HandlerContext) {
  const log = ctx.logger;
  return function unary<Req, Res>(rpc: string, cls: CallClass, fn: (req: Req, admin: () => boolean) => Res | Promise<Res>): grpc.handleUnaryCall<Req | Undecodable, Res> {
    return (call, callback) => {
      let admin = () => false;
      Promise.resolve()
        .then(() => {
          admin = ctx.admit(call, cls).admin;
          return fn(decoded(call.request), admin);
        })
        .then(
          (res) => callback(null, res),
          (err: unknown) => callback(toGrpcStatus(err, log, rpc, admin() || ctx.access.seesAdminDetails(callerOf(call)))),
        );
    };
  };
}

/** Control rpcs (system shared memory opens /dev/shm files as the broker's user): the admin class, as in Triton's --allow-client-shm. */
export function controlCall(ctx: HandlerContext) {
  const unary = unaryCall(ctx);
  return <Req, Res>(rpc: string, fn: (req: Req) => Res | Promise<Res>) => unary<Req, Res>(rpc, 'admin', (req) => fn(req)) as grpc.handleUnaryCall<Req, Res>;
}

export function unaryHandlers(ctx: HandlerContext): Pick<InferenceHandlers, Unary> {
  const { broker } = ctx;
  const unary = unaryCall(ctx);

  return {
    ServerLive: unary('ServerLive', 'open', () => create(ServerLiveResponseSchema, { live: true })),

    ServerReady: unary('ServerReady', 'open', () => create(ServerReadyResponseSchema, { ready: broker.ready().ready })),

    ModelReady: unary('ModelReady', 'open', (req) => create(ModelReadyResponseSchema, { ready: broker.modelReady(req.name, opt(req.version)).ready })),

    ServerMetadata: unary('ServerMetadata', 'open', () =>
      create(ServerMetadataResponseSchema, { name: 'tensorbroker', version: ctx.version, extensions: EXTENSIONS }),
    ),

    ModelMetadata: unary('ModelMetadata', 'open', (req) => {
      const meta = broker.metadata(req.name, opt(req.version));
      return metadataMessage(req.name, meta.version || broker.describe(req.name).version, meta);
    }),

    ModelConfig: unary('ModelConfig', 'open', (req) => {
      return create(ModelConfigResponseSchema, { config: configMessage(tritonConfig(broker.describe(req.name, opt(req.version)))) });
    }),

    ModelStatistics: unary('ModelStatistics', 'open', (req) =>
      create(ModelStatisticsResponseSchema, { modelStats: broker.stats(opt(req.name), opt(req.version)).map(statisticsMessage) }),
    ),

    // Open, as the REST index: the reasons lose a crashed copy's log lines without the admin token.
    RepositoryIndex: unary('RepositoryIndex', 'open', (req, admin) => {
      const index = broker.repositoryIndex();
      return repositoryIndexMessage(admin() ? index : index.map((e) => (e.reason ? { ...e, reason: withoutLogLines(e.reason) } : e)), req.ready);
    }),

    RepositoryModelLoad: unary('RepositoryModelLoad', 'admin', async (req) => {
      refuseOverrides(req.parameters);
      await broker.loadModel(req.modelName);
      return create(RepositoryModelLoadResponseSchema);
    }),

    RepositoryModelUnload: unary('RepositoryModelUnload', 'admin', async (req) => {
      await broker.unloadModel(req.modelName);
      return create(RepositoryModelUnloadResponseSchema);
    }),
  };
}
