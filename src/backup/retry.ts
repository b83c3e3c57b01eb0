import { setTimeout as sleep } from 'node:timers/promises';
import { classify } from './transport.js';

export interface RetryPolicy {
  /** attempts in a row without progress before giving up */
  attempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
  /** when set, every retry made under this policy is counted here (a restore reports the total) */
  counter?: { retries: number };
}

export const DEFAULT_RETRY: RetryPolicy = { attempts: 8, baseDelayMs: 200, maxDelayMs: 10_000 };

/** Exponential backoff with full jitter: attempt n waits up to base * 2^n, capped. */
export function backoffDelay(policy: RetryPolicy, failure: number, random = Math.random): number {
  const cap = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** Math.max(0, failure - 1));
  return Math.round(cap / 2 + (random() * cap) / 2);
}

/**
 * Run `fn` until it succeeds or fails in a way retrying cannot fix. Only
 * transient transport errors are retried; `fn` may report progress (bytes it
 * got through before failing) so a long download that keeps being cut but
 * keeps moving is never given up on.
 */
export async function withRetry<T>(
  policy: RetryPolicy,
  fn: (attempt: number, progressed: () => void) => Promise<T>,
  opts: { signal?: AbortSignal; onRetry?: (e: unknown, failures: number, delayMs: number) => void } = {},
): Promise<T> {
  let failures = 0;
  for (let attempt = 1; ; attempt++) {
    let moved = false;
    try {
      return await fn(attempt, () => {
        moved = true;
      });
    } catch (e) {
      if (classify(e) !== 'transient' || opts.signal?.aborted) throw e;
      failures = moved ? 1 : failures + 1;
      if (failures >= policy.attempts) throw e;
      const delay = backoffDelay(policy, failures);
      if (policy.counter) policy.counter.retries++;
      opts.onRetry?.(e, failures, delay);
      await sleep(delay, undefined, opts.signal ? { signal: opts.signal } : {});
    }
  }
}
