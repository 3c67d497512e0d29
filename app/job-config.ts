/** The JobService settings of a BrokerConfig: the options table, overridden field by field by `config.jobs`. */
import { parseLiveReserve } from '../jobs/capacity';
import type { JobServiceOptions } from '../jobs/service';
import type { BrokerConfig } from './config';

export function jobServiceOptions(config: BrokerConfig): Partial<JobServiceOptions> {
  const jc = config.jobs ?? {};
  return {
    leaseMs: jc.leaseMs ?? config.jobsLeaseMs,
    resultTtlMs: jc.resultTtlMs ?? config.jobsResultTtlS * 1000,
    defaultTtlSeconds: config.jobsDefaultTtlS,
    defaultMaxAttempts: config.jobsMaxAttempts,
    maxQueued: jc.maxQueued ?? config.jobsMaxQueued,
    deadMaxLen: jc.deadMaxLen ?? config.jobsDeadMaxLen,
    liveReserve: parseLiveReserve(jc.liveReserve ?? config.jobsLiveReserve),
    liveIdleMs: config.jobsLiveIdleMs,
    maxInFlight: jc.maxInFlight ?? config.jobsMaxInFlight,
    inlineMaxBytes: jc.inlineMaxBytes ?? config.jobsInlineMaxBytes,
    workers: config.jobsWorkers,
    backlogIntervalMs: jc.backlogIntervalMs ?? config.autoscaleIntervalMs,
    consumerIdleMs: jc.consumerIdleMs,
  };
}
