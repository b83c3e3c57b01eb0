import { setTimeout as sleep } from 'node:timers/promises';

/**
 * A token bucket shared by every download of a restore: `take(n)` resolves
 * once n bytes fit under the limit. The bucket holds at most a quarter second
 * of tokens, so the rate holds over short windows too.
 */
export class Throttle {
  readonly #rate: number;
  readonly #burst: number;
  #tokens: number;
  #last: number;
  #queue: Promise<void> = Promise.resolve();

  constructor(bytesPerSecond: number, now: () => number = () => performance.now()) {
    if (!(bytesPerSecond > 0)) throw new RangeError('bandwidth limit must be positive');
    this.#rate = bytesPerSecond;
    this.#burst = Math.max(64 * 1024, bytesPerSecond / 4);
    this.#tokens = this.#burst;
    this.now = now;
    this.#last = now();
  }

  readonly now: () => number;

  take(n: number): Promise<void> {
    // Serialise takers so one big request cannot starve the others.
    const next = this.#queue.then(() => this.#take(n));
    this.#queue = next.catch(() => undefined);
    return next;
  }

  async #take(n: number): Promise<void> {
    for (;;) {
      const t = this.now();
      this.#tokens = Math.min(this.#burst, this.#tokens + ((t - this.#last) / 1000) * this.#rate);
      this.#last = t;
      if (this.#tokens >= Math.min(n, this.#burst)) {
        this.#tokens -= n;
        return;
      }
      await sleep(Math.ceil(((Math.min(n, this.#burst) - this.#tokens) / this.#rate) * 1000));
    }
  }
}
