/**
 * The access policy end to end (bridges/README.md, "Access policy"): a broker
 * with an admin token and API keys, called over REST, gRPC and ZeroMQ; crash
 * log lines hidden without the token; TLS on REST and gRPC from a self-signed
 * certificate made here with openssl.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { create, toBinary } from '@bufbuild/protobuf';
import { Dealer } from 'zeromq';
import { INFERENCE_SERVICE } from '../../bridges/grpc/service-definition';
import { KEY_FRAME_PREFIX } from '../../bridges/zmq/server';
import { InferReplySchema, InferRequestSchema, decodeHeader, toMeta } from '../../proto/client';
import { GRPCInferenceService, type ModelStreamInferResponse } from '../../proto/gen/grpc_service_pb';
import { modelMain, postJson, row, simpleBody, simpleModel, startTestBroker, waitFor, waitReady, type TestBroker } from '../helpers/broker';
import { int32Bytes, simpleRaw } from '../helpers/grpc-client';

const ADMIN = 'admin-token-for-tests';
const KEY = 'api-key-for-tests';

/** A unary gRPC call with metadata; resolves with the status code (0 = OK) and the answer. */
function grpcCall(client: grpc.Client, method: keyof typeof GRPCInferenceService.method, req: unknown, md: Record<string, string> = {}): Promise<{ code: number; details: string; res?: unknown }> {
  const def = INFERENCE_SERVICE[GRPCInferenceService.method[method].name];
  const metadata = new grpc.Metadata();
  for (const [k, v] of Object.entries(md)) metadata.set(k, v);
  return new Promise((resolve) => {
    client.makeUnaryRequest(def.path, def.requestSerialize, def.responseDeserialize, req, metadata, {}, (err, res) =>
      resolve(err ? { code: err.code, details: err.details } : { code: 0, details: '', res }),
    );
  });
}

