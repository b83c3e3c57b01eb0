import { schedule, type ScheduledTask } from 'node-cron';

/**
 * A cron expression (node-cron, with seconds) that fires every `seconds`:
 * "every N seconds" below a minute, "every N minutes" from one minute on.
 * Intervals that do not divide a minute or an hour are rounded to one that does,
 * so rounds stay evenly spaced.
 */
export function cronFor(seconds: number): string {
  if (seconds < 60) {
    const s = [1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30].reduce((best, d) => (Math.abs(d - seconds) < Math.abs(best - seconds) ? d : best), 30);
    return `*/${s} * * * * *`;
  }
  const minutes = Math.round(seconds / 60);
  const m = [1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60].reduce((best, d) => (Math.abs(d - minutes) < Math.abs(best - minutes) ? d : best), 60);
  return m === 60 ? '0 0 * * * *' : `0 */${m} * * * *`;
}

/**
 * Health rounds for the daemon: on a schedule that follows the applied spec's
 * interval, and at once after an apply (so a node reports healthy as soon as it
 * is, not up to an interval later). A round still running when the next is due
 * is not stacked: the request is remembered and one more round runs after it.
 */
export class HealthSchedule {
  readonly #round: () => Promise<void>;
  readonly #onError: (e: unknown) => void;
  #task: ScheduledTask | undefined;
  #seconds = 0;
  #running: Promise<void> | undefined;
  #again = false;
  #stopped = false;

  /** `onError` hears of a round that threw; the schedule goes on. */
  constructor(round: () => Promise<void>, onError: (e: unknown) => void) {
    this.#round = round;
    this.#onError = onError;
  }

  /** (Re)schedule every `seconds`; nothing changes if that is the current interval. */
  every(seconds: number): void {
    if (this.#stopped || seconds === this.#seconds) return;
    void this.#task?.stop();
    this.#seconds = seconds;
    this.#task = schedule(cronFor(seconds), () => this.#due(false));
  }

  get intervalSeconds(): number {
    return this.#seconds;
  }

  /** A round now (after an apply). Resolves when it, or the one already running and the one after it, is done. */
  runNow(): Promise<void> {
    return this.#due(true);
  }

  #due(queue: boolean): Promise<void> {
    if (this.#stopped) return Promise.resolve();
    if (this.#running) {
      // A scheduled tick during a round is dropped; an explicit request runs once more afterwards.
      if (queue) this.#again = true;
      return this.#running;
    }
    this.#running = (async () => {
      try {
        do {
          this.#again = false;
          await this.#round().catch(this.#onError);
        } while (this.#again && !this.#stopped);
      } finally {
        this.#running = undefined;
      }
    })();
    return this.#running;
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#task?.stop();
    await this.#running;
  }
}
