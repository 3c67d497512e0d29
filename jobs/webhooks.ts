/**
 * Webhooks of finished jobs: a POST of {id, status, result_url, model,
 * sent_at}, signed with HMAC-SHA256 over the exact body bytes under the
 * model's secret (or the global one), retried with exponential backoff; the
 * outcome is kept on the job (webhook_state, webhook_attempts,
 * webhook_last_status).
 *
 * Durable and shared by every broker on one Redis: the state change scripts
 * put a finished job with a webhook into the '<base>webhooks' sorted set
 * (score = when it is due). A dispatcher claims a due id by moving its score
 * one lease ahead (atomic), so one broker delivers it; a broker killed while
 * delivering leaves the id due again after the lease.
 *
 * Only http(s) URLs whose host is on the allow-list; every address the host
 * resolves to must be public, or itself on the list (an IP or a CIDR), so a
 * name cannot point at loopback or a private network unless the operator said
 * so. The connection goes to the address that was checked (DNS rebinding).
 */
import { createHmac } from 'node:crypto';
import dns from 'node:dns';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import type Redis from 'ioredis';
import type { Logger } from 'pino';
import { BrokerError } from '../core/errors';

export interface WebhookOptions {
  /** Hosts webhooks may go to: host names (exact), IP addresses or CIDRs. Empty: webhooks are refused. */
  allowHosts?: string[];
  /** The signing secret of every model without its own. */
  secret?: string;
  /** Per-model signing secrets. */
  secrets?: Record<string, string>;
  /** Deliveries per job (first try included). Default 5. */
  maxAttempts?: number;
  /** Wait before the second try; doubled each time, at most maxBackoffMs. Default 1 s. */
  backoffMs?: number;
  maxBackoffMs?: number;
  /** Per-delivery timeout. Default 10 s. */
  timeoutMs?: number;
  /** How often the due set is read. Default 250 ms. */
  pollMs?: number;
  /** Start of result_url (e.g. https://broker.example.com); default: a path only. */
  publicUrl?: string;
}

/** Claims a due id: moves it one lease ahead when it is due. KEYS: due set. ARGV: id, now, leaseUntil. */
const CLAIM = `
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s or tonumber(s) > tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
return 1
`;

const invalid = (msg: string) => new BrokerError('INVALID_ARGUMENT', msg);

/** Loopback, private, link-local, shared, multicast and reserved ranges: never reached unless listed. */
const INTERNAL = new net.BlockList();
for (const [a, p] of [['0.0.0.0', 8], ['10.0.0.0', 8], ['100.64.0.0', 10], ['127.0.0.0', 8], ['169.254.0.0', 16], ['172.16.0.0', 12],
  ['192.0.0.0', 24], ['192.168.0.0', 16], ['198.18.0.0', 15], ['224.0.0.0', 3]] as const) INTERNAL.addSubnet(a, p, 'ipv4');
for (const [a, p] of [['::', 127], ['fc00::', 7], ['fe80::', 10], ['ff00::', 8], ['64:ff9b::', 96]] as const) INTERNAL.addSubnet(a, p, 'ipv6');

/** An IPv4-mapped IPv6 address (::ffff:a.b.c.d) as IPv4, so it meets the IPv4 rules. */
function plain(address: string): { address: string; family: 'ipv4' | 'ipv6' } {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (m) return { address: m[1], family: 'ipv4' };
  return { address, family: net.isIPv6(address) ? 'ipv6' : 'ipv4' };
}

export class HostPolicy {
  private readonly names = new Set<string>();
  private readonly listed = new net.BlockList();

  constructor(entries: string[]) {
    for (const raw of entries) {
      const e = raw.trim().toLowerCase().replace(/^\[(.*)\]$/, '$1');
      if (!e) continue;
      const cidr = /^(.+)\/(\d+)$/.exec(e);
      if (cidr && net.isIP(cidr[1])) this.listed.addSubnet(cidr[1], Number(cidr[2]), net.isIPv6(cidr[1]) ? 'ipv6' : 'ipv4');
      else if (net.isIP(e)) this.listed.addAddress(plain(e).address, plain(e).family);
      else this.names.add(e);
    }
  }

  get empty(): boolean {
    return this.names.size === 0 && this.listed.rules.length === 0;
  }

