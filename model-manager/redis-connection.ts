/**
 * One way to open a Redis connection for the broker: the URL may carry an ACL
 * user and password (redis://user:pass@host:6379/0), `rediss://` turns TLS on,
 * and `caFile` adds a CA for servers with a private certificate. The password
 * never appears in a log line or an error message (see `redactUrl`).
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import Redis, { type RedisOptions } from 'ioredis';

export interface RedisSettings {
  url: string;
  /** PEM file of the CA that signed the server certificate (rediss:// only). */
  caFile?: string;
}

/** The URL with its password replaced by "***" (for logs and errors). */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString().replace(/\/$/, '');
  } catch {
    return '<unparsable redis url>';
  }
}

export function createRedis(settings: RedisSettings, options: RedisOptions = {}): Redis {
  const extra: RedisOptions = {};
  if (settings.url.startsWith('rediss://')) {
    extra.tls = settings.caFile ? { ca: readFileSync(settings.caFile) } : {};
    // No SNI for an IP address (servers answer it with a decode_error alert); the certificate is still checked against the IP.
    if (isIP(new URL(settings.url).hostname.replace(/^\[|\]$/g, ''))) extra.tls.servername = '';
  }
  return new Redis(settings.url, { ...options, ...extra });
}

/** A message that names the fix, for a Redis that cannot be reached at start. */
export function unreachableMessage(url: string, why: string): string {
  if (/certificate|self.signed|SSL|TLS/i.test(why)) {
    return `cannot reach Redis at ${redactUrl(url)} over TLS (${why}): give the CA that signed its certificate with --redis-ca-file / TB_REDIS_CA_FILE`;
  }
  return (
    `cannot reach Redis at ${redactUrl(url)} (${why}): start redis-server there, fix --redis-url / TB_REDIS_URL, ` +
    `or drop --redis-url to use the embedded registry`
  );
}
