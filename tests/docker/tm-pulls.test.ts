/**
 * Image pulls against registries on 127.0.0.1 only (Debian's docker-registry,
 * fed with docker tag + push): pulled with progress in the log, credentials,
 * a missing tag, a refused port, a registry that never answers (pull timeout).
 */
import * as net from 'node:net';
import pino from 'pino';
import { BrokerError } from '../../core/errors';
import { DockerRuntime } from '../../task-manager/docker-runtime';
import { freePort, hasRegistry, pushLocal, startLocalRegistry, type LocalRegistry } from '../helpers/local-registry';
import { ensureTaskManagerImages } from '../helpers/test-images';
import { waitEvent } from '../helpers/events';
import { dockerTm, modelSpec, type DockerTm } from '../helpers/tm-docker';
import { imageTag } from '../../examples/build-images';

jest.setTimeout(180_000);
const d = hasRegistry ? describe : describe.skip;

d('image pulls from a local registry (127.0.0.1)', () => {
  let reg: LocalRegistry;
  let secure: LocalRegistry;
  const user = { name: 'tb', password: 'pull-secret' };
  const lines: Record<string, unknown>[] = [];
  const logger = pino({ level: 'info' }, { write: (l: string) => lines.push(JSON.parse(l)) });

  beforeAll(async () => {
    await ensureTaskManagerImages();
    reg = await startLocalRegistry();
    secure = await startLocalRegistry(user);
    pushLocal(imageTag('simple'), `${reg.host}/tb/simple:pull`);
    pushLocal(imageTag('simple'), `${secure.host}/tb/simple:auth`, { host: secure.host, ...user });
  });
  afterAll(async () => {
    await reg?.stop();
    await secure?.stop();
  });

  test('if-missing: the copy waits for the pull (progress logged), then runs', async () => {
    const t: DockerTm = dockerTm({ runtime: { logger } });
    try {
      const image = `${reg.host}/tb/simple:pull`;
      const ready = waitEvent(t.tm, 'metadata', () => true, 60_000);
      await t.tm.reconcile([modelSpec('pulled', image, { pull_policy: 'if-missing' })]);
      await ready;
      expect(lines.some((l) => l.msg === 'pulling image' && l.image === image)).toBe(true);
      expect(lines.some((l) => l.msg === 'pull progress' && l.image === image)).toBe(true);
      expect(lines.some((l) => l.msg === 'image pulled' && l.image === image)).toBe(true);
    } finally {
      await t.close();
    }
  });

  test('credentials: refused without them, pulled with TB_REGISTRY_USERNAME/PASSWORD', async () => {
    const image = `${secure.host}/tb/simple:auth`;
    const anon = new DockerRuntime({ logger, credentialsEnv: { HOME: '/nonexistent' } });
    const err = (await anon.puller.ensure(image, 'always', 30_000).catch((e: unknown) => e)) as BrokerError;
    expect(err).toBeInstanceOf(BrokerError);
    expect(err.message).toMatch(/cannot pull image .*access denied by the registry \(no credentials for 127\.0\.0\.1:\d+: set TB_REGISTRY_SERVER/);
    const wrong = new DockerRuntime({ logger, credentialsEnv: { TB_REGISTRY_SERVER: secure.host, TB_REGISTRY_USERNAME: 'tb', TB_REGISTRY_PASSWORD: 'nope' } });
    await expect(wrong.puller.ensure(image, 'always', 30_000)).rejects.toThrow(/credentials were sent: check them/);
    const ok = new DockerRuntime({ logger, credentialsEnv: { TB_REGISTRY_SERVER: secure.host, TB_REGISTRY_USERNAME: user.name, TB_REGISTRY_PASSWORD: user.password } });
    await ok.puller.ensure(image, 'always', 30_000);
    expect(await ok.puller.present(image)).toBe(true);
    await ok.docker.getImage(image).remove().catch(() => undefined);
  });

  test('a tag the registry does not have, a refused port, a registry that never answers: clear errors, timeout', async () => {
    const rt = new DockerRuntime({ logger, credentialsEnv: {} });
    await expect(rt.puller.ensure(`${reg.host}/tb/simple:nope`, 'if-missing', 30_000)).rejects.toThrow(/cannot pull image .*simple:nope/);
    const closed = await freePort();
    await expect(rt.puller.ensure(`127.0.0.1:${closed}/tb/x:1`, 'if-missing', 30_000)).rejects.toThrow(/cannot pull image 127\.0\.0\.1:\d+\/tb\/x:1: .*(refused|connect)/i);
    // Offline, the error says how to get the image without a registry.
    await expect(rt.puller.ensure(`127.0.0.1:${closed}/tb/x:1`, 'if-missing', 30_000)).rejects.toThrow(/the registry cannot be reached: build the image on this host/);
    // Accepts connections and never answers: only the pull timeout ends it.
    const sockets: net.Socket[] = [];
    const silent = net.createServer((sock) => sockets.push(sock));
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
    const port = (silent.address() as net.AddressInfo).port;
    const t0 = Date.now();
    await expect(rt.puller.ensure(`127.0.0.1:${port}/tb/x:1`, 'if-missing', 1500)).rejects.toThrow(/timed out after 1500 ms \(pull_timeout_ms\)/);
    expect(Date.now() - t0).toBeLessThan(10_000);
    for (const sock of sockets) sock.destroy();
    silent.close();
  });
});
