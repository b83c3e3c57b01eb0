/**
 * Errors bosun raises on purpose carry a stable code and a process exit code, so
 * that the CLI, the status report and an operator's alerting can tell a bad spec
 * from a failed command from a bug without parsing messages.
 */

export const ExitCode = {
  ok: 0,
  /** a step failed while applying, or the daemon stopped on an error */
  failed: 1,
  /** the command line itself was wrong */
  usage: 2,
  /** the spec or settings file was invalid; nothing was changed */
  invalid: 3,
  /** the plan holds work bosun cannot do yet; nothing was changed */
  notImplemented: 4,
  /** another bosun process holds the state lock */
  locked: 5,
  /** the host is not what the spec expects (a disk with foreign data, a missing device); nothing was changed */
  refused: 6,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

export type ErrorCode =
  | 'E_USAGE'
  | 'E_INVALID_SPEC'
  | 'E_INVALID_SETTINGS'
  | 'E_READ'
  | 'E_EXEC'
  | 'E_WRITE'
  | 'E_SECRET'
  | 'E_IDENTITY'
  | 'E_NOT_IMPLEMENTED'
  | 'E_LOCKED'
  | 'E_JOURNAL'
  | 'E_STALE_VERSION'
  | 'E_WRONG_NODE'
  | 'E_TIMEOUT'
  | 'E_REFUSED'
  /** backup data or a manifest does not match its checksums, or an object it needs is missing or truncated */
  | 'E_INTEGRITY'
  /** the object store (or peer) kept failing after every retry */
  | 'E_TRANSPORT'
  | 'E_PACKAGES'
  /** this host was decommissioned (or is being): it refuses every spec that would build it again */
  | 'E_DECOMMISSIONED'
  /** the decommission phase ran but its result did not verify (a keyslot left, a volume still open...) */
  | 'E_DECOMMISSION_UNVERIFIED'
  /** a scheduled backup failed (its stage in the details: credentials, quiesce, snapshot, upload, release) */
  | 'E_BACKUP';

const exitFor: Record<ErrorCode, ExitCode> = {
  E_USAGE: ExitCode.usage,
  E_INVALID_SPEC: ExitCode.invalid,
  E_INVALID_SETTINGS: ExitCode.invalid,
  E_READ: ExitCode.invalid,
  E_EXEC: ExitCode.failed,
  E_WRITE: ExitCode.failed,
  E_SECRET: ExitCode.failed,
  E_IDENTITY: ExitCode.failed,
  E_NOT_IMPLEMENTED: ExitCode.notImplemented,
  E_LOCKED: ExitCode.locked,
  E_JOURNAL: ExitCode.failed,
  E_STALE_VERSION: ExitCode.invalid,
  E_WRONG_NODE: ExitCode.invalid,
  E_TIMEOUT: ExitCode.failed,
  E_REFUSED: ExitCode.refused,
  E_INTEGRITY: ExitCode.failed,
  E_TRANSPORT: ExitCode.failed,
  E_DECOMMISSIONED: ExitCode.refused,
  E_DECOMMISSION_UNVERIFIED: ExitCode.failed,
  E_BACKUP: ExitCode.failed,
  E_PACKAGES: ExitCode.failed,
};

export class BosunError extends Error {
  readonly code: ErrorCode;
  /** machine-readable detail for --json output and status reports; must never hold a secret */
  readonly details: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, details: Record<string, unknown> = {}, options?: ErrorOptions) {
    super(message, options);
    this.name = 'BosunError';
    this.code = code;
    this.details = details;
  }

  get exitCode(): ExitCode {
    return exitFor[this.code];
  }
}

export function isBosunError(e: unknown): e is BosunError {
  return e instanceof BosunError;
}

/** One line for a person, whatever was thrown. */
export function describeError(e: unknown): string {
  if (e instanceof Error) return e.message;
  return String(e);
}