  private isListed(address: string): boolean {
    const p = plain(address);
    return this.listed.check(p.address, p.family);
  }

  /** The URL, checked for scheme and host (no DNS yet). */
  parse(raw: unknown): URL {
    if (typeof raw !== 'string' || raw.length > 2048) throw invalid("'webhook_url' must be a URL of at most 2048 characters");
    let url: URL;
    try {
      url = new URL(raw);
    } catch {
      throw invalid("'webhook_url' is not a valid URL");
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw invalid("'webhook_url' must be an http or https URL");
    if (url.username || url.password) throw invalid("'webhook_url' must not carry credentials (the body is signed instead)");
    if (this.empty) throw invalid('webhooks are off on this broker: no host is allowed (jobs.webhooks.allowHosts, TB_JOBS_WEBHOOK_HOSTS)');
    const host = url.hostname.toLowerCase().replace(/^\[(.*)\]$/, '$1');
    if (net.isIP(host) ? !this.isListed(host) : !this.names.has(host)) throw invalid(`the host of 'webhook_url' is not on the allowed list`);
    return url;
  }

  /** Throws unless every address is public or listed. */
  checkAddresses(addresses: string[]): void {
    if (addresses.length === 0) throw invalid(`the host of 'webhook_url' has no address`);
    for (const a of addresses) {
      const p = plain(a);
      if (INTERNAL.check(p.address, p.family) && !this.isListed(a)) {
        throw invalid(`the host of 'webhook_url' resolves to an internal address (${a}) that is not on the allowed list`);
      }
    }
  }

  /** Resolves the URL's host and checks its addresses; the first one is where a delivery connects. */
  async resolve(url: URL): Promise<{ address: string; family: 4 | 6 }> {
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    let found: dns.LookupAddress[];
    if (net.isIP(host)) found = [{ address: host, family: net.isIPv6(host) ? 6 : 4 }];
    else {
      try {
        found = await dns.promises.lookup(host, { all: true, verbatim: true });
      } catch (e) {
        throw invalid(`the host of 'webhook_url' does not resolve (${(e as NodeJS.ErrnoException).code ?? 'error'})`);
      }
    }
    this.checkAddresses(found.map((f) => f.address));
    return { address: found[0].address, family: found[0].family === 6 ? 6 : 4 };
  }

  /** The URL a client gave, fully checked (submit: 400 when refused). */
  async check(raw: unknown): Promise<URL> {
    const url = this.parse(raw);
    await this.resolve(url);
    return url;
  }
}

/** sha256=<hex> of HMAC-SHA256(secret, body): what X-TensorBroker-Signature carries. */
export function signature(secret: string, body: string | Buffer): string {
  return `sha256=${createHmac('sha256', secret).update(body).digest('hex')}`;
}

/** One POST to the checked address; resolves with the HTTP status (or rejects on a network error or timeout). */
function post(url: URL, to: { address: string; family: 4 | 6 }, body: string, headers: Record<string, string>, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const lib = url.protocol === 'https:' ? https : http;
    const req = lib.request(url, {
      method: 'POST',
      headers: { ...headers, 'content-length': String(Buffer.byteLength(body)) },
      // The address checked above, not a second lookup that could answer differently.
      lookup: (_host: string, opts: { all?: boolean }, cb: (...a: unknown[]) => void) => {
        if (opts.all) cb(null, [to]);
        else cb(null, to.address, to.family);
      },
      timeout: timeoutMs,
    } as http.RequestOptions, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(body);
  });
}

export interface DispatcherContext {
  redis: Redis;
  /** '<base>webhooks' */
  dueKey: string;
  jobKey: (id: string) => string;
  log: Logger;
}

export class WebhookDispatcher {
  readonly policy: HostPolicy;
  private timer?: NodeJS.Timeout;
  private stopped = false;
  private readonly active = new Set<Promise<void>>();
  private readonly maxAttempts: number;
  private readonly backoffMs: number;
  private readonly maxBackoffMs: number;
  private readonly timeoutMs: number;
  private readonly pollMs: number;
  private readonly leaseMs: number;

