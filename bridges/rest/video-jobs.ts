/**
 * The REST bridge's VideoJobRunner (jobs/types.ts): a video job runs through
 * the same inferVideo() as a video upload to /infer (ffmpeg decode, frames
 * in order as one sequence), its NDJSON lines collected instead of streamed
 * to a client. app/server.ts hands it to the job service, so jobs/ needs no
 * bridge code.
 */
import type { BrokerApi } from '../../core/broker';
import type { VideoJobRunner } from '../../jobs/types';
import { inferVideo } from './video';

export interface VideoJobRunnerOptions {
  broker: BrokerApi;
  /** The /infer video route's limits (the upload was bounded by the same one at submit). */
  maxVideoBytes: number;
  maxElements: number;
  ffmpeg?: string;
}

export function videoJobRunner(o: VideoJobRunnerOptions): VideoJobRunner {
  return {
    async run(j) {
      // Rejects with the error of the first frame (a bad video, the model's error, a lost copy): /infer's HTTP error.
      const res = await inferVideo({
        broker: o.broker, model: j.model, version: j.version, body: j.video, mediaType: j.contentType, query: j.options,
        requestId: `job-${j.jobId}-${j.attempt}`, signal: j.signal, maxBytes: o.maxVideoBytes, maxElements: o.maxElements,
        ffmpeg: o.ffmpeg, sequenceId: j.sequenceId, priority: j.priority,
      });
      const lines: Buffer[] = [];
      for await (const chunk of res.stream as AsyncIterable<Buffer | string>) lines.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk));
      // A failure after the first frame: /infer's error line; a job fails (or is retried) with the error itself.
      const failure = await res.failure;
      if (failure) throw failure;
      return Buffer.concat(lines);
    },
  };
}
