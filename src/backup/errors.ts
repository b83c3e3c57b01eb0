import { BosunError, type ErrorCode } from '../errors.js';

/**
 * Why a backup or restore failed, finer than the process-wide error codes.
 * `reason` is in `details` so the CLI's --json output and status reports can
 * tell a corrupt pack from a wrong key from a refused target.
 */
export type BackupFailure =
  /** a chunk, file or the manifest does not match what the manifest says: corrupt or altered */
  | 'integrity'
  /** an object the backup needs is not in the store */
  | 'missing'
  /** an object is shorter than the manifest says */
  | 'truncated'
  /** the store kept failing after every retry */
  | 'transport'
  /** the data key cannot be opened (wrong key) or the manifest signature is not trusted */
  | 'key'
  /** not a bosun backup, or a format version this bosun cannot read */
  | 'format'
  /** the target is not empty, or not a directory */
  | 'target'
  /** the target volume ran out of space (ENOSPC): a write failure, not a refusal; a run with room continues */
  | 'space'
  /** the source tree could not be read */
  | 'source';

// Each failure maps to a process-wide code (and so an exit code); `reason` keeps the detail.
const codeFor: Record<BackupFailure, ErrorCode> = {
  integrity: 'E_INTEGRITY',
  missing: 'E_INTEGRITY',
  truncated: 'E_INTEGRITY',
  transport: 'E_TRANSPORT',
  key: 'E_SECRET',
  format: 'E_READ',
  target: 'E_REFUSED',
  space: 'E_WRITE',
  source: 'E_READ',
};

export class BackupError extends BosunError {
  readonly reason: BackupFailure;

  constructor(reason: BackupFailure, message: string, details: Record<string, unknown> = {}, options?: ErrorOptions) {
    super(codeFor[reason], message, { reason, ...details }, options);
    this.name = 'BackupError';
    this.reason = reason;
  }
}

export function isBackupError(e: unknown, reason?: BackupFailure): e is BackupError {
  return e instanceof BackupError && (reason === undefined || e.reason === reason);
}

/** errno of a failed fs call, or undefined */
export function errnoOf(e: unknown): string | undefined {
  if (typeof e !== 'object' || e === null || !('code' in e)) return undefined;
  const code: unknown = e.code;
  return typeof code === 'string' ? code : undefined;
}
