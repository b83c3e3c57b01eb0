import { access } from 'node:fs/promises';
import { BosunError } from '../errors.js';
import { runCommand, type ExecOptions, type ExecResult, type SecretScrubber } from './exec.js';
import { ensureDir, removeFile, writeFileAtomic } from './files.js';
import { systemctlArgv, transientUnitArgv, underSystemd, type UnitAction } from './systemd.js';
import { refreshPackages, type AttemptReport, type RefreshResult } from './dnf.js';

/**
 * The only object that changes the host. `root` prefixes every file path so
 * tests (and image builds) can apply file steps into a directory; commands
 * always run on the real host.
 */
export class Host<Scrubber extends SecretScrubber = SecretScrubber> {
  /** the process's redactor (src/secrets/redact.ts); typed by its shape here, as host/ sits below secrets/ */
  readonly redactor: Scrubber;
  readonly root: string;

  constructor(opts: { redactor: Scrubber; root?: string }) {
    this.redactor = opts.redactor;
    this.root = opts.root ?? '';
  }

  exec(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
    return runCommand(argv, this.redactor, opts);
  }

  write(path: string, content: string | Uint8Array, mode: number, owner?: { uid?: number; gid?: number }): Promise<void> {
    return writeFileAtomic(this.root + path, content, { mode, uid: owner?.uid, gid: owner?.gid });
  }

  mkdir(path: string, mode: number, owner?: { uid?: number; gid?: number }): Promise<void> {
    return ensureDir(this.root + path, mode, owner);
  }

  remove(path: string): Promise<void> {
    return removeFile(this.root + path);
  }

  /** Poll until a path exists (a device node or udev link); fail with E_TIMEOUT after the deadline. */
  async waitForPath(path: string, timeoutSeconds: number): Promise<void> {
    const deadline = Date.now() + timeoutSeconds * 1000;
    for (;;) {
      if (
        await access(this.root + path).then(
          () => true,
          () => false,
        )
      )
        return;
      if (Date.now() > deadline) throw new BosunError('E_TIMEOUT', `${path} did not appear within ${timeoutSeconds}s`, { path });
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /**
   * dnf upgrade with retries (host/dnf.ts). Under systemd, dnf runs in a
   * transient unit of its own: bosun.service sees /usr read-only, and a
   * package scriptlet that restarts bosun must not kill the transaction.
   */
  refreshPackages(packages: readonly string[], deadlineSeconds: number, onAttempt?: (a: AttemptReport) => void): Promise<RefreshResult> {
    const dnf = underSystemd() ? transientUnitArgv(['dnf']) : ['dnf'];
    return refreshPackages({ packages, deadlineMs: deadlineSeconds * 1000, dnf, ...(onAttempt ? { onAttempt } : {}) });
  }

  systemctl(action: UnitAction, unit?: string): Promise<ExecResult> {
    return this.exec(systemctlArgv(action, unit), { timeoutSeconds: 300 });
  }
}

export { LiveProbe, BlankProbe, type HostProbe } from './probe.js';
export { transientUnitArgv, underSystemd } from './systemd.js';
export { detectDistro, DISTROS, isDistroId, type Distro, type DistroId } from './distro.js';
