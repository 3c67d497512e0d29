/**
 * What `tensorbroker serve` prints on a terminal once started: one row per model
 * (runtime, phase, copies) and the URL of each bridge. Logs stay JSON (stdout
 * not a terminal means a log collector is reading).
 */
import type { RunningBroker } from '../server';
import { formatTable } from './table';

export interface BridgeUrls { rest: string; grpc: string; zmq: string; metrics: string }

export function bridgeUrls(host: string, ports: RunningBroker['ports']): BridgeUrls {
  // 0.0.0.0 / :: are bind addresses, not places to connect to.
  const h = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host.includes(':') ? `[${host}]` : host;
  return {
    rest: `http://${h}:${ports.http}/v2`,
    grpc: `${h}:${ports.grpc}`,
    zmq: `tcp://${h}:${ports.zmq}`,
    metrics: `http://${h}:${ports.metrics}/metrics`,
  };
}

/** docker / process, as seen on the model's copies; the configured runtime when it has none. */
function runtimeOf(copies: { image?: string; pid?: number }[], configured: string): string {
  if (copies.some((c) => c.pid !== undefined)) return 'process';
  if (copies.some((c) => c.image !== undefined)) return 'docker';
  return configured;
}

export function startTable(running: Pick<RunningBroker, 'broker' | 'tasks' | 'ports' | 'config'>): string {
  const rows = running.broker.repositoryIndex().map((e) => {
    const status = running.tasks.status(e.name);
    const copies = status?.copies ?? [];
    const ready = copies.filter((c) => c.state === 'ready').length;
    const phase = (e as { phase?: string }).phase ?? e.state;
    return [e.name, runtimeOf(copies, running.config.runtime), phase + (e.reason && e.state !== 'READY' ? ` (${e.reason})` : ''), `${ready}/${copies.length}`];
  });
  const urls = bridgeUrls(running.config.host, running.ports);
  return (
    (rows.length ? formatTable(['model', 'runtime', 'phase', 'copies'], rows) : 'no models registered\n') +
    '\n' +
    formatTable(['bridge', 'url'], [
      ['REST (KServe v2)', urls.rest],
      ['gRPC (KServe v2)', urls.grpc],
      ['ZeroMQ', urls.zmq],
      ['metrics', urls.metrics],
    ])
  );
}

/**
 * Resolves once no model is still starting the copies it wants (each has a ready copy,
 * or failed, or wants none: scaled to zero), or after `maxMs`.
 */
export async function settled(running: Pick<RunningBroker, 'broker' | 'tasks' | 'registry'>, maxMs: number): Promise<void> {
  // Copies start in the background: right after start a model may not even have a desired count yet.
  const wants = (name: string) => (running.registry.get(name)?.min_replicas ?? 0) > 0 || (running.tasks.status(name)?.desired ?? 0) > 0;
  // Settled: every model that wants copies serves (ready, degraded) or has given up (failed, unloaded).
  const done = new Set(['ready', 'degraded', 'failed', 'unloaded']);
  const starting = () => running.registry.list().some((s) => wants(s.name) && !done.has(running.broker.modelReady(s.name).phase));
  const deadline = Date.now() + maxMs;
  while (Date.now() < deadline && starting()) await new Promise((r) => setTimeout(r, 200).unref());
}
