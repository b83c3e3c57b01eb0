// kafkajs's own queue class, imported (not required) so that a bundler keeps one instance of it: the one kafkajs uses.
import RequestQueueModule from 'kafkajs/src/network/requestQueue/index.js';

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
 *
 * Second, the same queue checks its in-flight requests for a timeout with a
 * setInterval of min(requestTimeout, 100 ms), one per connection, for as long
 * as the connection lives: an idle agent (a consumer, its coordinator, the
 * reporter's producer) woke ~23 times a second for it. Measured natively on
 * an agent with nothing to do: 0.47 % of a core over 90 s; in a lab guest
 * under TCG the idle agent used 25-31 % of its vCPU (top over 20 s in the
 * scenario). The check now runs once a second: request timeouts here are
 * 15 s and more, so a timed-out request is noticed at most a second later.
 */

const CHECK_INTERVAL_MS = 10;
const REQUEST_TIMEOUT_CHECK_MS = 1000;

interface QueueInternals {
  enforceRequestTimeout: boolean;
  requestTimeout: number;
  requestTimeoutIntervalId?: NodeJS.Timeout;
  inflight: Map<unknown, { sentAt: number; requestTimeout: number; timeoutRequest(): void }>;
  isConnected(): boolean;
  destroy(): void;
  scheduleRequestTimeoutCheck(): void;
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
  const RequestQueue = RequestQueueModule as { prototype: QueueInternals } | undefined;
  if (typeof RequestQueue?.prototype?.scheduleCheckPendingRequests !== 'function' || typeof RequestQueue.prototype.scheduleRequestTimeoutCheck !== 'function')
    return false;
  // kafkajs's own check, at a coarser interval (see above).
  RequestQueue.prototype.scheduleRequestTimeoutCheck = function (this: QueueInternals): void {
    if (!this.enforceRequestTimeout) return;
    this.destroy();
    this.requestTimeoutIntervalId = setInterval(
      () => {
        this.inflight.forEach((request) => {
          if (Date.now() - request.sentAt > request.requestTimeout) request.timeoutRequest();
        });
        if (!this.isConnected()) this.destroy();
      },
      Math.min(this.requestTimeout, REQUEST_TIMEOUT_CHECK_MS),
    );
  };
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
