/**
 * Prometheus gauges of the job backlog, read from Redis at scrape time (no
 * bookkeeping in the hot path): waiting jobs per model and priority, running
 * jobs, the oldest entry's age, dead letters. For dashboards, and for a
 * HorizontalPodAutoscaler or KEDA scaling on backlog.
 */
import { Gauge, type Registry } from 'prom-client';
import type { JobsApi, QueueInfo } from './types';

export function registerJobMetrics(registry: Registry, jobs: Pick<JobsApi, 'queue'>, models: () => string[]): void {
  // prom-client collects the gauges concurrently: one Redis read per scrape, shared by the four.
  let cached: { at: number; queues: Promise<QueueInfo[]> } | undefined;
  const queues = () => {
    if (!cached || Date.now() - cached.at > 500) cached = { at: Date.now(), queues: Promise.all(models().map((m) => jobs.queue(m))) };
    return cached.queues;
  };
  const gauge = (name: string, help: string, labelNames: string[], fill: (g: Gauge, q: QueueInfo) => void) =>
    new Gauge({
      name, help, labelNames, registers: [registry],
      async collect() {
        const qs = await queues();
        this.reset();
        for (const q of qs) fill(this, q);
      },
    });
  gauge('tb_jobs_waiting', 'Jobs waiting in the queue', ['model', 'priority'], (g, q) => {
    for (const [priority, n] of Object.entries(q.depth)) g.set({ model: q.model, priority }, n);
  });
  gauge('tb_jobs_running', 'Jobs taken by a worker and not finished', ['model'], (g, q) => g.set({ model: q.model }, q.running));
  gauge('tb_jobs_oldest_age_seconds', 'Age of the oldest waiting or running job', ['model'], (g, q) => g.set({ model: q.model }, q.oldest_age_seconds));
  gauge('tb_jobs_dead_lettered', 'Jobs in the dead-letter stream (retries exhausted)', ['model'], (g, q) => g.set({ model: q.model }, q.dead_lettered));
}
