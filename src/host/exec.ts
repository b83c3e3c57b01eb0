import { execa } from 'execa';
import { BosunError } from '../errors.js';

/**
 * What the host layer needs of the redactor (src/secrets/redact.ts implements
 * it): scrub every secret it knows from a text, and learn one more. The host
 * layer sits below secrets, so it names only this shape.
 */
export interface SecretScrubber {
  redact(text: string): string;
  add(secret: string | Uint8Array): void;
}

export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

export interface ExecOptions {
  input?: Buffer;
  timeoutSeconds?: number;
  okExitCodes?: readonly number[];
  /** a probe reports the exit code instead of throwing */
  check?: boolean;
  /** aborting it kills the command (SIGTERM) */
  signal?: AbortSignal;
}

/**
 * Run a command with argv (never a shell string), C locale for parseable
 * output, and everything it prints passed through the redactor before it can
 * reach an error message or a log line.
 */
export async function runCommand(argv: readonly string[], redactor: SecretScrubber, opts: ExecOptions = {}): Promise<ExecResult> {
  const [file, ...args] = argv;
  if (!file) throw new BosunError('E_EXEC', 'empty command');
  const execaResult = await execa(file, args, {
    input: opts.input,
    stdin: opts.input ? undefined : 'ignore',
    reject: false,
    timeout: opts.timeoutSeconds ? opts.timeoutSeconds * 1000 : undefined,
    ...(opts.signal ? { cancelSignal: opts.signal } : {}),
    env: { LC_ALL: 'C' },
    stripFinalNewline: true,
    maxBuffer: 16 * 1024 * 1024,
  });
  const result: ExecResult = {
    exitCode: execaResult.exitCode ?? -1,
    stdout: redactor.redact(String(execaResult.stdout ?? '')),
    stderr: redactor.redact(String(execaResult.stderr ?? '')),
  };
  const ok = execaResult.exitCode === 0 || (execaResult.exitCode !== undefined && (opts.okExitCodes ?? []).includes(execaResult.exitCode));
  if (opts.check === false || ok) return result;
  const cmd = redactor.redact(argv.join(' '));
  let why: string;
  if (execaResult.timedOut) why = `timed out after ${opts.timeoutSeconds}s`;
  else if (execaResult.failed && execaResult.exitCode === undefined)
    why = (execaResult as { code?: string }).code === 'ENOENT' ? 'command not found' : `could not run (${redactor.redact(execaResult.shortMessage ?? '')})`;
  else if (execaResult.signal) why = `killed by ${execaResult.signal}`;
  else why = `exited with ${execaResult.exitCode}`;
  const tail = lastLines(result.stderr || result.stdout, 5);
  throw new BosunError(execaResult.timedOut ? 'E_TIMEOUT' : 'E_EXEC', `${cmd}: ${why}${tail ? `: ${tail}` : ''}`, {
    argv: redactor.redact(JSON.stringify(argv)),
    exitCode: result.exitCode,
  });
}

/** The lines of a tool's complaint worth quoting: the first ones (the reason, before any usage text) and the last ones. */
function lastLines(text: string, n: number): string {
  const lines = text
    .trim()
    .split('\n')
    .filter((l) => l.trim() !== '');
  if (lines.length <= n + 2) return lines.join(' | ');
  return [...lines.slice(0, 2), '…', ...lines.slice(-n)].join(' | ');
}
