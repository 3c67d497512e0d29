/**
 * Starts a throwaway redis-server for a test suite: free port, temp dir, no
 * persistence, ready when it answers PING. The benchmark's starter does the
 * work; this adds the temp dir and removes it on stop.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { startRedis as startRedisIn, type RedisProc } from '../../bench/procs';

export type RedisHandle = RedisProc;

export async function startRedis(deadlineMs = 10_000): Promise<RedisHandle> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tb-redis-'));
  try {
    const redis = await startRedisIn(dir, deadlineMs);
    return { ...redis, stop: () => redis.stop().finally(() => rm(dir, { recursive: true, force: true })) };
  } catch (e) {
    await rm(dir, { recursive: true, force: true });
    throw e;
  }
}
