/**
 * The broker directory and the sequence directory on Redis (README "Several
 * brokers"). Each broker keeps a key `<prefix>cluster:broker:<id>` alive with a
 * TTL (its lease: `leaseMs`, refreshed every `leaseMs / 3`), holding its
 * incarnation (random per start) and the URL other brokers forward to. A
 * stateful sequence is `<prefix>cluster:seq:<model>:<id>`: "<owner>\t<incarnation>"
 * while a broker holds it, "~<reason>" once it ended (kept `tombstoneMs` to explain
 * a late request). Claims and lookups are Lua scripts, so two brokers never both
 * own one sequence, and an owner whose lease expired (or that restarted: another
 * incarnation) counts as gone.
 */
import { randomBytes } from 'node:crypto';
import type Redis from 'ioredis';
import type { Logger } from 'pino';
import type { SequenceDirectory, SequencePlace } from '../core/cluster';

export interface BrokerEntry {
  id: string;
  incarnation: string;
  /** Base URL of the broker's HTTP port, as other brokers reach it (e.g. http://10.0.3.7:8000). */
  url: string;
  startedAt: number;
}

export interface DirectoryOptions {
  redis: Redis;
  prefix: string;
  /** This broker's id and the URL other brokers forward to (empty: given to start()). */
  self: { id: string; url: string };
  /** How long a broker counts as alive after its last heartbeat (default 3000 ms). */
  leaseMs?: number;
  /** How long an ended sequence's reason is kept (default 10 min). */
  tombstoneMs?: number;
  logger: Logger;
}

// KEYS[1] seq key; ARGV: self id, incarnation, sequence lease ms, broker key prefix
const CLAIM = `
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 1) ~= '~' then
  local owner, inc = string.match(v, '^([^\\t]*)\\t(.*)$')
  if not (owner == ARGV[1] and inc == ARGV[2]) then
    local b = redis.call('GET', ARGV[4] .. owner)
    if b and cjson.decode(b).incarnation == inc then return {'remote', owner, b} end
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. '\\t' .. ARGV[2], 'PX', ARGV[3])
return {'mine'}
`;

// KEYS[1] seq key; ARGV: self id, incarnation, tombstone ms, broker key prefix
const LOCATE = `
local v = redis.call('GET', KEYS[1])
if not v then return {'none'} end
if string.sub(v, 1, 1) == '~' then return {'ended', string.sub(v, 2)} end
local owner, inc = string.match(v, '^([^\\t]*)\\t(.*)$')
if owner == ARGV[1] and inc == ARGV[2] then return {'mine'} end
local b = redis.call('GET', ARGV[4] .. owner)
if b and cjson.decode(b).incarnation == inc then return {'remote', owner, b} end
local why = "its owner broker '" .. owner .. "' is gone (its lease expired or it restarted); the state of the sequence is lost"
redis.call('SET', KEYS[1], '~' .. why, 'PX', ARGV[3])
return {'ended', why}
`;

// KEYS[1] seq key; ARGV: self id, incarnation, reason, tombstone ms
const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] .. '\\t' .. ARGV[2] then
  redis.call('SET', KEYS[1], '~' .. ARGV[3], 'PX', ARGV[4])
