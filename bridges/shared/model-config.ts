/** Triton-style model configuration, as tritonclient and perf_analyzer read it. */
import type { ModelSpec } from '../../core/model-spec';
import type { DataType, TensorSpec } from '../../proto/tensor';
import type { ModelMetadata } from '../../core/types';

const TRITON_TYPE: Record<DataType, string> = {
  BOOL: 'TYPE_BOOL', UINT8: 'TYPE_UINT8', UINT16: 'TYPE_UINT16', UINT32: 'TYPE_UINT32', UINT64: 'TYPE_UINT64',
  INT8: 'TYPE_INT8', INT16: 'TYPE_INT16', INT32: 'TYPE_INT32', INT64: 'TYPE_INT64',
  FP16: 'TYPE_FP16', FP32: 'TYPE_FP32', FP64: 'TYPE_FP64', BYTES: 'TYPE_STRING', BF16: 'TYPE_BF16',
};

export const PLATFORM = 'tensorbroker_container';

export interface TritonModelConfig {
  name: string;
  platform: string;
  backend: string;
  version_policy: { latest: { num_versions: number } };
  max_batch_size: number;
  input: { name: string; data_type: string; dims: number[]; optional: boolean }[];
  output: { name: string; data_type: string; dims: number[] }[];
  dynamic_batching?: {
    max_queue_delay_microseconds: number;
    default_queue_policy: { default_timeout_microseconds: number; max_queue_size: number; allow_timeout_override: boolean };
    priority_levels: number;
    default_priority_level: number;
  };
  /** Stateful models: Triton's sequence batcher with the Direct strategy (the broker's behaviour). */
  sequence_batching?: {
    max_sequence_idle_microseconds: number;
    direct: { max_queue_delay_microseconds: number; minimum_slot_utilization: number };
  };
  instance_group: { kind: string; count: number }[];
  parameters: Record<string, { string_value: string }>;
}

/** Dims without the batch dimension, as Triton configs list them when max_batch_size > 0. */
const dims = (t: TensorSpec) => t.shape.slice(1);

export function tritonConfig(spec: ModelSpec, meta: ModelMetadata | undefined): TritonModelConfig {
  const maxBatch = meta && meta.maxBatch > 0 ? Math.min(meta.maxBatch, spec.batch_size) : spec.batch_size;
  const config: TritonModelConfig = {
    name: spec.name,
    platform: PLATFORM,
    backend: 'tensorbroker',
    version_policy: { latest: { num_versions: 1 } },
    max_batch_size: maxBatch,
    input: (meta?.inputs ?? []).map((t) => ({ name: t.name, data_type: TRITON_TYPE[t.datatype], dims: dims(t), optional: !!t.optional })),
    output: (meta?.outputs ?? []).map((t) => ({ name: t.name, data_type: TRITON_TYPE[t.datatype], dims: dims(t) })),
    instance_group: [{ kind: spec.run_on_gpu ? 'KIND_GPU' : 'KIND_CPU', count: spec.max_replicas }],
    parameters: { image: { string_value: spec.image ?? '' } },
  };
  if (spec.stateless) {
    config.dynamic_batching = {
      max_queue_delay_microseconds: spec.max_wait_ms * 1000,
      default_queue_policy: {
        default_timeout_microseconds: spec.timeout_ms * 1000,
        max_queue_size: spec.queue_capacity,
        allow_timeout_override: true,
      },
      priority_levels: 0,
      default_priority_level: 0,
    };
  } else {
    config.sequence_batching = {
      max_sequence_idle_microseconds: spec.sequence_idle_ms * 1000,
      direct: { max_queue_delay_microseconds: spec.max_wait_ms * 1000, minimum_slot_utilization: 0 },
    };
    config.parameters.max_sequences = { string_value: String(spec.max_sequences ?? maxBatch) };
    config.parameters.sequence_backlog = { string_value: String(spec.sequence_backlog) };
  }
  return config;
}
