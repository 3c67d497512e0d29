/**
 * The admin token: `Authorization: Bearer <TB_ADMIN_TOKEN>`, compared in
 * constant time. Reads work without it (env values hidden); changes need it.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { BrokerError } from '../core/errors';

export type AuthResult = 'ok' | 'none' | 'disabled';

function digest(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

/** 'ok' | 'none' (no or wrong credentials) | 'disabled' (no token configured). */
export function tokenChecker(token: string | undefined): (req: FastifyRequest) => AuthResult {
  const want = token ? digest(token) : undefined;
  return (req) => {
    if (!want) return 'disabled';
    const h = req.headers.authorization;
    const m = typeof h === 'string' ? /^Bearer\s+(.+)$/i.exec(h.trim()) : null;
    if (!m) return 'none';
    return timingSafeEqual(digest(m[1]), want) ? 'ok' : 'none';
  };
}

/** An onRequest hook that lets only token holders through (401, or 403 when no token is configured). */
export function requireToken(check: (req: FastifyRequest) => AuthResult, log: Logger) {
  return async (req: FastifyRequest, reply: FastifyReply): Promise<void> => {
    const auth = check(req);
    if (auth === 'ok') return;
    log.warn({ method: req.method, url: req.url, ip: req.ip, auth }, 'admin change refused');
    if (auth === 'disabled') throw new BrokerError('PERMISSION_DENIED', 'admin API disabled: set TB_ADMIN_TOKEN');
    void reply.header('www-authenticate', 'Bearer');
    throw new BrokerError('UNAUTHENTICATED', 'missing or wrong bearer token');
  };
}