end
return 1
`;

export class BrokerDirectory implements SequenceDirectory {
  readonly self: string;
  readonly incarnation = randomBytes(8).toString('hex');
  readonly leaseMs: number;
  private readonly tombstoneMs: number;
  /** Prefix of the brokers' lease keys (the copy budget checks them too). */
  readonly brokerKeyPrefix: string;
  private readonly seqPrefix: string;
  private readonly redis: Redis;
  private readonly log: Logger;
  private entry = '';
  /** Sequences this broker holds (their keys), refreshed with the heartbeat. */
  private readonly owned = new Set<string>();
  private timer?: NodeJS.Timeout;
  private beating = false;

  constructor(private readonly opts: DirectoryOptions) {
    this.self = opts.self.id;
    this.redis = opts.redis;
    this.leaseMs = opts.leaseMs ?? 3000;
    this.tombstoneMs = opts.tombstoneMs ?? 600_000;
    this.brokerKeyPrefix = `${opts.prefix}cluster:broker:`;
    this.seqPrefix = `${opts.prefix}cluster:seq:`;
    this.log = opts.logger.child({ component: 'cluster' });
    this.redis.defineCommand('tbSeqClaim', { numberOfKeys: 1, lua: CLAIM });
    this.redis.defineCommand('tbSeqLocate', { numberOfKeys: 1, lua: LOCATE });
    this.redis.defineCommand('tbSeqRelease', { numberOfKeys: 1, lua: RELEASE });
  }

  /** Registers this broker and keeps its lease alive until stop(). */
  async start(url = this.opts.self.url): Promise<void> {
    this.setEntry(url);
    await this.beat();
    this.timer = setInterval(() => void this.beat(), Math.max(50, Math.floor(this.leaseMs / 3)));
    this.timer.unref();
    this.log.info({ incarnation: this.incarnation, leaseMs: this.leaseMs }, 'joined the broker directory');
  }

  /** Publishes the URL other brokers forward to (known once the HTTP port is bound). */
  async advertise(url: string): Promise<void> {
    this.setEntry(url);
    await this.beat();
    this.log.info({ url }, 'forwarding address published in the broker directory');
  }

  private setEntry(url: string): void {
    const e: BrokerEntry = { id: this.self, incarnation: this.incarnation, url, startedAt: Date.now() };
    this.entry = JSON.stringify(e);
  }

  /** Leaves the directory at once (a clean stop): other brokers see this broker's sequences as gone without waiting for the lease. */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.redis.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 1", 1, this.brokerKeyPrefix + this.self, this.entry)
      .catch((err: unknown) => this.log.warn({ err }, 'cannot leave the broker directory'));
  }

  /** Live brokers (their leases not expired). */
  async brokers(): Promise<BrokerEntry[]> {
    const keys: string[] = [];
    let cursor = '0';
    do {
      const [next, found] = await this.redis.scan(cursor, 'MATCH', `${this.brokerKeyPrefix}*`, 'COUNT', 200);
      cursor = next;
      keys.push(...found);
    } while (cursor !== '0');
    if (keys.length === 0) return [];
    const values = await this.redis.mget(...keys);
    return values.filter((v): v is string => v !== null).map((v) => JSON.parse(v) as BrokerEntry);
  }

  async claim(model: string, id: string): Promise<SequencePlace> {
    const key = this.seqKey(model, id);
    const r = await this.call('tbSeqClaim', key, this.self, this.incarnation, String(this.seqLeaseMs()), this.brokerKeyPrefix);
    const place = this.place(r);
    if (place.kind === 'mine') this.owned.add(key);
    return place;
  }

  async locate(model: string, id: string): Promise<SequencePlace> {
    return this.place(await this.call('tbSeqLocate', this.seqKey(model, id), this.self, this.incarnation, String(this.tombstoneMs), this.brokerKeyPrefix));
  }

  release(model: string, id: string, reason: string): void {
    const key = this.seqKey(model, id);
    if (!this.owned.delete(key)) return;
    this.call('tbSeqRelease', key, this.self, this.incarnation, reason, String(this.tombstoneMs))
      .catch((err: unknown) => this.log.warn({ err, model, sequence: id }, 'cannot release a sequence in the directory (its lease runs out)'));
  }

  /** Sequence keys live a few broker leases; the heartbeat refreshes the ones this broker holds. */
  private seqLeaseMs(): number {
    return this.leaseMs * 3;
  }

  private seqKey(model: string, id: string): string {
    return `${this.seqPrefix}${model.length}:${model}:${id}`;
  }

  private place(r: unknown): SequencePlace {
    const [kind, a, b] = r as string[];
    if (kind === 'mine') return { kind: 'mine' };
    if (kind === 'none') return { kind: 'none' };
    if (kind === 'ended') return { kind: 'ended', reason: a };
    return { kind: 'remote', broker: a, url: (JSON.parse(b) as BrokerEntry).url };
  }

  private call(cmd: string, ...args: string[]): Promise<unknown> {
    return (this.redis as unknown as Record<string, (...a: string[]) => Promise<unknown>>)[cmd](...args);
  }

  /** Called when this broker's lease had expired before its heartbeat renewed it (a stalled event loop or Redis). */
  onLapse?: () => void;
  private beats = 0;

  private async beat(): Promise<void> {
    if (this.beating || this.entry === '') return; // not started yet
    this.beating = true;
    try {
      const m = this.redis.multi().set(this.brokerKeyPrefix + this.self, this.entry, 'PX', this.leaseMs, 'GET');
      for (const key of this.owned) m.pexpire(key, this.seqLeaseMs());
      const res = await m.exec();
      const before = res?.[0]?.[1];
      if (this.beats++ > 0 && before === null) {
        // Meanwhile other brokers may have taken this broker's copy places and answered its sequences as gone.
        this.log.warn({ leaseMs: this.leaseMs }, 'this broker\'s lease had expired before its heartbeat: other brokers saw it gone meanwhile');
        this.onLapse?.();
      }
    } catch (err) {
      this.log.warn({ err }, 'broker heartbeat to Redis failed: other brokers see this broker gone once its lease expires');
    } finally {
      this.beating = false;
    }
  }
}
