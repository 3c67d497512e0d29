/** ZeroMQ fuzzing in the test suite: TB_FUZZ_CASES messages (default 2000), see zmq-cases.ts. */
import { runZmqFuzz } from './zmq-cases';

const CASES = Number(process.env.TB_FUZZ_CASES ?? 2000);

test(`ZeroMQ: ${CASES} generated and mutated messages: one reply each, a client error for bad input, RSS bounded, still serving`, async () => {
  const report = await runZmqFuzz(CASES);
  if (process.env.TB_FUZZ_VERBOSE) console.log(report);
  expect(report.violations).toEqual([]);
  expect(report.cases).toBe(CASES);
  expect(report.rssGrowthMb).toBeLessThan(300);
  expect(report.outcomes.OK).toBeGreaterThan(0);
  expect(report.outcomes.INVALID_ARGUMENT).toBeGreaterThan(0);
}, 120_000);
