/**
 * The broker's descriptions of itself as gRPC messages: model metadata, the
 * Triton model config (from bridges/shared/model-config.ts, the same content
 * the REST bridge serves as JSON), statistics and the repository index.
 */
import { create, type DescEnum, type MessageInitShape } from '@bufbuild/protobuf';
import type { RepositoryEntry } from '../../core/broker';
import type { ModelStatistics as BrokerStats, Duration } from '../../core/stats';
import type { TensorSpec } from '../../proto/tensor';
import type { ModelMetadata } from '../../core/types';
import {
  ModelMetadataResponseSchema,
  ModelStatisticsSchema,
  RepositoryIndexResponseSchema,
  type ModelMetadataResponse,
  type ModelStatistics,
  type RepositoryIndexResponse,
} from '../../proto/gen/grpc_service_pb';
import {
  DataTypeSchema,
  ModelConfigSchema,
  ModelInstanceGroup_KindSchema,
  type DataType,
  type ModelInstanceGroup_Kind,
  ModelSequenceBatchingSchema,
  type ModelConfig,
} from '../../proto/gen/model_config_pb';
import { PLATFORM, type TritonModelConfig } from '../shared/model-config';

const shape = (t: TensorSpec) => ({ name: t.name, datatype: t.datatype, shape: t.shape.map((d) => BigInt(d)) });

export function metadataMessage(name: string, version: string, meta: ModelMetadata): ModelMetadataResponse {
  return create(ModelMetadataResponseSchema, {
    name,
    versions: [version],
    platform: PLATFORM,
    inputs: meta.inputs.map(shape),
    outputs: meta.outputs.map(shape),
  });
}

/** Enum value by its proto name (TYPE_FP32, KIND_CPU); 0 (TYPE_INVALID, KIND_AUTO) when unknown. */
function enumValue<E extends number>(schema: DescEnum, name: string): E {
  return (schema.values.find((v) => v.name === name)?.number ?? 0) as E;
}
const dataType = (name: string) => enumValue<DataType>(DataTypeSchema, name);
const instanceKind = (name: string) => enumValue<ModelInstanceGroup_Kind>(ModelInstanceGroup_KindSchema, name);

const u64 = (n: number) => BigInt(Math.max(0, Math.round(n)));

/** The config document of tritonConfig() as Triton's ModelConfig message. */
export function configMessage(c: TritonModelConfig): ModelConfig {
  const init: MessageInitShape<typeof ModelConfigSchema> = {
    name: c.name,
    platform: c.platform,
    backend: c.backend,
    versionPolicy: { policyChoice: { case: 'latest', value: { numVersions: c.version_policy.latest.num_versions } } },
    maxBatchSize: c.max_batch_size,
    input: c.input.map((t) => ({ name: t.name, dataType: dataType(t.data_type), dims: t.dims.map((d) => BigInt(d)), optional: t.optional })),
    output: c.output.map((t) => ({ name: t.name, dataType: dataType(t.data_type), dims: t.dims.map((d) => BigInt(d)) })),
    instanceGroup: c.instance_group.map((g) => ({ kind: instanceKind(g.kind), count: g.count })),
    parameters: Object.fromEntries(Object.entries(c.parameters).map(([k, v]) => [k, { stringValue: v.string_value }])),
    ...(c.model_transaction_policy ? { modelTransactionPolicy: { decoupled: c.model_transaction_policy.decoupled } } : {}),
  };
  const db = c.dynamic_batching;
  if (db) {
    init.schedulingChoice = {
      case: 'dynamicBatching',
      value: {
        maxQueueDelayMicroseconds: u64(db.max_queue_delay_microseconds),
        priorityLevels: u64(db.priority_levels),
        defaultPriorityLevel: u64(db.default_priority_level),
        defaultQueuePolicy: {
          defaultTimeoutMicroseconds: u64(db.default_queue_policy.default_timeout_microseconds),
          allowTimeoutOverride: db.default_queue_policy.allow_timeout_override,
          maxQueueSize: db.default_queue_policy.max_queue_size,
        },
      },
    };
  } else if (c.sequence_batching) {
    const sb = c.sequence_batching;
    const value = create(ModelSequenceBatchingSchema, {
      maxSequenceIdleMicroseconds: u64(sb.max_sequence_idle_microseconds),
      strategyChoice: {
        case: 'direct',
        value: { maxQueueDelayMicroseconds: u64(sb.direct.max_queue_delay_microseconds), minimumSlotUtilization: sb.direct.minimum_slot_utilization },
      },
    });
    init.schedulingChoice = { case: 'sequenceBatching', value };
  }
  return create(ModelConfigSchema, init);
}

const duration = (d: Duration) => ({ count: u64(d.count), ns: u64(d.ns) });

export function statisticsMessage(s: BrokerStats): ModelStatistics {
  const i = s.inference_stats;
  return create(ModelStatisticsSchema, {
    name: s.name,
    version: s.version,
    lastInference: u64(s.last_inference),
    inferenceCount: u64(s.inference_count),
    executionCount: u64(s.execution_count),
    inferenceStats: {
      success: duration(i.success),
      fail: duration(i.fail),
      queue: duration(i.queue),
      computeInput: duration(i.compute_input),
      computeInfer: duration(i.compute_infer),
      computeOutput: duration(i.compute_output),
      cacheHit: duration({ count: 0, ns: 0 }),
      cacheMiss: duration({ count: 0, ns: 0 }),
    },
    batchStats: s.batch_stats.map((b) => ({
      batchSize: u64(b.batch_size),
      computeInput: duration(b.compute_input),
      computeInfer: duration(b.compute_infer),
      computeOutput: duration(b.compute_output),
    })),
    responseStats: Object.fromEntries(Object.entries(s.response_stats).map(([k, r]) => [k, {
      computeInfer: duration(r.compute_infer),
      computeOutput: duration(r.compute_output),
      success: duration(r.success),
      fail: duration(r.fail),
      emptyResponse: duration(r.empty_response),
      cancel: duration(r.cancel),
    }])),
  });
}

export function repositoryIndexMessage(entries: RepositoryEntry[], readyOnly: boolean): RepositoryIndexResponse {
  return create(RepositoryIndexResponseSchema, {
    models: entries.filter((e) => !readyOnly || e.state === 'READY').map((e) => ({ name: e.name, version: e.version, state: e.state, reason: e.reason })),
  });
}
