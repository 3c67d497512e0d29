/**
 * Who may call what, for every bridge (the table is in bridges/README.md,
 * "Access policy"). Three classes of call:
 *
 *  - open:    health, server/model metadata, config, statistics, repository index.
 *  - infer:   inference (REST infer, gRPC ModelInfer/ModelStreamInfer, ZeroMQ).
 *             Open unless API keys are configured (TB_API_KEYS); then a key is
 *             needed (the admin token also works).
 *  - admin:   model control (repository load/unload), the sequence listing,
 *             /admin/instances, crash log lines. The admin token (TB_ADMIN_TOKEN)
 *             is needed; with no token configured only loopback peers may call.
 *
 * Missing or wrong credentials → UNAUTHENTICATED (401); valid credentials that
 * do not reach the class, or a remote peer with no admin token configured →
 * PERMISSION_DENIED (403). Secrets are compared in constant time (on their
 * SHA-256 digests, so their lengths do not leak either) and never logged.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';
import { BrokerError } from '../../core/errors';

export type CallClass = 'open' | 'infer' | 'admin';

export interface AccessOptions {
  /** TB_ADMIN_TOKEN; undefined or '' = none configured. */
  adminToken?: string;
  /** TB_API_KEYS; empty = inference is open. */
  apiKeys?: readonly string[];
}

/** What a caller presented: a bearer token / API key, and where it came from. */
export interface Caller {
  /** The credential given (Authorization: Bearer, x-api-key, gRPC metadata, ZeroMQ key frame), if any. */
  credential?: string;
  /** The peer's address (IPv4, IPv6 or an IPv4-mapped IPv6 address). */
  address?: string;
}

const digest = (s: string) => createHash('sha256').update(s, 'utf8').digest();

/** Loopback: 127.0.0.0/8, ::1 and ::ffff:127.x.y.z. */
export function isLoopback(address: string | undefined): boolean {
  if (!address) return false;
  let a = address.trim();
  if (a.startsWith('[')) a = a.slice(1, a.indexOf(']'));
  if (a.startsWith('::ffff:')) a = a.slice(7);
  if (isIP(a) === 4) return a.startsWith('127.');
  return a === '::1';
}

export class AccessControl {
  private readonly admin?: Buffer;
  private readonly keys: Buffer[];

  constructor(opts: AccessOptions = {}) {
    this.admin = opts.adminToken ? digest(opts.adminToken) : undefined;
    this.keys = (opts.apiKeys ?? []).filter((k) => k !== '').map(digest);
  }

  /** True when inference needs an API key. */
  get inferenceKeyed(): boolean {
    return this.keys.length > 0;
  }

  get adminConfigured(): boolean {
    return this.admin !== undefined;
  }

  isAdmin(credential: string | undefined): boolean {
    return this.admin !== undefined && credential !== undefined && timingSafeEqual(digest(credential), this.admin);
  }

  private isKey(credential: string | undefined): boolean {
    if (credential === undefined) return false;
    const d = digest(credential);
    let hit = false;
    for (const k of this.keys) hit = timingSafeEqual(d, k) || hit; // no early exit: same time for every key
    return hit;
  }

  /** May this caller see admin-only details (crash log lines)? No error, just yes/no. */
  seesAdminDetails(caller: Caller): boolean {
    return this.check('admin', caller) === undefined;
  }

  /** undefined when allowed, else the BrokerError to answer with. */
  check(cls: CallClass, caller: Caller): BrokerError | undefined {
    if (cls === 'open') return undefined;
    const cred = caller.credential;
    if (cls === 'infer') {
      if (!this.inferenceKeyed || this.isKey(cred) || this.isAdmin(cred)) return undefined;
      return new BrokerError('UNAUTHENTICATED', cred === undefined ? 'an API key is required for inference' : 'the API key is not valid');
    }
    if (this.admin === undefined) {
      if (isLoopback(caller.address)) return undefined;
      return new BrokerError('PERMISSION_DENIED', 'this call is restricted: set TB_ADMIN_TOKEN to allow it from other hosts than loopback');
    }
    if (this.isAdmin(cred)) return undefined;
    if (cred !== undefined && this.isKey(cred)) return new BrokerError('PERMISSION_DENIED', 'this call needs the admin token; an API key allows inference only');
    return new BrokerError('UNAUTHENTICATED', cred === undefined ? 'this call needs the admin token' : 'the admin token is not valid');
  }

  /** Like check(), throwing. */
  require(cls: CallClass, caller: Caller): void {
    const e = this.check(cls, caller);
    if (e) throw e;
  }
}

/** The credential of an HTTP request or gRPC call: `Authorization: Bearer x` or `x-api-key: x`. */
export function credentialOf(authorization: unknown, apiKey: unknown): string | undefined {
  const first = (v: unknown) => (Array.isArray(v) ? v[0] : v);
  const auth = first(authorization);
  if (typeof auth === 'string') {
    const m = /^Bearer\s+(.+)$/i.exec(auth.trim());
    if (m) return m[1];
  }
  const key = first(apiKey);
  if (typeof key === 'string' && key !== '') return key.trim();
  if (Buffer.isBuffer(key)) return key.toString('utf8');
  return undefined;
}

/** The part of an "unavailable" reason that quotes a crashed copy's log (task-manager/health.ts). */
const LOG_LINES = /; last log lines: [\s\S]*$/;
/**
 * A copy's exit message quotes its last log line after how it ended
 * (task-manager/copies.ts exitMessage): "… exited with code 3: <line>".
 */
const EXIT_LINE = /(exited with code -?\d+|exited \(code -?\d+\)|killed by \w+|OOM killed|\bended): (.*?)(?= \((?:exit code|OOM)|; last log lines: |$)/g;

/**
 * Removes quoted crash log lines from a reason or error message (they may hold
 * secrets or paths). Text-based, because the task manager puts them into its
 * messages; the admin token holder sees them whole.
 */
export function withoutLogLines(text: string): string {
  if (!text.includes(': ')) return text;
  return text.replace(EXIT_LINE, '$1: (log line hidden)').replace(LOG_LINES, '; last log lines: (hidden: need the admin token)');
}
