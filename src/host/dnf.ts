import { execa } from 'execa';
import { BosunError } from '../errors.js';

/**
 * Package refresh through dnf (dnf4 or dnf5) at boot: `dnf -y --refresh
 * upgrade <packages>`, retried with backoff while the failure is one a retry
 * can cure (a mirror timing out, a connection reset, metadata that did not
 * download, another transaction holding the lock), given up at once when it
 * cannot (no such package, a dependency conflict, a full disk, a bad
 * signature), and never past the deadline. What changed is read from the rpm
 * database before and after, not parsed from dnf's tables, which differ
 * between dnf4 and dnf5.
 */

export type FailureKind = 'transient' | 'permanent';

export interface Classified {
  kind: FailureKind;
  /** a short reason an operator reads: "mirror timeout", "no such package: foo" */
  reason: string;
}

interface Rule {
  kind: FailureKind;
  reason: string | ((m: RegExpMatchArray) => string);
  re: RegExp;
}

// Permanent first: a run that says both "No match for argument" and a timeout
// on some other repository cannot be cured by waiting.
const RULES: Rule[] = [
  { kind: 'permanent', re: /No match for argument:\s*(\S+)/, reason: (m) => `no such package: ${m[1]}` },
  {
    kind: 'permanent',
    re: /Package (\S+) available, but not installed|Packages for argument '([^']+)' available, but not installed/,
    reason: (m) => `not installed, so not upgraded: ${m[1] ?? m[2]}`,
  },
  {
    kind: 'permanent',
    re: /needs (\d+\s*[KMG]i?B) (?:more space )?on the (\S+) filesystem|At least (\d+\s*[KMG]i?B) more space needed on the (\S+) filesystem/,
    reason: (m) => `disk full: ${m[1] ?? m[3]} more needed on ${m[2] ?? m[4]}`,
  },
  { kind: 'permanent', re: /No space left on device|\[Errno 28\]/, reason: 'disk full: no space left on device' },
  {
    kind: 'permanent',
    re: /Problem( \d+)?: [^\n]*|conflicts with file from package|but none of the providers can be installed|nothing provides /,
    reason: (m) => `dependency conflict: ${m[0].replace(/^Problem( \d+)?: /, '').trim()}`,
  },
  {
    kind: 'permanent',
    re: /GPG check FAILED|Public key for \S+ is not installed|signature check failed|is not signed/i,
    reason: 'package signature check failed',
  },
  { kind: 'transient', re: /Curl error \(28\)|Timeout was reached|Operation too slow|timed out/i, reason: 'mirror timeout' },
  { kind: 'transient', re: /Curl error \(56\)|Connection reset by peer|Recv failure/, reason: 'connection reset' },
  {
    kind: 'transient',
    re: /Curl error \((6|7|35|52|55|92)\)|Couldn't resolve host|Could not resolve host|Couldn't connect to server|Failed to connect/,
    reason: 'mirror unreachable',
  },
  { kind: 'transient', re: /Status code: (5\d\d)/, reason: (m) => `mirror error (HTTP ${m[1]})` },
  {
    kind: 'transient',
    re: /Failed to download metadata for repo '([^']+)'|Cannot download repomd\.xml|Errors during downloading metadata for repository '([^']+)'|Librepo error|All mirrors were tried|Cannot prepare internal mirrorlist/,
    reason: (m) => `metadata download failed${(m[1] ?? m[2]) ? ` for ${m[1] ?? m[2]}` : ''}`,
  },
  {
    kind: 'transient',
    re: /Error downloading packages|Cannot download (\S+\.rpm)|Downloading error|Checksum doesn't match|checksum mismatch|Interrupted by header callback/i,
    reason: 'package download failed',
  },
  {
    kind: 'transient',
    re: /Failed to obtain rpm transaction lock|Waiting for process with pid \d+ to finish|another (transaction|copy) is (in progress|running)/i,
    reason: 'another package transaction holds the lock',
  },
];

/** Tell a failed dnf run that a retry may cure from one it cannot. */
export function classifyDnfFailure(exitCode: number | undefined, output: string): Classified {
  for (const r of RULES) {
    const m = output.match(r.re);
    if (m) return { kind: r.kind, reason: typeof r.reason === 'string' ? r.reason : r.reason(m) };
  }
  // dnf4: 200 = a problem with the lock. Anything unrecognised is not retried blindly.
  if (exitCode === 200) return { kind: 'transient', reason: 'another package transaction holds the lock' };
  if (exitCode === undefined) return { kind: 'transient', reason: 'dnf was killed or timed out' };
  const last = output.trim().split('\n').pop()?.trim() ?? '';
  return { kind: 'permanent', reason: `dnf failed (exit ${exitCode})${last ? `: ${last.slice(0, 200)}` : ''}` };
}