async function rest(b: TestBroker, method: string, url: string, headers: Record<string, string> = {}, body?: unknown) {
  const res = await fetch(`${b.url}${url}`, { method, headers: { 'content-type': 'application/json', ...headers }, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, text, headers: res.headers };
}

describe('access policy: admin token and API keys', () => {
  let b: TestBroker;
  let client: grpc.Client;
  const bearer = (t: string) => ({ authorization: `Bearer ${t}` });

  beforeAll(async () => {
    b = await startTestBroker({
      adminToken: ADMIN,
      config: { apiKeys: [KEY, 'second-key'] },
      models: {
        simple: simpleModel(),
        motion: { command: ['node', modelMain('motion')], stateless: false, batch_size: 2, max_sequences: 1 },
        // Crashes at once, printing a "secret": its reason quotes the last log lines.
        // (Computed, so that the command itself, shown by the admin API, does not hold the text.)
        crashing: { command: ['node', '-e', 'console.error("SECRET_LINE_" + 6 * 7); process.exit(3)'], max_failures: 1, startup_timeout_ms: 5000 },
      },
    });
    client = new grpc.Client(`127.0.0.1:${b.running.ports.grpc}`, grpc.credentials.createInsecure());
    await waitReady(b, 'simple');
  });
  afterAll(async () => {
    client?.close();
    await b?.stop();
  });

  test('REST inference needs an API key (x-api-key or Bearer); the admin token works too', async () => {
    const body = simpleBody([row(16)], [row(16)]);
    const none = await postJson(`${b.url}/v2/models/simple/infer`, body);
    expect(none.status).toBe(401);
    expect(none.json.error).toContain('API key');
    expect(none.headers.get('www-authenticate')).toBe('Bearer');
    expect((await postJson(`${b.url}/v2/models/simple/infer`, body, { 'x-api-key': 'wrong' })).status).toBe(401);
    expect((await postJson(`${b.url}/v2/models/simple/infer`, body, { 'x-api-key': KEY })).status).toBe(200);
    expect((await postJson(`${b.url}/v2/models/simple/infer`, body, bearer('second-key'))).status).toBe(200);
    expect((await postJson(`${b.url}/v2/models/simple/infer`, body, bearer(ADMIN))).status).toBe(200);
    // Open calls stay open.
    expect((await rest(b, 'GET', '/v2/health/live')).status).toBe(200);
    expect((await rest(b, 'GET', '/v2/models/simple')).status).toBe(200);
    expect((await rest(b, 'POST', '/v2/repository/index')).status).toBe(200);
  });

  test('REST model control, sequence listing and instances need the admin token; an API key is 403', async () => {
    for (const [method, url] of [
      ['POST', '/v2/repository/models/simple/unload'],
      ['POST', '/v2/repository/models/simple/load'],
      ['GET', '/v2/models/motion/sequences'],
      ['GET', '/v2/models/motion/versions/1/sequences'],
      ['GET', '/admin/instances'],
    ]) {
      expect([method, url, (await rest(b, method, url)).status]).toEqual([method, url, 401]);
      expect([method, url, (await rest(b, method, url, bearer('not-it'))).status]).toEqual([method, url, 401]);
      expect([method, url, (await rest(b, method, url, { 'x-api-key': KEY })).status]).toEqual([method, url, 403]);
    }
    expect(await waitReady(b, 'simple')).toBeUndefined(); // nothing was unloaded
    expect((await rest(b, 'GET', '/v2/models/motion/sequences', bearer(ADMIN))).status).toBe(200);
    expect((await rest(b, 'GET', '/admin/instances', bearer(ADMIN))).status).toBe(200);
    expect((await rest(b, 'POST', '/v2/repository/models/simple/load', bearer(ADMIN))).status).toBe(200);
  });

  test('gRPC: inference needs a key in metadata; repository load/unload need the admin token', async () => {
    const req = simpleRaw([row(16)], [row(16)]);
    expect((await grpcCall(client, 'modelInfer', req)).code).toBe(grpc.status.UNAUTHENTICATED);
    expect((await grpcCall(client, 'modelInfer', req, { 'x-api-key': 'wrong' })).code).toBe(grpc.status.UNAUTHENTICATED);
    expect((await grpcCall(client, 'modelInfer', req, { 'x-api-key': KEY })).code).toBe(0);
    expect((await grpcCall(client, 'modelInfer', req, bearer(KEY))).code).toBe(0);
    expect((await grpcCall(client, 'serverLive', {})).code).toBe(0);
    expect((await grpcCall(client, 'repositoryModelUnload', { modelName: 'simple' })).code).toBe(grpc.status.UNAUTHENTICATED);
    expect((await grpcCall(client, 'repositoryModelUnload', { modelName: 'simple' }, { 'x-api-key': KEY })).code).toBe(grpc.status.PERMISSION_DENIED);
    expect((await grpcCall(client, 'repositoryModelLoad', { modelName: 'simple' }, bearer('nope'))).code).toBe(grpc.status.UNAUTHENTICATED);
    expect((await grpcCall(client, 'repositoryModelLoad', { modelName: 'simple' }, bearer(ADMIN))).code).toBe(0);
  });

  test('gRPC ModelStreamInfer without a key ends UNAUTHENTICATED; with one it answers', async () => {
    const def = INFERENCE_SERVICE[GRPCInferenceService.method.modelStreamInfer.name];
    const run = (md: grpc.Metadata) =>
      new Promise<{ code: number; answers: ModelStreamInferResponse[] }>((resolve) => {
        const answers: ModelStreamInferResponse[] = [];
        const call = client.makeBidiStreamRequest(def.path, def.requestSerialize, def.responseDeserialize, md);
        call.on('data', (m: ModelStreamInferResponse) => answers.push(m));
        call.on('error', (e: grpc.ServiceError) => resolve({ code: e.code, answers }));
        call.on('status', (s: grpc.StatusObject) => s.code === 0 && resolve({ code: 0, answers }));
        call.write(simpleRaw([row(16)], [row(16)], { id: 's1' }));
        call.end();
      });
    expect((await run(new grpc.Metadata())).code).toBe(grpc.status.UNAUTHENTICATED);
    const md = new grpc.Metadata();
    md.set('x-api-key', KEY);
    const ok = await run(md);
    expect(ok.code).toBe(0);
    expect(ok.answers).toHaveLength(1);
    expect(ok.answers[0].errorMessage).toBe('');
  });

  test('ZeroMQ: a request without the key frame is UNAUTHENTICATED; with it, answered', async () => {
    const dealer = new Dealer({ linger: 0, receiveTimeout: 10_000 });
    dealer.connect(b.zmqEndpoint);
    try {
      const x = int32Bytes(row(16));
      const metas = [toMeta({ name: 'INPUT0', datatype: 'INT32', shape: [1, 16], data: x }), toMeta({ name: 'INPUT1', datatype: 'INT32', shape: [1, 16], data: x })];
      const header = Buffer.from(toBinary(InferRequestSchema, create(InferRequestSchema, { id: 'z1', model: 'simple', inputs: metas })));
      const exchange = async (frames: Buffer[]) => {
        await dealer.send(frames);
        const [head] = await dealer.receive();
        return decodeHeader(InferReplySchema, head);
      };
      expect((await exchange([header, x, x])).status).toMatchObject({ code: 'UNAUTHENTICATED' });
      expect((await exchange([Buffer.concat([KEY_FRAME_PREFIX, Buffer.from('bad')]), header, x, x])).status).toMatchObject({ code: 'UNAUTHENTICATED' });
      const ok = await exchange([Buffer.concat([KEY_FRAME_PREFIX, Buffer.from(KEY)]), header, x, x]);
      expect(ok).toMatchObject({ id: 'z1', status: { code: 'OK' } });
    } finally {
      dealer.close();
    }
  });

  test("a crashed copy's log lines are shown with the admin token only (REST and gRPC)", async () => {
    const reasonOf = async (headers: Record<string, string>) => {
      const index = JSON.parse((await rest(b, 'POST', '/v2/repository/index', headers)).text) as { name: string; reason?: string }[];
      return index.find((e) => e.name === 'crashing')?.reason ?? '';
    };
    await waitFor(async () => (await reasonOf(bearer(ADMIN))).includes('SECRET_LINE_42'), 30_000, 'crashing marked unavailable with its log lines');
    const anon = await reasonOf({});
    expect(anon).toContain('unavailable');
    expect(anon).not.toContain('SECRET_LINE_42');
    const viaGrpc = async (md: Record<string, string>) => {
      const r = await grpcCall(client, 'repositoryIndex', {}, md);
      return JSON.stringify(r.res);
    };
    expect(await viaGrpc({})).not.toContain('SECRET_LINE_42');
    expect(await viaGrpc(bearer(ADMIN))).toContain('SECRET_LINE_42');
    // The model status of the admin API carries them as an array too.
    const status = await rest(b, 'GET', '/admin/models/crashing');
    expect(status.status).toBe(200);
    expect(status.text).toContain('unavailable');
    expect(status.text).not.toContain('SECRET_LINE_42');
    expect((await rest(b, 'GET', '/admin/models/crashing', bearer(ADMIN))).text).toContain('SECRET_LINE_42');
    // An inference error naming the reason hides them too.
    const infer = await postJson(`${b.url}/v2/models/crashing/infer`, simpleBody([row(16)], [row(16)]), { 'x-api-key': KEY });
    expect(infer.status).toBeGreaterThanOrEqual(400);
    expect(JSON.stringify(infer.json)).not.toContain('SECRET_LINE_42');
    const g = await grpcCall(client, 'modelInfer', { ...simpleRaw([row(16)], [row(16)]), modelName: 'crashing' }, { 'x-api-key': KEY });
    expect(g.code).not.toBe(0);
    expect(g.details).not.toContain('SECRET_LINE_42');
  });
});

describe('access policy: no admin token configured', () => {
  let b: TestBroker;
  beforeAll(async () => {
    b = await startTestBroker({ models: { simple: simpleModel() } });
    await waitReady(b, 'simple');
  });
  afterAll(async () => b?.stop());

  test('inference is open; control is allowed from loopback (remote peers get 403: tests/unit/access.test.ts)', async () => {
    expect((await postJson(`${b.url}/v2/models/simple/infer`, simpleBody([row(16)], [row(16)]))).status).toBe(200);
    expect((await rest(b, 'GET', '/admin/instances')).status).toBe(200);
    expect((await rest(b, 'POST', '/v2/repository/models/simple/load')).status).toBe(200);
  });
});

describe('TLS on REST and gRPC from a certificate and key', () => {
  let b: TestBroker;
  let dir: string;
  let cert: Buffer;

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'tb-tls-'));
    const certFile = path.join(dir, 'cert.pem');
    const keyFile = path.join(dir, 'key.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
      '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1', '-keyout', keyFile, '-out', certFile], { stdio: 'ignore' });
    cert = readFileSync(certFile);
    b = await startTestBroker({ models: { simple: simpleModel() }, config: { tlsCert: certFile, tlsKey: keyFile } });
  });
  afterAll(async () => {
    await b?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test('REST answers over https with the certificate; plain http is refused', async () => {
    const status = await new Promise<number>((resolve, reject) => {
      https.get({ host: '127.0.0.1', port: b.running.ports.http, path: '/v2/health/live', ca: cert, servername: 'localhost' }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      }).on('error', reject);
    });
    expect(status).toBe(200);
    await expect(fetch(`http://127.0.0.1:${b.running.ports.http}/v2/health/live`)).rejects.toThrow();
  });

  test('gRPC answers over TLS; a plaintext client gets UNAVAILABLE', async () => {
    const secure = new grpc.Client(`127.0.0.1:${b.running.ports.grpc}`, grpc.credentials.createSsl(cert), { 'grpc.ssl_target_name_override': 'localhost' });
    const plain = new grpc.Client(`127.0.0.1:${b.running.ports.grpc}`, grpc.credentials.createInsecure());
    try {
      const ok = await grpcCall(secure, 'serverLive', {});
      expect(ok.code).toBe(0);
      const def = INFERENCE_SERVICE[GRPCInferenceService.method.serverLive.name];
      const bad = await new Promise<number>((resolve) => {
        plain.makeUnaryRequest(def.path, def.requestSerialize, def.responseDeserialize, {}, new grpc.Metadata(), { deadline: Date.now() + 5000 }, (err) => resolve(err?.code ?? 0));
      });
      expect(bad).not.toBe(0);
    } finally {
      secure.close();
      plain.close();
    }
  });
});
