/** setTimeout takes at most 2^31-1 ms; a longer delay fires at once (TimeoutOverflowWarning). */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Runs `fn` after `ms`, any length: delays beyond MAX_TIMER_MS are chained.
 * Returns the cancel function.
 */
export function longTimeout(fn: () => void, ms: number): () => void {
  const at = Date.now() + ms;
  let timer: NodeJS.Timeout;
  const arm = (left: number): void => {
    if (left <= MAX_TIMER_MS) {
      timer = setTimeout(fn, Math.max(0, left));
      return;
    }
    timer = setTimeout(() => arm(at - Date.now()), MAX_TIMER_MS);
  };
  arm(ms);
  return () => clearTimeout(timer);
}
