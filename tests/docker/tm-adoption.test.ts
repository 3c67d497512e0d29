/**
 * kill -9 the broker, start it again with the same id: it adopts its running
 * containers (labels + placements in Redis), removes stale ones, never touches
 * another broker's, and nothing leaks or is duplicated (`docker ps` by label).
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import Redis from 'ioredis';
import { LABEL_OWNER } from '../../task-manager/docker-runtime';
import { placementsKey } from '../../task-manager/placement-store';
import { getJson, postJson, row, simpleBody, waitFor } from '../helpers/broker';
import { exited, startCliBroker, type CliBroker } from '../helpers/cli-broker';
import { startRedis, type RedisHandle } from '../helpers/redis';
import { ensureTaskManagerImages } from '../helpers/test-images';
import { docker } from '../helpers/tm-docker';
import { imageTag } from '../../examples/build-images';

jest.setTimeout(240_000);

describe('broker restart adopts its containers', () => {
  let redis: RedisHandle;
  let dir: string;
  let a: CliBroker | undefined;
  const id = `adopt-${process.pid}`;
  const other = `adopt-other-${process.pid}`;
  const owned = (owner = id) => docker.listContainers({ all: true, filters: { label: [`${LABEL_OWNER}=${owner}`] } });
  let args: string[];

  beforeAll(async () => {
    await ensureTaskManagerImages();
    redis = await startRedis();
    dir = await mkdtemp(path.join(os.tmpdir(), 'tb-adopt-'));
    const models = {
      simple: { image: imageTag('simple'), pull_policy: 'never', min_replicas: 2, max_replicas: 2, batch_size: 4 },
      sleepy: { image: imageTag('sleepy'), pull_policy: 'never', batch_size: 4, env: { SLEEPY_A_MS: '1' } },
    };
    await writeFile(path.join(dir, 'models.yaml'), stringify({ models }));
    args = ['--runtime', 'docker', '--models', path.join(dir, 'models.yaml'), '--redis-url', redis.url, '--redis-prefix', `${id}:`,
      '--socket-dir', path.join(dir, 'sock'), '--broker-id', id, '--heartbeat-ms', '250'];
  });

  afterAll(async () => {
    if (a && a.child.exitCode === null) a.child.kill('SIGKILL');
    for (const owner of [id, other]) for (const c of await owned(owner)) await docker.getContainer(c.Id).remove({ force: true }).catch(() => undefined);
    await redis?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const ready = (b: CliBroker) => waitFor(async () => (await fetch(`${b.url}/v2/health/ready`)).status === 200, 60_000, 'broker ready');

  test('kill -9, restart: same containers, stale one removed, the other broker untouched, serving; SIGTERM removes all', async () => {
    a = await startCliBroker(args);
    await ready(a);
    // Every copy has sent READY (and its placement was written) before the kill.
    const first = a;
    await waitFor(async () => {
      const inst = (await getJson(`${first.url}/admin/instances`)).instances as { state: string }[];
      return inst.length === 3 && inst.every((i) => i.state === 'ready');
    }, 60_000, 'three ready copies');
    // ... and its placement is in Redis (what the restarted broker adopts by).
    const r = new Redis(redis.url);
    try {
      await waitFor(async () => (await r.hlen(placementsKey(`${id}:`, id))) === 3, 30_000, 'three placements written');
    } finally {
      r.disconnect();
    }
    const before = (await owned()).filter((c) => c.State === 'running').map((c) => c.Id).sort();
    expect(before).toHaveLength(3);

    a.child.kill('SIGKILL');
    await exited(a.child);
    // The copies outlive the broker.
    expect((await owned()).filter((c) => c.State === 'running').map((c) => c.Id).sort()).toEqual(before);
    // A stale container of this broker (exited) and a container of another broker.
    const stale = await docker.createContainer({ Image: imageTag('simple'), Labels: { [LABEL_OWNER]: id, 'tensorbroker.model': 'simple', 'tensorbroker.copy': 'stale0000000' }, HostConfig: { NetworkMode: 'none' } });
    const foreign = await docker.createContainer({ Image: imageTag('simple'), Labels: { [LABEL_OWNER]: other }, HostConfig: { NetworkMode: 'none' } });

    a = await startCliBroker(args);
    await ready(a);
    const after = await owned();
    expect(after.map((c) => c.Id).sort()).toEqual(before); // adopted: no new container, no duplicate, stale gone
    expect(after.every((c) => c.State === 'running')).toBe(true);
    expect(after.map((c) => c.Id)).not.toContain(stale.id);
    expect((await owned(other)).map((c) => c.Id)).toEqual([foreign.id]);
    expect(a.lines.filter((l) => l.msg === 'adopting a running copy of an earlier run')).toHaveLength(3);

    const inst = await getJson(`${a.url}/admin/instances`);
    expect(inst.broker).toBe(id);
    expect(inst.instances.filter((i: { adopted?: boolean }) => i.adopted)).toHaveLength(3);
    const res = await Promise.all([1, 2, 3, 4].map((i) => postJson(`${a!.url}/v2/models/simple/infer`, simpleBody([row(16, i)], [row(16)]))));
    expect(res.map((r) => r.status)).toEqual([200, 200, 200, 200]);
    const s = await postJson(`${a.url}/v2/models/sleepy/infer`, { inputs: [{ name: 'INPUT0', datatype: 'FP32', shape: [1, 2], data: [1, 2] }] });
    expect(s.status).toBe(200);

    a.child.kill('SIGTERM');
    await exited(a.child);
    expect(await owned()).toEqual([]);
    expect((await owned(other)).map((c) => c.Id)).toEqual([foreign.id]);
  });
});