  constructor(private readonly ctx: DispatcherContext, private readonly o: WebhookOptions) {
    this.policy = new HostPolicy(o.allowHosts ?? []);
    this.maxAttempts = o.maxAttempts ?? 5;
    this.backoffMs = o.backoffMs ?? 1000;
    this.maxBackoffMs = o.maxBackoffMs ?? 10 * 60_000;
    this.timeoutMs = o.timeoutMs ?? 10_000;
    this.pollMs = o.pollMs ?? 250;
    this.leaseMs = this.timeoutMs + 30_000;
  }

  /** The secret a model's webhooks are signed with (undefined: none configured). */
  secretFor(model: string): string | undefined {
    return this.o.secrets?.[model] ?? this.o.secret;
  }

  start(): void {
    const tick = async () => {
      if (this.stopped) return;
      try {
        await this.poll();
      } catch (err) {
        this.ctx.log.warn({ err }, 'webhooks: reading the due set failed');
      }
      if (!this.stopped) {
        this.timer = setTimeout(() => void tick(), this.pollMs);
        this.timer.unref();
      }
    };
    void tick();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    // Deliveries in progress finish (each is bounded by its timeout); unfinished ones are due again after the lease.
    await Promise.allSettled([...this.active]);
  }

  private async poll(): Promise<void> {
    const now = Date.now();
    const due = await this.ctx.redis.zrangebyscore(this.ctx.dueKey, '-inf', now, 'LIMIT', 0, 32);
    for (const id of due) {
      if (this.stopped || this.active.size >= 32) return;
      const claimed = await this.ctx.redis.eval(CLAIM, 1, this.ctx.dueKey, id, String(now), String(now + this.leaseMs));
      if (claimed !== 1) continue;
      const p = this.deliver(id).catch((err: unknown) => this.ctx.log.warn({ err, job: id }, 'webhooks: delivery bookkeeping failed'))
        .finally(() => this.active.delete(p));
      this.active.add(p);
    }
  }

  private async deliver(id: string): Promise<void> {
    const { redis, dueKey } = this.ctx;
    const key = this.ctx.jobKey(id);
    const [status, model, rawUrl, attemptsS] = await redis.hmget(key, 'status', 'model', 'webhook_url', 'webhook_attempts');
    if (!status || !model || !rawUrl) {
      await redis.zrem(dueKey, id); // forgotten job
      return;
    }
    const attempt = Number(attemptsS ?? 0) + 1;
    const secret = this.secretFor(model);
    let outcome: string;
    let ok = false;
    let host = '';
    try {
      if (!secret) throw new Error('no signing secret is configured for this model');
      const url = this.policy.parse(rawUrl); // the allow-list may have changed since submit
      host = url.host;
      const to = await this.policy.resolve(url);
      const sentAt = Math.floor(Date.now() / 1000);
      const body = JSON.stringify({ id, status, result_url: `${this.o.publicUrl ?? ''}/v2/jobs/${id}/result`, model, sent_at: sentAt });
      const code = await post(url, to, body, {
        'content-type': 'application/json',
        'user-agent': 'tensorbroker-webhooks',
        'x-tensorbroker-job': id,
        'x-tensorbroker-attempt': String(attempt),
        'x-tensorbroker-timestamp': String(sentAt),
        'x-tensorbroker-signature': signature(secret, body),
      }, this.timeoutMs);
      ok = code >= 200 && code < 300;
      outcome = String(code);
    } catch (e) {
      outcome = (e as Error).message.slice(0, 200);
    }
    const final = ok || attempt >= this.maxAttempts;
    await redis.hset(key, 'webhook_attempts', attempt, 'webhook_last_status', outcome,
      'webhook_state', ok ? 'delivered' : final ? 'failed' : 'retrying', 'webhook_at', Date.now());
    if (final) await redis.zrem(dueKey, id);
    else await redis.zadd(dueKey, 'XX', Date.now() + Math.min(this.maxBackoffMs, this.backoffMs * 2 ** (attempt - 1)), id);
    // The host only: a URL may carry a token of the receiver's.
    const log = { job: id, model, host, attempt, outcome };
    if (ok) this.ctx.log.debug(log, 'webhook delivered');
    else if (final) this.ctx.log.warn(log, 'webhook failed; no more attempts');
    else this.ctx.log.info(log, 'webhook attempt failed; retried later');
  }
}
