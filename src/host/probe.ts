import { readFileIfExists } from './files.js';
import { runCommand } from './exec.js';
import type { Redactor } from '../engine/redact.js';

/**
 * Read-only questions phases ask about the host while observing. Observing
 * never changes anything, so `bosun plan` may run it on a live host.
 */
export interface HostProbe {
  /** a file's content, or undefined if it does not exist */
  readFile(path: string): Promise<Buffer | undefined>;
  /** systemctl is-enabled / is-active, as words ("enabled", "active", "not-found", ...) */
  unitState(unit: string): Promise<{ enabled: string; active: string }>;
}

export class LiveProbe implements HostProbe {
  constructor(
    private readonly redactor: Redactor,
    private readonly root = '',
  ) {}

  readFile(path: string): Promise<Buffer | undefined> {
    return readFileIfExists(this.root + path);
  }

  async unitState(unit: string): Promise<{ enabled: string; active: string }> {
    const word = async (verb: string): Promise<string> => {
      try {
        const r = await runCommand(['systemctl', verb, unit], this.redactor, { check: false, timeoutSeconds: 30 });
        return r.stdout.trim().split('\n')[0] || 'unknown';
      } catch {
        return 'unknown';
      }
    };
    return { enabled: await word('is-enabled'), active: await word('is-active') };
  }
}

/** The host as it is before bosun's first boot: nothing there. Used by `bosun plan --blank` and tests. */
export class BlankProbe implements HostProbe {
  readFile(): Promise<Buffer | undefined> {
    return Promise.resolve(undefined);
  }

  unitState(): Promise<{ enabled: string; active: string }> {
    return Promise.resolve({ enabled: 'disabled', active: 'inactive' });
  }
}
