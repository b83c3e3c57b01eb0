import { z } from 'zod';
import type { HostIdentity } from '../identity/host-identity.js';
import type { Logger } from '../log.js';
import type { SecretScrubber } from '../host/exec.js';
import { createBackup, type BackupResult } from './create.js';
import { S3Transport, createS3Client } from './s3-transport.js';

/*
 * A scheduled backup's job, as the agent hands it to the process that does the
 * work (`bosun backup job`, in a transient unit with low CPU and IO weights:
 * src/daemon/backup-run.ts). It travels on that process's stdin, never in argv
 * or the environment, because it carries the store's credentials. Both ends
 * are the same bosun build; the format is versioned anyway so that a job from
 * another build is refused rather than half understood.
 */

export const BACKUP_JOB_FORMAT = 'bosun-backup-job-v1';

export const BackupJob = z.strictObject({
  format: z.literal(BACKUP_JOB_FORMAT),
  /** the directory to back up: the data volume, or the snapshot spool */
  source: z.string().startsWith('/'),
  bucket: z.string().min(1),
  prefix: z.string(),
  /** x25519:… the data key is sealed to */
  recipient: z.string(),
  /** label of the creating host in the manifest */
  host: z.string(),
  store: z.strictObject({
    endpoint: z.string().optional(),
    region: z.string(),
    forcePathStyle: z.boolean(),
    credentials: z.strictObject({ accessKeyId: z.string(), secretAccessKey: z.string() }).optional(),
  }),
});
export type BackupJob = z.infer<typeof BackupJob>;

/** What the job process prints on stdout (one JSON line) when the backup is complete and latest.json names it. */
export interface BackupJobResult extends BackupResult {
  ok: true;
}

/** Runs a job: the backup of job.source, signed with the host's identity, published as the set's latest. */
export async function runBackupJob(
  job: BackupJob,
  options: { signer: HostIdentity; redactor: SecretScrubber; logger?: Logger; signal?: AbortSignal },
): Promise<BackupJobResult> {
  if (job.store.credentials) {
    options.redactor.add(job.store.credentials.accessKeyId);
    options.redactor.add(job.store.credentials.secretAccessKey);
  }
  const client = createS3Client(job.store);
  try {
    const result = await createBackup({
      source: job.source,
      transport: new S3Transport({ client, bucket: job.bucket, prefix: job.prefix }),
      recipient: job.recipient,
      signer: options.signer,
      host: job.host,
      ...(options.logger ? { logger: options.logger } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
    });
    return { ok: true, ...result };
  } finally {
    client.destroy();
  }
}
