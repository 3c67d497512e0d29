/**
 * Placements: which copy runs in which container on which GPUs, in what state.
 * Kept in Redis under the registry prefix so a restarted broker can adopt its
 * copies (with the metadata from their READY) and operators can see them:
 *
 *   {prefix}placements:{brokerId}   hash: copy id -> JSON Placement
 */
import type Redis from 'ioredis';
import type { ModelMetadata } from '../core/types';

export type InstanceState = 'waiting' | 'starting' | 'ready' | 'busy' | 'draining' | 'failed' | 'stopped';

export interface Placement {
  copyId: string;
  model: string;
  version: string;
  brokerId: string;
  /** Hash of what makes a copy (image, version, env, ...): a copy with another one is replaced. */
  fingerprint: string;
  state: InstanceState;
  runtime: 'docker' | 'process';
  runtimeId?: string;
  name?: string;
  image?: string;
  gpus?: string[];
  startedAt: number;
  readyAt?: number;
  updatedAt: number;
  /** From the copy's READY: lets a restarted broker use the copy without a new READY. */
  metadata?: ModelMetadata;
  credits?: number;
  maxSequences?: number;
  /** Why it failed or stopped. */
  reason?: string;
}

export interface PlacementStore {
  readonly kind: 'redis' | 'memory';
  put(p: Placement): Promise<void>;
  remove(copyId: string): Promise<void>;
  /** This broker's placements. */
  list(): Promise<Placement[]>;
  close(): Promise<void>;
}

export class MemoryPlacementStore implements PlacementStore {
  readonly kind = 'memory' as const;
  private readonly map = new Map<string, Placement>();

  async put(p: Placement): Promise<void> {
    this.map.set(p.copyId, { ...p });
  }

  async remove(copyId: string): Promise<void> {
    this.map.delete(copyId);
  }

  async list(): Promise<Placement[]> {
    return [...this.map.values()].map((p) => ({ ...p }));
  }

  async close(): Promise<void> {}
}

export function placementsKey(prefix: string, brokerId: string): string {
  return `${prefix}placements:${brokerId}`;
}

/** Writes are fire-and-forget from the task manager's point of view: a Redis outage must not stop copies. */
export class RedisPlacementStore implements PlacementStore {
  readonly kind = 'redis' as const;
  private readonly key: string;

  constructor(
    private readonly redis: Redis,
    prefix: string,
    brokerId: string,
    private readonly ownsConnection = false,
  ) {
    this.key = placementsKey(prefix, brokerId);
  }

  async put(p: Placement): Promise<void> {
    await this.redis.hset(this.key, p.copyId, JSON.stringify(p));
  }

  async remove(copyId: string): Promise<void> {
    await this.redis.hdel(this.key, copyId);
  }

  async list(): Promise<Placement[]> {
    const all = await this.redis.hgetall(this.key);
    const out: Placement[] = [];
    for (const v of Object.values(all)) {
      try {
        out.push(JSON.parse(v) as Placement);
      } catch {
        // A corrupt record is treated as absent (its container is then stale).
      }
    }
    return out;
  }

  async close(): Promise<void> {
    if (this.ownsConnection) await this.redis.quit().catch(() => undefined);
  }
}
