/**
 * GET /v2/jobs/{id}/events: the job's status changes as Server-Sent Events
 * (text/event-stream). One `status` event with the job (as GET /v2/jobs/{id})
 * now and at each change, from any broker on the same Redis; the stream ends
 * after the final status. An idle stream gets a comment line every
 * `heartbeatMs`. An unknown job is a plain 404 before the stream starts.
 */
import { PassThrough } from 'node:stream';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { toBrokerError } from '../../core/errors';
import type { JobsApi, JobView } from '../../jobs/types';

export function jobEventsRoute(app: FastifyInstance, jobs: JobsApi, heartbeatMs: number): void {
  // Open streams end when the server closes: an event stream may wait for hours, and
  // fastify's close() waits for every response in flight.
  const open = new Set<AbortController>();
  app.addHook('preClose', (done) => {
    for (const s of open) s.abort();
    done();
  });
  app.get('/v2/jobs/:id/events', async (req: FastifyRequest<{ Params: { id: string } }>, reply) => {
    const stop = new AbortController();
    open.add(stop);
    stop.signal.addEventListener('abort', () => open.delete(stop), { once: true });
    const events = jobs.watch(req.params.id, stop.signal)[Symbol.asyncIterator]();
    let first: IteratorResult<JobView>;
    try {
      first = await events.next(); // NOT_FOUND answers as a plain error
    } catch (e) {
      stop.abort();
      throw e;
    }
    const out = new PassThrough();
    let seq = 0;
    const send = (v: JobView) => out.write(`id: ${++seq}\nevent: status\ndata: ${JSON.stringify(v)}\n\n`);
    const beat = setInterval(() => out.write(': heartbeat\n\n'), heartbeatMs);
    reply.raw.on('close', () => stop.abort());
    void (async () => {
      try {
        if (!first.done) send(first.value);
        for (let n = await events.next(); !n.done; n = await events.next()) send(n.value);
      } catch (e) {
        const err = toBrokerError(e);
        if (!stop.signal.aborted) out.write(`event: error\ndata: ${JSON.stringify({ error: err.message, code: err.code })}\n\n`);
      } finally {
        clearInterval(beat);
        open.delete(stop);
        out.end();
      }
    })();
    return reply
      .header('Content-Type', 'text/event-stream; charset=utf-8')
      .header('Cache-Control', 'no-store')
      .header('X-Accel-Buffering', 'no')
      .send(out);
  });
}
