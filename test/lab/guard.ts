// Lab checks that fail leave evidence: the guests' journals and serial logs,
// saved under .cache/lab/artifacts/<prefix>-<label>/ and named in the error.
import type { Lab } from './driver.js';

export function journalGuard(prefix: string, lab: () => Lab | undefined): (label: string, fn: () => Promise<void>) => Promise<void> {
  return async (label, fn) => {
    try {
      await fn();
    } catch (err) {
      const l = lab();
      const where = l ? await l.collectJournals(`${prefix}-${label}`).catch((e: unknown) => `(collecting journals failed: ${String(e)})`) : '(no lab)';
      if (err instanceof Error) err.message += `\n[lab] journals and serial logs: ${where}`;
      throw err;
    }
  };
}
