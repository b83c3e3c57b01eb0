import { z } from 'zod';
import { AbsolutePath, SealedSecret } from './common.js';

/*
 * The `backup` section of a NodeSpec: this node backs its data volume up to
 * object storage on a schedule (src/backup/FORMAT.md is the format; the agent
 * runs it in the background, reports each run on bosun.events and the age of
 * the last good backup in its status).
 */

const CRON_FIELDS: ReadonlyArray<{ name: string; min: number; max: number }> = [
  { name: 'second', min: 0, max: 59 },
  { name: 'minute', min: 0, max: 59 },
  { name: 'hour', min: 0, max: 23 },
  { name: 'day of month', min: 1, max: 31 },
  { name: 'month', min: 1, max: 12 },
  { name: 'day of week', min: 0, max: 7 },
];

/** Why one cron field is wrong, or undefined: `*`, `n`, `a-b`, each optionally `/step`, in a comma list. Numbers only. */
function cronFieldProblem(text: string, field: { name: string; min: number; max: number }): string | undefined {
  for (const part of text.split(',')) {
    const found = /^(\*|(\d+)(?:-(\d+))?)(?:\/(\d+))?$/.exec(part);
    if (!found) return `${field.name} "${part}" is not *, a number or a range (names are not accepted)`;
    const [, , from, to, step] = found;
    const numbers = [from, to].filter((n): n is string => n !== undefined).map(Number);
    if (numbers.some((n) => n < field.min || n > field.max)) return `${field.name} "${part}" is outside ${field.min}-${field.max}`;
    if (numbers.length === 2 && numbers[0]! > numbers[1]!) return `${field.name} "${part}" is a range that runs backwards`;
    if (step !== undefined && Number(step) === 0) return `${field.name} "${part}" has a step of 0`;
  }
  return undefined;
}

/** Why a cron expression is wrong (5 fields, or 6 with seconds first), or undefined. */
export function cronProblem(expression: string): string | undefined {
  const fields = expression.trim().split(/\s+/);
  if (fields.length !== 5 && fields.length !== 6) return `expected 5 fields (minute hour day month weekday) or 6 (seconds first), got ${fields.length}`;
  const specs = fields.length === 6 ? CRON_FIELDS : CRON_FIELDS.slice(1);
  for (const [i, text] of fields.entries()) {
    const problem = cronFieldProblem(text, specs[i]!);
    if (problem) return problem;
  }
  return undefined;
}

/** A cron expression in UTC, numbers only, e.g. "0 3 * * *" (03:00 every day) or "0 *\/6 * * *". */
export const CronExpression = z.string().superRefine((expression, ctx) => {
  const problem = cronProblem(expression);
  if (problem) ctx.addIssue({ code: 'custom', message: `not a cron expression: ${problem}` });
});

/** "x25519:<base64url>", a backup key pair's public half as `bosun backup keygen` prints it */
export const X25519Key = z
  .string()
  .regex(/^x25519:[A-Za-z0-9_-]{43}$/, 'expected an X25519 public key as printed by `bosun backup keygen` (x25519:<43 base64url characters>)');

const HookArgv = z.array(z.string().min(1)).min(1);
const HookTimeout = z.number().int().min(1).max(3600).default(300);

/**
 * How the copy is made consistent. There is no default: a copy of a live
 * volume with nothing done about writes in flight must be asked for by name.
 */
export const BackupConsistency = z.discriminatedUnion('method', [
  /** quiesce (argv on the host, e.g. freeze the service machine), back the volume up, release (always, also after a failure) */
  z.strictObject({ method: z.literal('hooks'), quiesce: HookArgv, release: HookArgv, timeoutSeconds: HookTimeout }),
  /**
   * argv on the host writes a consistent copy into spoolDir (emptied before and after each run), e.g.
   * pg_basebackup; the spool is backed up instead of the volume. "{spool}" in argv is replaced by spoolDir.
   */
  z.strictObject({
    method: z.literal('snapshot'),
    argv: HookArgv,
    spoolDir: AbsolutePath,
    timeoutSeconds: z
      .number()
      .int()
      .min(1)
      .max(7 * 86400)
      .default(3600),
  }),
  /** the volume as it is while the service writes: a restore is like a power cut's aftermath (marked so in the backup) */
  z.strictObject({ method: z.literal('crash-consistent') }),
]);

export const BackupRetention = z.strictObject({
  /** the newest N backups */
  last: z.number().int().min(1).max(1000).default(7),
  /** the newest backup of each of the last D days that have one (UTC) */
  daily: z.number().int().min(0).max(3660).default(7),
  /** the newest backup of each of the last W ISO weeks that have one */
  weekly: z.number().int().min(0).max(520).default(4),
});

export const BackupSpec = z.strictObject({
  /** when a run is due (UTC) */
  schedule: CronExpression,
  /**
   * each run starts this node's fixed share of up to splaySeconds after the due time (derived from cluster,
   * node and target), so a fleet with one schedule does not reach the store in the same second
   */
  splaySeconds: z.number().int().min(0).max(86400).default(300),
  target: z.strictObject({
    bucket: z.string().min(3).max(63),
    prefix: z.string().default(''),
    credentials: z.strictObject({ accessKeyId: SealedSecret, secretAccessKey: SealedSecret }).optional(),
    /** whom each backup's data key is sealed to: the backup key pair's public half */
    recipient: X25519Key,
  }),
  consistency: BackupConsistency,
  retention: BackupRetention.default({ last: 7, daily: 7, weekly: 4 }),
  /** this node applies the retention to the backup set (one node per set should) */
  prune: z.boolean().default(false),
  bandwidthLimitMiBps: z.number().positive().optional(),
  /** a run still going after this is stopped and reported failed; the previous latest stays */
  timeLimitSeconds: z
    .number()
    .int()
    .min(60)
    .max(7 * 86400)
    .default(6 * 3600),
  /** systemd weights of the run's scope against the service (default 100 each): the backup yields to it */
  cpuWeight: z.number().int().min(1).max(10000).default(20),
  ioWeight: z.number().int().min(1).max(10000).default(20),
});

export type BackupSpec = z.infer<typeof BackupSpec>;
export type BackupConsistency = z.infer<typeof BackupConsistency>;
export type BackupRetention = z.infer<typeof BackupRetention>;
