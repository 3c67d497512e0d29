/** Triton-style model configuration, as tritonclient and perf_analyzer read it. */
import type { ModelDescription } from '../../core/broker';
import { BrokerError } from '../../core/errors';
import type { DataType, TensorSpec } from '../../proto/tensor';

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
  /** Decoupled models (READY decoupled): 0..n responses per request, gRPC ModelStreamInfer only. */
  model_transaction_policy?: { decoupled: boolean };
  parameters: Record<string, { string_value: string }>;
}

/** Dims without the batch dimension when max_batch_size > 0; whole shapes for a non-batching model (0), as Triton lists them. */
const dimsOf = (batching: boolean) => (t: TensorSpec) => (batching ? t.shape.slice(1) : [...t.shape]);

/**
 * The config of a described model; UNAVAILABLE when it never reported metadata
 * (a config without inputs and outputs would mislead clients).
 */
export function tritonConfig(d: ModelDescription): TritonModelConfig {
  const meta = d.metadata;
  if (!meta) {
    throw new BrokerError('UNAVAILABLE', `model '${d.name}' has never been ready, so its config (inputs, outputs) is not known yet ` +
      `(${d.readiness.phase}${d.readiness.reason ? `: ${d.readiness.reason}` : ''}); an inference request starts a copy`);
  }
  // batch_size 0: a non-batching model, Triton's max_batch_size 0.
  const maxBatch = d.batchSize === 0 ? 0 : meta.maxBatch > 0 ? Math.min(meta.maxBatch, d.batchSize) : d.batchSize;
  const dims = dimsOf(maxBatch > 0);
  const config: TritonModelConfig = {
    name: d.name,
    platform: PLATFORM,
    backend: 'tensorbroker',
    version_policy: { latest: { num_versions: 1 } },
    max_batch_size: maxBatch,
    input: meta.inputs.map((t) => ({ name: t.name, data_type: TRITON_TYPE[t.datatype], dims: dims(t), optional: !!t.optional })),
    output: meta.outputs.map((t) => ({ name: t.name, data_type: TRITON_TYPE[t.datatype], dims: dims(t) })),
    instance_group: [{ kind: d.runOnGpu ? 'KIND_GPU' : 'KIND_CPU', count: d.maxReplicas }],
    parameters: {},
  };
  if (meta.decoupled) config.model_transaction_policy = { decoupled: true };
  if (d.stateless) {
    config.dynamic_batching = {
      max_queue_delay_microseconds: d.maxWaitMs * 1000,
      default_queue_policy: {
        default_timeout_microseconds: d.timeoutMs * 1000,
        max_queue_size: d.queueCapacity,
        allow_timeout_override: true,
      },
      priority_levels: 0,
      default_priority_level: 0,
    };
  } else {
    config.sequence_batching = {
      max_sequence_idle_microseconds: d.sequenceIdleMs * 1000,
      direct: { max_queue_delay_microseconds: d.maxWaitMs * 1000, minimum_slot_utilization: 0 },
    };
    config.parameters.max_sequences = { string_value: String(d.maxSequences ?? maxBatch) };
    config.parameters.sequence_backlog = { string_value: String(d.sequenceBacklog) };
  }
  return config;
}
