import { mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { BACKUP_JOB_FORMAT, type BackupJob, type BackupJobResult } from '../backup/job.js';
import { resolveStore } from '../backup/store.js';
import { BosunError, describeError } from '../errors.js';
import { transientUnitArgv, type Host } from '../host/index.js';
import type { HostIdentity } from '../identity/host-identity.js';
import { openSecretRef } from '../secrets/open.js';
import type { Redactor } from '../secrets/redact.js';
import type { ObjectStorageSettings } from '../spec/agent-settings.js';
import type { BackupSpec } from '../spec/backup-spec.js';
import type { NodeSpec } from '../spec/node-spec.js';

/** The transient unit a scheduled backup runs in under systemd: one name, so two runs can never overlap on a host. */
export const BACKUP_UNIT = 'bosun-backup.service';

export interface BackupRunContext {
  host: Host<Redactor>;
  identity: HostIdentity;
  redactor: Redactor;
  objectStorage?: ObjectStorageSettings;
  stateDir: string;
  /** the bosun command line that runs `backup job` (this process's node and script) */
  bosunCommand: readonly string[];
  /** run the job in a transient systemd unit (bosun.service runs under systemd); else as a plain child */
  underSystemd: boolean;
  /** aborted when the agent stops: the job is stopped (and a quiesced service released) */
  signal: AbortSignal;
}

/** Where a run failed, for the event and the state file. */
export class BackupRunError extends BosunError {
  constructor(
    readonly stage: 'credentials' | 'quiesce' | 'snapshot' | 'upload' | 'release',
    message: string,
  ) {
    super('E_BACKUP', `${stage}: ${message}`, { stage });
  }
}

export const targetOf = (backup: BackupSpec): string => `s3://${backup.target.bucket}/${backup.target.prefix}`;

/**
 * One scheduled backup of spec's data volume: made consistent as the spec says (quiesce and release
 * around the copy, or a snapshot command into a spool that is copied instead), then uploaded by
 * `bosun backup job` with low CPU and IO weights. Release always runs after a quiesce, and the spool
 * is emptied after a snapshot, whatever happened in between.
 */
export async function runBackup(spec: NodeSpec, ctx: BackupRunContext): Promise<BackupJobResult> {
  const backup = spec.backup!;
  const job = await jobFor(spec, ctx);
  const consistency = backup.consistency;
  if (consistency.method === 'crash-consistent') return upload(job, backup, ctx);
  if (consistency.method === 'hooks') {
    await hook(ctx, 'quiesce', consistency.quiesce, consistency.timeoutSeconds);
    try {
      return await upload(job, backup, ctx);
    } finally {
      await hook(ctx, 'release', consistency.release, consistency.timeoutSeconds);
    }
  }
  const spool = consistency.spoolDir;
  await emptyDir(spool);
  try {
    const argv = consistency.argv.map((arg) => arg.replaceAll('{spool}', spool));
    await hook(ctx, 'snapshot', argv, consistency.timeoutSeconds);
    return await upload({ ...job, source: spool }, backup, ctx);
  } finally {
    await emptyDir(spool).catch(() => undefined);
  }
}

async function jobFor(spec: NodeSpec, ctx: BackupRunContext): Promise<BackupJob> {
  const { target } = spec.backup!;
  let credentials: { accessKeyId: string; secretAccessKey: string } | undefined;
  try {
    credentials = target.credentials && {
      accessKeyId: openSecretRef({ secret: target.credentials.accessKeyId, label: 'backup.target.credentials.accessKeyId' }, ctx.identity, ctx.redactor)
        .toString('utf8')
        .trim(),
      secretAccessKey: openSecretRef(
        { secret: target.credentials.secretAccessKey, label: 'backup.target.credentials.secretAccessKey' },
        ctx.identity,
        ctx.redactor,
      )
        .toString('utf8')
        .trim(),
    };
  } catch (e) {
    throw new BackupRunError('credentials', ctx.redactor.redact(describeError(e)));
  }
  const store = await resolveStore(ctx.objectStorage, credentials ? { credentials } : {}, ctx.redactor);
  return {
    format: BACKUP_JOB_FORMAT,
    source: spec.disks!.mount.path,
    bucket: target.bucket,
    prefix: target.prefix,
    recipient: target.recipient,
    host: spec.node,
    consistency: spec.backup!.consistency.method,
    ...(spec.backup!.bandwidthLimitMiBps !== undefined ? { bandwidthLimitMiBps: spec.backup!.bandwidthLimitMiBps } : {}),
    store: {
      ...(store.endpoint ? { endpoint: store.endpoint } : {}),
      region: store.region,
      forcePathStyle: store.forcePathStyle ?? true,
      ...(store.credentials ? { credentials: store.credentials } : {}),
    },
  };
}

async function hook(ctx: BackupRunContext, stage: 'quiesce' | 'release' | 'snapshot', argv: readonly string[], timeoutSeconds: number): Promise<void> {
  try {
    await ctx.host.exec(argv, { timeoutSeconds });
  } catch (e) {
    throw new BackupRunError(stage, ctx.redactor.redact(describeError(e)));
  }
}

/** The job in its own process: under systemd a transient unit with the spec's weights and time limit, which systemd enforces. */
async function upload(job: BackupJob, backup: BackupSpec, ctx: BackupRunContext): Promise<BackupJobResult> {
  const command = [...ctx.bosunCommand, 'backup', 'job', '--json', '--state-dir', ctx.stateDir];
  const argv = ctx.underSystemd
    ? transientUnitArgv(command, {
        unit: BACKUP_UNIT,
        properties: [`CPUWeight=${backup.cpuWeight}`, `IOWeight=${backup.ioWeight}`, `RuntimeMaxSec=${backup.timeLimitSeconds}`],
      })
    : command;
  const ran = await ctx.host
    .exec(argv, { input: Buffer.from(JSON.stringify(job)), timeoutSeconds: backup.timeLimitSeconds + 60, check: false, signal: ctx.signal })
    .catch((e: unknown) => {
      throw new BackupRunError('upload', ctx.redactor.redact(describeError(e)));
    });
  let reply: (BackupJobResult | { ok: false; error?: { message?: string } }) | undefined;
  try {
    reply = JSON.parse(ran.stdout) as typeof reply;
  } catch {
    reply = undefined;
  }
  if (ran.exitCode === 0 && reply?.ok) return reply;
  if (ctx.underSystemd) await stopBackupUnit(ctx);
  const why = reply && !reply.ok ? (reply.error?.message ?? 'failed') : lastLine(ran.stderr) || `exited with ${ran.exitCode}`;
  throw new BackupRunError('upload', ctx.redactor.redact(why));
}

/** Stops the job's transient unit (a time limit, or the agent stopping: with --wait its client's end does not stop it). */
export async function stopBackupUnit(ctx: Pick<BackupRunContext, 'host'>): Promise<void> {
  await ctx.host.exec(['systemctl', 'stop', BACKUP_UNIT], { check: false, timeoutSeconds: 120 }).catch(() => undefined);
}

const lastLine = (text: string): string => text.trim().split('\n').at(-1) ?? '';

/** A spool is bosun's: created 0700 if missing, and everything in it removed. */
async function emptyDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  for (const name of await readdir(dir)) await rm(join(dir, name), { recursive: true, force: true });
}
