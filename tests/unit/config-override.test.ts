import { configOverridePatch, refuseFileParameters } from '../../bridges/shared/config-override';
import type { TritonModelConfig } from '../../bridges/shared/model-config';

const current = (over: Partial<TritonModelConfig> = {}): TritonModelConfig => ({
  name: 'm', platform: 'tensorbroker_container', backend: 'tensorbroker', version_policy: { latest: { num_versions: 1 } },
  max_batch_size: 8,
  input: [{ name: 'IN', data_type: 'TYPE_INT32', dims: [4], optional: false }],
  output: [{ name: 'OUT', data_type: 'TYPE_INT32', dims: [4] }],
  instance_group: [{ kind: 'KIND_CPU', count: 1 }],
  parameters: {},
  ...over,
});

describe('configOverridePatch', () => {
  test('maps the four Triton fields to registry fields (µs rounded up to ms, int64 strings accepted)', () => {
    const cfg = {
      max_batch_size: 4,
      dynamic_batching: { max_queue_delay_microseconds: '2500' },
      instance_group: [{ count: 3 }],
      sequence_batching: { max_sequence_idle_microseconds: 7_000_000 },
    };
    expect(configOverridePatch('m', JSON.stringify(cfg), current())).toEqual({
      batch_size: 4, max_wait_ms: 3, max_replicas: 3, sequence_idle_ms: 7000,
    });
  });

  test('a config sent back as read changes nothing; an unmapped change is refused naming the field', () => {
    const c = current();
    expect(configOverridePatch('m', JSON.stringify(c), c)).toEqual({});
    expect(() => configOverridePatch('m', JSON.stringify({ ...c, platform: 'onnxruntime_onnx' }), c)).toThrow(/config field 'platform' cannot be changed/);
    expect(() => configOverridePatch('m', JSON.stringify({ input: [] }), c)).toThrow(/'input'/);
    expect(() => configOverridePatch('m', JSON.stringify({ instance_group: [{ count: 1, kind: 'KIND_GPU' }] }), c)).toThrow(/'instance_group\[0\]\.kind'/);
    expect(() => configOverridePatch('m', JSON.stringify({ dynamic_batching: { preferred_batch_size: [4] } }), c)).toThrow(/'dynamic_batching\.preferred_batch_size'/);
    // Unknown current config (never ran): only mapped fields.
    expect(() => configOverridePatch('m', JSON.stringify({ backend: 'tensorbroker' }))).toThrow(/'backend'/);
  });

  test('bad documents and values', () => {
    expect(() => configOverridePatch('m', '{nope', current())).toThrow(/not valid JSON/);
    expect(() => configOverridePatch('m', '[1]', current())).toThrow(/must be a JSON object/);
    expect(() => configOverridePatch('m', '{"name":"other"}', current())).toThrow(/config field 'name' is "other"/);
    expect(() => configOverridePatch('m', '{"max_batch_size":-1}', current())).toThrow(/'max_batch_size' must be a non-negative integer/);
    expect(() => configOverridePatch('m', '{"instance_group":[{"count":0}]}', current())).toThrow(/at least 1/);
    expect(() => configOverridePatch('m', '{"instance_group":[{"count":1},{"count":1}]}', current())).toThrow(/one group/);
  });

  test('file: parameters are always refused', () => {
    expect(() => refuseFileParameters(['config', 'file:1/model.onnx'])).toThrow(/'file:1\/model.onnx'.*never accepted/);
    expect(() => refuseFileParameters(['config'])).not.toThrow();
  });
});
