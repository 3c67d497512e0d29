/** Waiting on an EventEmitter in tests. */
import type { EventEmitter } from 'node:events';

/** Resolves with the arguments of the first `event` that passes `filter`; rejects after `ms`. */
export function waitEvent<T extends unknown[]>(em: EventEmitter, event: string, filter: (...args: T) => boolean = () => true, ms = 30_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      em.off(event, on);
      reject(new Error(`timed out waiting for '${event}'`));
    }, ms);
    const on = (...args: unknown[]) => {
      if (!filter(...(args as T))) return;
      clearTimeout(timer);
      em.off(event, on);
      resolve(args as T);
    };
    em.on(event, on);
  });
}
