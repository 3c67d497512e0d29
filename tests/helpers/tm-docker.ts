/** A TaskManager over the real Docker daemon for a test, with a unique owner label and cleanup. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Docker from 'dockerode';
import pino from 'pino';
import { SPEC_DEFAULTS, type ModelSpec } from '../../core/model-spec';
import { DockerRuntime, LABEL_OWNER, type DockerRuntimeOptions } from '../../task-manager/docker-runtime';
import { LinkServer } from '../../task-manager/link-server';
import { TaskManager, type TaskManagerOptions } from '../../task-manager/task-manager';

export const docker = new Docker({ socketPath: '/var/run/docker.sock' });
export const testLogger = pino({ level: process.env.TB_TEST_LOG ?? 'silent' });

let n = 0;

export interface DockerTm {
  tm: TaskManager;
  runtime: DockerRuntime;
  owner: string;
  dir: string;
  owned(): Promise<Docker.ContainerInfo[]>;
  close(): Promise<void>;
}

export function dockerTm(opts: { runtime?: DockerRuntimeOptions; tm?: Partial<TaskManagerOptions> } = {}): DockerTm {
  const owner = `tmtest-${process.pid}-${++n}`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tb-tmd-'));
  const link = new LinkServer({ socketDir: dir, heartbeatMs: 250, logger: testLogger });
  const runtime = new DockerRuntime({ logger: testLogger, ...opts.runtime });
  const tm = new TaskManager({ runtime, link, brokerId: owner, logger: testLogger, backoffInitialMs: 100, stopGraceMs: 2000, autoscaleIntervalMs: 200, ...opts.tm });
  const owned = () => docker.listContainers({ all: true, filters: { label: [`${LABEL_OWNER}=${owner}`] } });
  return {
    tm, runtime, owner, dir, owned,
    async close() {
      await tm.close(2000);
      for (const c of await owned()) await docker.getContainer(c.Id).remove({ force: true }).catch(() => undefined);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

export function modelSpec(name: string, image: string, over: Partial<ModelSpec> = {}): ModelSpec {
  // pull_policy never: tests must not reach a registry.
  return { ...SPEC_DEFAULTS, name, image, batch_size: 4, startup_timeout_ms: 20_000, pull_policy: 'never', env: {}, source: 'file', ...over };
}

export async function until(check: () => boolean | Promise<boolean>, ms = 30_000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
