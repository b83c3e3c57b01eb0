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

/** Run `round` on the schedule; a round still running when the next is due is skipped, not stacked. */
export function scheduleHealth(seconds: number, round: () => Promise<void>): ScheduledTask {
  let running = false;
  return schedule(cronFor(seconds), async () => {
    if (running) return;
    running = true;
    try {
      await round();
    } finally {
      running = false;
    }
  });
}
