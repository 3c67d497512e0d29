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
import { configOverridePatch, currentConfig, refuseFileParameters } from '../shared/config-override';
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

/** Triton's load `config` parameter (string_param, JSON); `file:*` parameters are never accepted. */
function configParameter(params: { [key: string]: ModelRepositoryParameter }): string | undefined {
  refuseFileParameters(Object.keys(params));
  const p = params.config;
  if (!p) return undefined;
  if (p.parameterChoice.case !== 'stringParam') throw new BrokerError('INVALID_ARGUMENT', "load parameter 'config' must be a string_param (the model config as JSON)");
  return p.parameterChoice.value;
}

type Unary = Exclude<keyof InferenceHandlers, 'ModelInfer' | 'ModelStreamInfer'>;

/** A unary rpc whose answer is computed from the request alone; access, decoding and errors handled here. */
export function unaryCall(ctx: HandlerContext) {
  const log = ctx.logger;
  return function unary<Req, Res>(rpc: string, cls: CallClass, fn: (req: Req, admin: () => boolean, credential?: string) => Res | Promise<Res>): grpc.handleUnaryCall<Req | Undecodable, Res> {
    return (call, callback) => {
      let admin = () => false;
      Promise.resolve()
        .then(() => {
          admin = ctx.admit(call, cls).admin;
          const auth = call.metadata.get('authorization')[0];
          return fn(decoded(call.request), admin, typeof auth === 'string' ? auth : undefined);
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

    RepositoryModelLoad: unary('RepositoryModelLoad', 'admin', async (req, _admin, credential) => {
      const model = req.modelName;
      const config = configParameter(req.parameters);
      if (config !== undefined) {
        await broker.configureModel(model, () => configOverridePatch(model, config, currentConfig(broker, model)), credential);
      }
      await broker.loadModel(model);
      return create(RepositoryModelLoadResponseSchema);
    }),

    RepositoryModelUnload: unary('RepositoryModelUnload', 'admin', async (req) => {
      await broker.unloadModel(req.modelName);
      return create(RepositoryModelUnloadResponseSchema);
    }),
  };
}
