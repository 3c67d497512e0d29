/**
 * `tensorbroker models`: the registry of a running broker, through its APIs:
 * KServe's repository index (phase), /admin/models (image or command) and
 * /admin/instances (copies). Reads only; the admin token is optional.
 */
import { formatTable } from './table';

export interface ModelRow { name: string; version: string; phase: string; reason: string; copies: string; runtime: string; runs: string }

interface IndexEntry { name: string; version?: string; state: string; phase?: string; reason?: string }
interface AdminModel { name: string; image?: string; command?: string[] }
interface Instance { model: string; state: string; pid?: number; image?: string }

async function getJson(url: string, init: RequestInit, what: string): Promise<unknown> {
  let res: Response;
  try {
    res = await fetch(url, { ...init, signal: AbortSignal.timeout(10_000) });
  } catch (e) {
    throw new Error(`cannot reach the broker at ${url}: ${(e as Error & { cause?: Error }).cause?.message ?? (e as Error).message}`);
  }
  const text = await res.text();
  if (!res.ok) throw new Error(`${what}: HTTP ${res.status} ${text.slice(0, 200)}`);
  try {
    return JSON.parse(text);
  } catch {
    throw new Error(`${what}: the answer is not JSON: ${text.slice(0, 200)}`);
  }
}

export async function fetchModels(baseUrl: string, token?: string): Promise<ModelRow[]> {
  const base = baseUrl.replace(/\/+$/, '');
  const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
  const [index, admin, instances] = await Promise.all([
    getJson(`${base}/v2/repository/index`, { method: 'POST', headers: { ...headers, 'content-type': 'application/json' }, body: '{}' }, 'repository index') as Promise<IndexEntry[]>,
    getJson(`${base}/admin/models`, { headers }, 'admin models') as Promise<{ models: AdminModel[] }>,
    getJson(`${base}/admin/instances`, { headers }, 'admin instances').catch(() => ({ instances: [] })) as Promise<{ instances: Instance[] }>,
  ]);
  const specs = new Map(admin.models.map((m) => [m.name, m]));
  return index.map((e) => {
    const mine = instances.instances.filter((i) => i.model === e.name && i.state !== 'waiting');
    const spec = specs.get(e.name);
    // Which of image / command is used depends on the broker's runtime: the copies tell (a process has a pid).
    const runtime = mine.length === 0 ? '-' : mine.some((i) => i.pid !== undefined) ? 'process' : 'docker';
    const image = spec?.image ? `image ${spec.image}` : '';
    const command = spec?.command ? `command ${spec.command.join(' ')}` : '';
    return {
      name: e.name,
      version: e.version ?? '',
      phase: e.phase ?? e.state,
      reason: e.reason ?? '',
      copies: `${mine.filter((i) => i.state === 'ready').length}/${mine.length}`,
      runtime,
      runs: runtime === 'process' ? command : runtime === 'docker' ? image : [image, command].filter(Boolean).join(' / '),
    };
  });
}

export function modelsTable(rows: ModelRow[]): string {
  if (rows.length === 0) return 'no models registered\n';
  return formatTable(['model', 'version', 'phase', 'copies', 'runtime', 'runs', 'reason'], rows.map((r) => [r.name, r.version, r.phase, r.copies, r.runtime, r.runs, r.reason]));
}
