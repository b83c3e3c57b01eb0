import { createRequire } from 'node:module';

/*
 * kafkajs 2.2.4 spins while idle: after every request its per-connection
 * RequestQueue re-arms a timer for "when the throttle ends", and with no
 * throttle and nothing queued that delay is negative, so the timer fires
 * again after 1 ms, forever (kafkajs issues #1556 and #1704, unfixed in the
 * last release). An idle agent then woke its event loop about 1400 times a
 * second and used ~3 % of a core doing nothing.
 *
 * This replaces that one method with the rule the queue needs: arm a timer
 * only when something waits for it. With requests queued, check again when
 * the broker's throttle ends, and never sooner than the queue's usual 10 ms;
 * with nothing queued there is nothing to check: the next request, response
 * or timeout calls checkPendingRequests itself. Applied once, at load, to
 * kafkajs's own class (same module instance kafkajs requires).
 */

const CHECK_INTERVAL_MS = 10;

interface QueueInternals {
  pending: unknown[];
  throttledUntil: number;
  throttleCheckTimeoutId: NodeJS.Timeout | null;
  checkPendingRequests(): void;
  scheduleCheckPendingRequests(): void;
}

let patched = false;

/** Installs the fix; true when kafkajs's queue has the method it replaces (false means this kafkajs differs: nothing changed). */
export function fixKafkajsIdleSpin(): boolean {
  if (patched) return true;
  const require = createRequire(import.meta.url);
  let RequestQueue: { prototype: QueueInternals } | undefined;
  try {
    RequestQueue = require('kafkajs/src/network/requestQueue/index.js') as { prototype: QueueInternals };
  } catch {
    return false;
  }
  if (typeof RequestQueue?.prototype?.scheduleCheckPendingRequests !== 'function') return false;
  RequestQueue.prototype.scheduleCheckPendingRequests = function (this: QueueInternals): void {
    if (this.throttleCheckTimeoutId || this.pending.length === 0) return;
    const delay = Math.max(this.throttledUntil - Date.now(), CHECK_INTERVAL_MS);
    this.throttleCheckTimeoutId = setTimeout(() => {
      this.throttleCheckTimeoutId = null;
      this.checkPendingRequests();
    }, delay);
  };
  patched = true;
  return true;
}
