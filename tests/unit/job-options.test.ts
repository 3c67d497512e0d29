/** The job settings of the options table (app/job-options.ts) and how they reach the JobService (app/job-config.ts). */
import { resolveConfig } from '../../app/config';
import { jobServiceOptions } from '../../app/job-config';

test('defaults: 30 s lease, 24 h result_ttl, idle capacity only, no in-flight cap', () => {
  const o = jobServiceOptions(resolveConfig({}, {}));
  expect(o).toMatchObject({ leaseMs: 30_000, resultTtlMs: 24 * 3600 * 1000, defaultTtlSeconds: 24 * 3600, defaultMaxAttempts: 3,
    maxQueued: 100_000, deadMaxLen: 10_000, maxInFlight: 0, inlineMaxBytes: 256 * 1024, workers: true, liveReserve: { default: 0, models: {} } });
});

test('flags and env set them; config.jobs overrides field by field', () => {
  const c = resolveConfig({ jobsLeaseMs: '1500', jobsLiveReserve: '0.2,ocr=0.5' },
    { TB_JOBS_RESULT_TTL_S: '60', TB_JOBS_MAX_QUEUED: '10', TB_JOBS_DEAD_MAX_LEN: '5', TB_JOBS_WORKERS: 'false', TB_JOBS_MAX_ATTEMPTS: '4' });
  expect(jobServiceOptions(c)).toMatchObject({ leaseMs: 1500, resultTtlMs: 60_000, maxQueued: 10, deadMaxLen: 5, workers: false,
    defaultMaxAttempts: 4, liveReserve: { default: 0.2, models: { ocr: 0.5 } } });
  expect(jobServiceOptions({ ...c, jobs: { leaseMs: 200, liveReserve: '0' } })).toMatchObject({ leaseMs: 200, resultTtlMs: 60_000, liveReserve: { default: 0 } });
});

test('bad values name the flag and the variable', () => {
  expect(() => resolveConfig({}, { TB_JOBS_LIVE_RESERVE: '1.5' })).toThrow(/--jobs-live-reserve \/ TB_JOBS_LIVE_RESERVE: .*\[0, 1\)/);
  expect(() => resolveConfig({ jobsMaxAttempts: '11' }, {})).toThrow(/--jobs-max-attempts/);
  expect(() => resolveConfig({ jobsLeaseMs: '0' }, {})).toThrow(/--jobs-lease-ms/);
});
