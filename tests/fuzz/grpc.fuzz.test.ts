/** gRPC fuzzing in the test suite: TB_FUZZ_CASES cases (default 2000), see grpc-cases.ts. */
import { runGrpcFuzz } from './grpc-cases';

const CASES = Number(process.env.TB_FUZZ_CASES ?? 2000);

test(`gRPC: ${CASES} generated and mutated requests: no crash, a client error for bad input, RSS bounded, still serving`, async () => {
  const report = await runGrpcFuzz(CASES);
  if (process.env.TB_FUZZ_VERBOSE) console.log(report);
  expect(report.violations).toEqual([]);
  expect(report.cases).toBe(CASES);
  expect(report.rssGrowthMb).toBeLessThan(300);
  // The generators reach past the decoder: some requests succeed, some are refused by the broker.
  expect(Object.keys(report.outcomes).length).toBeGreaterThan(3);
}, 120_000);
