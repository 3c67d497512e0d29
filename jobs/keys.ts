/** Redis key names of the job service, all under the broker's prefix + 'jobs:'. */
import type { JobPriority } from './types';

export class JobKeys {
  constructor(readonly base: string) {}
  /** Hash: the job's fields (status, attempts, timestamps, input when small). */
  job(id: string): string { return `${this.base}job:${id}`; }
  get jobPrefix(): string { return `${this.base}job:`; }
  /** String: the encoded result when small (else a blob, named in the job hash). */
  result(id: string): string { return `${this.base}result:${id}`; }
  idem(model: string, key: string): string { return `${this.base}idem:${model}:${key}`; }
  stream(model: string, priority: JobPriority): string { return `${this.base}stream:${model}:${priority}`; }
  /** Sorted set: every job id by creation time (ms), newest last; for listing. */
  get index(): string { return `${this.base}index`; }
  dead(model: string): string { return `${this.base}dead:${model}`; }
}

/** The consumer group every worker of every broker reads a model's streams with. */
export const GROUP = 'workers';