export interface RunResult {
  exitCode: number | undefined;
  stdout: string;
  stderr: string;
}
export type Runner = (argv: readonly string[], timeoutMs: number) => Promise<RunResult>;

export interface RefreshOptions {
  packages: readonly string[];
  /** the dnf command (argv before the subcommand); default ['dnf'] */
  dnf?: readonly string[];
  /** the rpm command used to read versions; default ['rpm'] */
  rpm?: readonly string[];
  deadlineMs: number;
  /** first wait after a transient failure; doubles, with jitter, up to maxDelayMs */
  initialDelayMs?: number;
  maxDelayMs?: number;
  run?: Runner;
  sleep?: (ms: number) => Promise<void>;
  now?: () => number;
  random?: () => number;
  onAttempt?: (a: AttemptReport) => void;
}

export interface AttemptReport {
  attempt: number;
  exitCode: number | undefined;
  failure?: Classified;
  /** ms until the next attempt, when there is one */
  retryInMs?: number;
}

export interface Updated {
  name: string;
  from: string | null;
  to: string;
}

export interface RefreshResult {
  updated: Updated[];
  /** asked for, installed, and already the newest */
  unchanged: string[];
  attempts: number;
  durationMs: number;
}

const defaultRunner: Runner = async (argv, timeoutMs) => {
  const r = await execa(argv[0]!, argv.slice(1), { reject: false, timeout: timeoutMs, stdin: 'ignore', env: { LANG: 'C.UTF-8', LC_ALL: 'C.UTF-8' } });
  return { exitCode: r.timedOut ? undefined : (r.exitCode ?? undefined), stdout: r.stdout, stderr: r.stderr };
};

/** name -> EVR of the installed packages among `names` (missing ones are absent). */
async function installedVersions(run: Runner, rpm: readonly string[], names: readonly string[]): Promise<Map<string, string>> {
  const r = await run([...rpm, '-q', '--qf', '%{NAME} %{EPOCHNUM}:%{VERSION}-%{RELEASE}\\n', ...names], 60_000);
  const out = new Map<string, string>();
  for (const line of r.stdout.split('\n')) {
    const m = /^(\S+) (\d+):(\S+)$/.exec(line.trim());
    if (m) out.set(m[1]!, m[2] === '0' ? m[3]! : `${m[2]}:${m[3]}`);
  }
  return out;
}

export async function refreshPackages(options: RefreshOptions): Promise<RefreshResult> {
  const run = options.run ?? defaultRunner;
  const sleep = options.sleep ?? ((ms) => new Promise<void>((r) => setTimeout(r, ms)));
  const now = options.now ?? Date.now;
  const random = options.random ?? Math.random;
  const dnf = options.dnf ?? ['dnf'];
  const rpm = options.rpm ?? ['rpm'];
  const started = now();
  const deadline = started + options.deadlineMs;
  let delay = options.initialDelayMs ?? 5_000;
  const maxDelay = options.maxDelayMs ?? 60_000;

  const before = await installedVersions(run, rpm, options.packages);
  for (let attempt = 1; ; attempt++) {
    const left = deadline - now();
    const result = await run([...dnf, '-y', '--refresh', 'upgrade', ...options.packages], Math.max(1000, left));
    const output = `${result.stdout}\n${result.stderr}`;
    if (result.exitCode === 0) {
      options.onAttempt?.({ attempt, exitCode: 0 });
      const after = await installedVersions(run, rpm, options.packages);
      const updated: Updated[] = [];
      const unchanged: string[] = [];
      for (const name of options.packages) {
        const to = after.get(name);
        if (to === undefined) continue;
        if (before.get(name) === to) unchanged.push(name);
        else updated.push({ name, from: before.get(name) ?? null, to });
      }
      return { updated, unchanged, attempts: attempt, durationMs: now() - started };
    }
    const failure = classifyDnfFailure(result.exitCode, output);
    // Jitter spreads a fleet booting at once over the mirrors.
    const wait = Math.round(delay * (0.75 + random() * 0.5));
    const retry = failure.kind === 'transient' && now() + wait < deadline;
    options.onAttempt?.({ attempt, exitCode: result.exitCode, failure, ...(retry ? { retryInMs: wait } : {}) });
    if (!retry) {
      const why =
        failure.kind === 'permanent' ? 'not retried' : `gave up: the ${Math.round(options.deadlineMs / 1000)} s deadline leaves no room for another try`;
      throw new BosunError(
        'E_PACKAGES',
        `package refresh of ${options.packages.join(', ')} failed after ${attempt} attempt${attempt === 1 ? '' : 's'}: ${failure.reason} (${failure.kind}; ${why})`,
        {
          kind: failure.kind,
          reason: failure.reason,
          attempts: attempt,
          exitCode: result.exitCode ?? null,
        },
      );
    }
    await sleep(wait);
    delay = Math.min(delay * 2, maxDelay);
  }
}
