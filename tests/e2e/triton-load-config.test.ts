/**
 * Triton's model control with a config override: `load` with a `config`
 * parameter over REST and gRPC, against a real broker with an admin token.
 * The mapped fields change the registry entry (seen in the model's config and
 * in /admin/models); anything else is refused naming the field.
 */
import * as grpc from '@grpc/grpc-js';
import { AccessControl } from '../../bridges/shared/access';
import pino from 'pino';
import { create } from '@bufbuild/protobuf';
import { startGrpcBridge, type GrpcBridge } from '../../bridges/grpc/server';
import { INFERENCE_SERVICE } from '../../bridges/grpc/service-definition';
import { RepositoryModelLoadRequestSchema } from '../../proto/gen/grpc_service_pb';
import { getJson, postJson, simpleModel, startTestBroker, waitReady, type TestBroker } from '../helpers/broker';
import { GrpcTestClient } from '../helpers/grpc-client';

const TOKEN = 'load-config-token';
const AUTH = { authorization: `Bearer ${TOKEN}` };

describe('repository load with a config override', () => {
  let b: TestBroker;
  let bridge: GrpcBridge;
  let c: GrpcTestClient;
  const load = (model: string, parameters: unknown, headers: Record<string, string> = AUTH) =>
    postJson(`${b.url}/v2/repository/models/${model}/load`, { parameters }, headers);
  const config = (model: string) => getJson(`${b.url}/v2/models/${model}/config`);

  beforeAll(async () => {
    b = await startTestBroker({ adminToken: TOKEN, models: { simple: simpleModel(), other: simpleModel() } });
    bridge = await startGrpcBridge({
      broker: b.running.broker, host: '127.0.0.1', port: 0, maxMessageBytes: 1 << 20,
      logger: pino({ level: 'silent' }), version: 'test', access: new AccessControl({ adminToken: TOKEN }),
    });
    c = new GrpcTestClient(bridge.port);
    await Promise.all([waitReady(b, 'simple'), waitReady(b, 'other')]);
  });
  afterAll(async () => {
    c?.close();
    await bridge?.close(1000);
    await b?.stop();
  });

  test('REST: the mapped fields change the registry entry through the admin validation', async () => {
    const cfg = { max_batch_size: 4, dynamic_batching: { max_queue_delay_microseconds: 3000 }, instance_group: [{ count: 2 }] };
    const res = await load('simple', { config: JSON.stringify(cfg) });
    expect(res).toMatchObject({ status: 200 });
    const after = await config('simple');
    expect(after.max_batch_size).toBe(4);
    expect(after.dynamic_batching.max_queue_delay_microseconds).toBe(3000);
    expect(after.instance_group[0].count).toBe(2);
    const entry = (await getJson(`${b.url}/admin/models`)).models.find((m: { name: string }) => m.name === 'simple');
    expect(entry).toMatchObject({ batch_size: 4, max_wait_ms: 3, max_replicas: 2, source: 'api' });
    // The new batch size holds for requests at once: 5 rows are too many now.
    const five = await postJson(`${b.url}/v2/models/simple/infer`, {
      inputs: ['INPUT0', 'INPUT1'].map((name) => ({ name, datatype: 'INT32', shape: [5, 16], data: new Array(80).fill(1) })),
    });
    expect(five.status).toBe(400);
    expect(five.json.error).toContain('at most 4 rows');

    // The config read back and sent again changes nothing and passes.
    expect((await load('simple', { config: JSON.stringify(after) })).status).toBe(200);
    // A value the registry cannot take is refused.
    const tooFew = await load('simple', { config: JSON.stringify({ max_batch_size: -2 }) });
    expect(tooFew.status).toBe(400);
  });

  test('REST: unmapped fields, file: parameters and bad tokens are refused with the reason', async () => {
    const before = await config('other');
    const platform = await load('other', { config: JSON.stringify({ platform: 'onnxruntime_onnx' }) });
    expect(platform.status).toBe(400);
    expect(platform.json.error).toContain("config field 'platform' cannot be changed");
    const inputs = await load('other', { config: JSON.stringify({ input: [{ name: 'X', data_type: 'TYPE_FP32', dims: [1] }] }) });
    expect(inputs.status).toBe(400);
    expect(inputs.json.error).toContain("config field 'input'");
    const file = await load('other', { config: '{}', 'file:1/model.onnx': 'AAAA' });
    expect(file.status).toBe(400);
    expect(file.json.error).toContain("'file:1/model.onnx'");
    const bad = await load('other', { config: 7 });
    expect(bad.status).toBe(400);

    const none = await load('other', { config: JSON.stringify({ max_batch_size: 2 }) }, {});
    expect(none.status).toBe(401);
    // A wrong token is a wrong credential under the one access policy (bridges/shared/access.ts): 401.
    const wrong = await load('other', { config: JSON.stringify({ max_batch_size: 2 }) }, { authorization: 'Bearer nope' });
    expect(wrong.status).toBe(401);
    // An unauthorised load learns nothing about the document: the token is checked first.
    expect((await load('other', { config: '{nope' }, {})).status).toBe(401);
    expect((await load('nosuch', { config: '{}' })).status).toBe(404);
    expect(await config('other')).toEqual(before);
    // Model control needs the admin token whenever one is configured (the access policy), with or without a config.
    expect((await load('other', undefined, {})).status).toBe(401);
    expect((await load('other', undefined)).status).toBe(200);
  });

  test('gRPC: RepositoryModelLoad with parameters["config"] and the token in metadata', async () => {
    const call = (cfg: string, auth?: string) => new Promise<grpc.ServiceError | null>((resolve) => {
      const md = new grpc.Metadata();
      if (auth) md.set('authorization', auth);
      const def = INFERENCE_SERVICE.RepositoryModelLoad;
      const req = create(RepositoryModelLoadRequestSchema, {
        modelName: 'other', parameters: { config: { parameterChoice: { case: 'stringParam', value: cfg } } },
      });
      c.client.makeUnaryRequest(def.path, def.requestSerialize, def.responseDeserialize, req, md, (err) => resolve(err));
    });
    expect((await call(JSON.stringify({ max_batch_size: 2 })))?.code).toBe(grpc.status.UNAUTHENTICATED);
    expect((await call(JSON.stringify({ max_batch_size: 2 }), 'Bearer nope'))?.code).toBe(grpc.status.UNAUTHENTICATED);
    const refused = await call(JSON.stringify({ backend: 'python' }), `Bearer ${TOKEN}`);
    expect(refused?.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(refused?.details).toContain("config field 'backend'");
    expect(await call(JSON.stringify({ max_batch_size: 2, sequence_batching: { max_sequence_idle_microseconds: 2_000_000 } }), `Bearer ${TOKEN}`)).toBeNull();
    const { config: cfg } = await c.unary('modelConfig', { name: 'other' });
    expect(cfg?.maxBatchSize).toBe(2);
    const entry = (await getJson(`${b.url}/admin/models`)).models.find((m: { name: string }) => m.name === 'other');
    expect(entry).toMatchObject({ batch_size: 2, sequence_idle_ms: 2000 });
  });
});
