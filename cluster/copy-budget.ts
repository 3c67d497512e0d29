/**
 * The per-model copy budget shared by the brokers of one Redis
 * (task-manager/controller-host.ts CopyBudget): a hash
 * `<prefix>cluster:copies:<model>` with one field per running copy,
 * "<broker>\t<incarnation>\t<copy id>". A claim (Lua, atomic) first drops the
 * places of brokers whose lease expired (or that restarted), then takes one if
 * fewer than max_replicas are held (always, for a copy within the claiming
 * broker's min_replicas: each broker keeps its floor and is ready by itself). So the copies of all brokers together stay
 * within max_replicas, two brokers never start a copy for the same place, and
 * a dead broker's places come back once its lease expires.
 *
 * While this broker has no ready copy of a stateless model and every place is
 * taken, the core forwards its requests to a broker holding one (`overflow`),
 * so no broker's clients wait for a copy it may not start; the holders count
 * that demand in their own queues.
 */
import type Redis from 'ioredis';
import type { Logger } from 'pino';
import type { BrokerDirectory, BrokerEntry } from './directory';

// KEYS[1] budget hash; ARGV: field, max, broker key prefix, '1' for a copy within the broker's min_replicas floor
const CLAIM = `
local all = redis.call('HGETALL', KEYS[1])
local n = 0
local out = {}
for i = 1, #all, 2 do
  local f = all[i]
  local b, inc = string.match(f, '^([^\\t]*)\\t([^\\t]*)\\t')
  local e = b and redis.call('GET', ARGV[3] .. b)
  if e and cjson.decode(e).incarnation == inc then
    n = n + 1
    out[#out + 1] = e
  else
    redis.call('HDEL', KEYS[1], f)
  end
end
if n < tonumber(ARGV[2]) or ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], ARGV[1], '1')
  return {1, n + 1, unpack(out)}
end
return {0, n, unpack(out)}
`;

// KEYS[1] budget hash; ARGV: broker key prefix. Read only: the live places and their brokers.
const HOLDERS = `
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local b, inc = string.match(all[i], '^([^\\t]*)\\t([^\\t]*)\\t')
  local e = b and redis.call('GET', ARGV[1] .. b)
  if e and cjson.decode(e).incarnation == inc then out[#out + 1] = e end
end
return out
`;

/** How long one look at the budget decides where requests of a model without a local copy go. */
const LOOK_MS = 500;

export class RedisCopyBudget {
  private readonly log: Logger;
  private readonly looks = new Map<string, { at: number; holders: BrokerEntry[]; next: number; full: boolean; pending?: Promise<void> }>();

  constructor(private readonly redis: Redis, private readonly prefix: string, private readonly directory: BrokerDirectory, logger: Logger) {
    this.log = logger.child({ component: 'cluster' });
    redis.defineCommand('tbCopyClaim', { numberOfKeys: 1, lua: CLAIM });
    redis.defineCommand('tbCopyHolders', { numberOfKeys: 1, lua: HOLDERS });
  }

  async claim(model: string, copyId: string, max: number, floor: boolean): Promise<boolean> {
    const r = (await (this.redis as unknown as { tbCopyClaim(...a: string[]): Promise<unknown[]> })
      .tbCopyClaim(this.key(model), this.field(copyId), String(max), this.directory.brokerKeyPrefix, floor ? '1' : '0')) as [number, number, ...string[]];
    const [ok, , ...entries] = r;
    this.remember(model, entries, ok !== 1);
    if (ok === 1) this.track(model, copyId);
    return ok === 1;
  }

  /**
   * Where a request of a stateless model goes while this broker has no ready copy
   * of it: a broker holding one of its places when every place is taken (round
   * robin), else undefined (serve here: a copy may start). One look at Redis per
   * LOOK_MS and model.
   */
  async overflow(model: string, max: number): Promise<{ broker: string; url: string } | undefined> {
    let look = this.looks.get(model);
    if (!look || Date.now() - look.at > LOOK_MS) {
      if (!look?.pending) {
        const pending = (this.redis as unknown as { tbCopyHolders(...a: string[]): Promise<string[]> })
          .tbCopyHolders(this.key(model), this.directory.brokerKeyPrefix)
          .then((entries) => this.remember(model, entries, entries.length >= max));
        if (look) look.pending = pending;
        await pending;
      } else await look.pending;
      look = this.looks.get(model)!;
    }
    if (!look.full || look.holders.length === 0) return undefined;
    const h = look.holders[look.next++ % look.holders.length];
    return { broker: h.id, url: h.url };
  }

  private remember(model: string, entries: string[], full: boolean): void {
    const others = entries.map((e) => JSON.parse(e) as BrokerEntry).filter((e) => e.id !== this.directory.self);
    this.looks.set(model, { at: Date.now(), holders: [...new Map(others.map((h) => [h.id, h])).values()], next: 0, full });
  }

  /** Places this broker holds, to write them again after a lapse of its lease. */
  private readonly held = new Map<string, Set<string>>();

  /** After a lapse of this broker's lease: its places (dropped by other brokers' claims meanwhile) are written again. */
  reassert(): void {
    for (const [model, ids] of this.held) for (const id of ids) this.hold(model, id);
  }

  hold(model: string, copyId: string): void {
    this.track(model, copyId);
    this.redis.hset(this.key(model), this.field(copyId), '1').catch((err: unknown) => this.log.warn({ err, model, copy: copyId }, 'cannot record an adopted copy in the shared budget'));
  }

  private track(model: string, copyId: string): void {
    let ids = this.held.get(model);
    if (!ids) this.held.set(model, (ids = new Set()));
    ids.add(copyId);
  }

  release(model: string, copyId: string): void {
    this.held.get(model)?.delete(copyId);
    this.redis.hdel(this.key(model), this.field(copyId)).catch((err: unknown) =>
      this.log.warn({ err, model, copy: copyId }, 'cannot release a copy place in the shared budget (it returns when this broker\'s lease expires)'));
  }

  private key(model: string): string {
    return `${this.prefix}cluster:copies:${model}`;
  }

  private field(copyId: string): string {
    return `${this.directory.self}\t${this.directory.incarnation}\t${copyId}`;
  }
}
