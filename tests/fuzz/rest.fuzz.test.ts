/**
 * Property-based fuzzing of the REST bridge (issue 11, "keep them closed"):
 * a few thousand generated and mutated requests against a real broker with
 * real model processes. Every case must be answered, with a success or a 4xx
 * in the KServe error form (504 only when the request set its own deadline);
 * afterwards the broker still serves an exact INT64 round trip and its RSS
 * grew by a bounded amount. FUZZ_RUNS and FUZZ_SEED override the defaults
 * (a failure prints the seed to replay it).
 */
import { modelMain, startTestBroker, type TestBroker } from '../helpers/broker';
import { waitReady } from '../helpers/broker';
import { formatReport, runFuzz } from './harness';
import { fuzzImages, restFuzzModels, restTarget } from './rest-target';

const RUNS = Number(process.env.FUZZ_RUNS ?? 3000);

describe('REST fuzzing', () => {
  let b: TestBroker;

  beforeAll(async () => {
    b = await startTestBroker({ models: restFuzzModels(modelMain), config: { bodyLimit: 4 * 1024 * 1024, maxElements: 4 * 1024 * 1024 } });
    await Promise.all(['identity', 'image-info'].map((m) => waitReady(b, m)));
  });
  afterAll(() => b?.stop());

  test(`${RUNS} generated requests: never a 5xx, a hang or a dropped connection; still serving; RSS bounded`, async () => {
    const target = restTarget(b.url, await fuzzImages());
    const report = await runFuzz(target, {
      runs: RUNS,
      seed: process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : undefined,
      concurrency: 4,
      hangMs: 20_000,
      rss: () => process.memoryUsage().rss,
    });
    const text = formatReport(report);
    if (report.failures.length > 0 || !report.stillServing) console.log(text);
    // The seed is in the diff, to replay a failure with FUZZ_SEED.
    expect({ seed: report.seed, failures: report.failures }).toEqual({ seed: report.seed, failures: [] });
    expect(report.runs).toBe(RUNS);
    expect(report.stillServing).toBe(true);
    // Every kind of answer was reached, so the generator is not stuck on one path.
    expect(report.counts.ok).toBeGreaterThan(RUNS / 20);
    expect(report.counts['client-error']).toBeGreaterThan(RUNS / 4);
    expect((report.rssPeakMb ?? 0) - (report.rssStartMb ?? 0)).toBeLessThan(400);
  }, Math.max(240_000, RUNS * 40));
});
