/**
 * Registry writes on behalf of the bridges (Triton's load with a `config`):
 * the same bearer token as the admin API, the same validation as PATCH
 * /admin/models/{m}. Without a token configured such loads are open, as
 * Triton's model control is (the brief of issue 13); set TB_ADMIN_TOKEN to guard them.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { AdminHooks } from '../core/broker';
import { BrokerError } from '../core/errors';
import type { ModelSpec } from '../core/model-spec';

const digest = (s: string) => createHash('sha256').update(s).digest();

export function adminHooks(registry: { patch(name: string, partial: Record<string, unknown>): Promise<ModelSpec> }, token?: string): AdminHooks {
  const tokenDigest = token ? digest(token) : undefined;
  return {
    authorize(credential?: string) {
      if (!tokenDigest) return;
      const m = typeof credential === 'string' ? /^Bearer\s+(.+)$/i.exec(credential.trim()) : null;
      if (!m) throw new BrokerError('UNAUTHENTICATED', "a load with a 'config' changes the model's registry entry: it needs the admin token (Authorization: Bearer ...)");
      if (!timingSafeEqual(digest(m[1]), tokenDigest)) throw new BrokerError('PERMISSION_DENIED', "wrong admin token for a load with a 'config'");
    },
    async patch(model, patch) {
      await registry.patch(model, patch);
    },
  };
}
