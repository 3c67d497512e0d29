/** Prometheus metrics (prom-client), served on their own port. */
import http from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Outcome, SchedulerObserver } from '../core/model-scheduler';
import { stageMetricsText } from '../core/stage-timings';

export class Metrics implements SchedulerObserver {
  readonly registry = new Registry();
  private readonly requests = new Counter({
    name: 'tb_requests_total',
    help: 'Inference requests by model and outcome (success, error, rejected, timeout, cancelled).',
    labelNames: ['model', 'outcome'],
    registers: [this.registry],
  });
  private readonly depth = new Gauge({
    name: 'tb_queue_depth',
    help: 'Requests waiting in the model queue.',
    labelNames: ['model'],
    registers: [this.registry],
  });
  private readonly queueTime = new Histogram({
    name: 'tb_queue_seconds',
    help: 'Time requests spent queued before their batch was sent.',
    labelNames: ['model'],
    buckets: [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [this.registry],
  });
  private readonly requestTime = new Histogram({
    name: 'tb_request_seconds',
    help: 'Time from admission to answer.',
    labelNames: ['model', 'outcome'],
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });
  private readonly computeTime = new Histogram({
    name: 'tb_compute_seconds',
    help: 'Time a model copy spent computing one batch.',
    labelNames: ['model'],
    buckets: [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [this.registry],
  });
  private readonly batchRows = new Histogram({
    name: 'tb_batch_rows',
    help: 'Rows per batch sent to a model copy.',
    labelNames: ['model'],
    buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256],
    registers: [this.registry],
  });
  private readonly activeSequences = new Gauge({
    name: 'tb_sequences_active',
    help: 'Sequences holding a slot on a copy (stateful models).',
    labelNames: ['model'],
    registers: [this.registry],
  });
  private readonly sequenceBacklog = new Gauge({
    name: 'tb_sequences_backlog',
    help: 'Sequences waiting for a free slot (stateful models).',
    labelNames: ['model'],
    registers: [this.registry],
  });
  readonly copies = new Gauge({
    name: 'tb_copies',
    help: 'Model copies by state (starting, ready, busy, draining, failed).',
    labelNames: ['model', 'state'],
    registers: [this.registry],
  });

  readonly unavailable = new Gauge({
    name: 'tb_model_unavailable',
    help: 'Models marked unavailable after repeated copy failures (1 = unavailable; the reason is in /v2/models/{m}/ready and /admin/models/{m}).',
    labelNames: ['model'],
    registers: [this.registry],
  });
  readonly copyFailures = new Counter({
    name: 'tb_copy_failures_total',
    help: 'Model copies that died or were killed, by kind (crash, oom, hung, heartbeat, startup, start).',
    labelNames: ['model', 'kind'],
    registers: [this.registry],
  });
  readonly scaleEvents = new Counter({
    name: 'tb_scale_events_total',
    help: 'Scaling decisions acted upon, by direction (up, down) and trigger.',
    labelNames: ['model', 'direction'],
    registers: [this.registry],
  });
  readonly scaleRefused = new Counter({
    name: 'tb_scale_refused_total',
    help: 'Copy starts refused by a global cap (copies, memory).',
    labelNames: ['model', 'cap'],
    registers: [this.registry],
  });
  readonly gpusInUse = new Gauge({
    name: 'tb_gpus_in_use',
    help: 'GPUs held by a copy, by model.',
    labelNames: ['model'],
    registers: [this.registry],
  });

  /** Per-broker demand, for an HPA or KEDA scaling the broker replicas (README "Several brokers"). */
  readonly demand = new Gauge({
    name: 'tb_broker_demand',
    help: 'Requests queued plus running on this broker, per model (forwarded-in requests included, forwarded-out ones not).',
    labelNames: ['model'],
    registers: [this.registry],
  });
  readonly forwarded = new Counter({
    name: 'tb_forwarded_total',
    help: 'Requests this broker forwarded to another broker (a sequence\'s owner, or a broker holding copies), by outcome (ok, or the error code).',
    labelNames: ['model', 'outcome'],
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'tb_process_' });
  }

  queueDepth(model: string, depth: number): void {
    this.depth.set({ model }, depth);
  }

  finished(model: string, outcome: Outcome, queueSeconds: number | undefined, totalSeconds: number): void {
    this.requests.inc({ model, outcome });
    if (queueSeconds !== undefined) this.queueTime.observe({ model }, queueSeconds);
    if (outcome !== 'rejected') this.requestTime.observe({ model, outcome }, totalSeconds);
  }

  sequences(model: string, active: number, backlog: number): void {
    this.activeSequences.set({ model }, active);
    this.sequenceBacklog.set({ model }, backlog);
  }

  batch(model: string, rows: number, computeSeconds: number): void {
    this.batchRows.observe({ model }, rows);
    this.computeTime.observe({ model }, computeSeconds);
  }

  /** Replaces the copies-by-state gauge with a fresh count. */
  setCopies(counts: { model: string; state: string; count: number }[]): void {
    this.copies.reset();
    for (const c of counts) this.copies.set({ model: c.model, state: c.state }, c.count);
  }

  /** A bare node:http server for GET /metrics. */
  serve(host: string, port: number, beforeScrape?: () => void): Promise<http.Server> {
    const server = http.createServer(async (req, res) => {
      if (req.method !== 'GET' || (req.url !== '/metrics' && req.url !== '/')) {
        res.writeHead(404, { 'Content-Type': 'application/json' }).end('{"error":"try GET /metrics"}');
        return;
      }
      beforeScrape?.();
      // Per-stage timings (core/stage-timings.ts) follow prom-client's own metrics.
      res.writeHead(200, { 'Content-Type': this.registry.contentType }).end((await this.registry.metrics()) + stageMetricsText());
    });
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve(server));
    });
  }
}
