import { z } from 'zod';
import type { HostIdentity } from '../identity/host-identity.js';
import type { Logger } from '../log.js';
import type { SecretScrubber } from '../host/exec.js';
import { createBackup, publishLatest, type BackupResult } from './create.js';
import { BackupError } from './errors.js';
import { MAX_MANIFEST_BYTES, checkManifestSignature, manifestKey, newBackupId, parseManifest } from './format.js';
import { takeLease } from './leases.js';
import { pruneBackups } from './prune.js';
import { getWhole } from './restore/manifest.js';
import { DEFAULT_RETRY } from './retry.js';
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
  /** after the backup, apply this retention to the set (spec.backup.prune) */
  prune: z.strictObject({ last: z.number().int().min(1), daily: z.number().int().min(0), weekly: z.number().int().min(0) }).optional(),
});
export type BackupJob = z.infer<typeof BackupJob>;

/** What the job process prints on stdout (one JSON line) when the backup is complete and latest.json names it. */
export interface BackupJobResult extends BackupResult {
  ok: true;
  /** what the prune after it did, when the job asked for one */
  pruned?: { dropped: string[]; incomplete: number; bytesFreed: number };
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
  const transport = new S3Transport({ client, bucket: job.bucket, prefix: job.prefix });
  try {
    // A lease names the backup while it is made: a prune meanwhile keeps its packs (leases.ts).
    const backupId = newBackupId();
    const lease = await takeLease(transport, { kind: 'backup', host: job.host, backupIds: [backupId], ...(options.signal ? { signal: options.signal } : {}) });
    let result: BackupResult;
    try {
      result = await createBackup({
        source: job.source,
        transport,
        recipient: job.recipient,
        signer: options.signer,
        host: job.host,
        backupId,
        // latest.json moves only once the store is seen to hold the whole backup (publishVerified)
        updateLatest: false,
        ...(options.logger ? { logger: options.logger } : {}),
        ...(options.signal ? { signal: options.signal } : {}),
      });
      await publishVerified(transport, result, options.signer.signingKey, options.signal);
    } finally {
      await lease.release().catch(() => undefined);
    }
    if (!job.prune) return { ok: true, ...result };
    const pruned = await pruneBackups({ transport, policy: job.prune, host: job.host, apply: true, ...(options.signal ? { signal: options.signal } : {}) });
    return {
      ok: true,
      ...result,
      pruned: { dropped: pruned.dropped.map((b) => b.backupId), incomplete: pruned.incomplete.length, bytesFreed: pruned.bytesFreed },
    };
  } finally {
    client.destroy();
  }
}

/**
 * Points latest.json at a new backup once the store is seen to hold all of it: the manifest read back
 * parses, names this backup and carries this host's valid signature, and the store lists as many packs
 * and bytes as were uploaded. Keyless (the agent holds only the recipient's public key), cheap (one GET
 * and one LIST), and it catches a store that lost or cut an upload it had acknowledged.
 */
async function publishVerified(transport: S3Transport, result: BackupResult, signer: string, signal?: AbortSignal): Promise<void> {
  const where = transport.describe(manifestKey(result.backupId));
  const sealed = parseManifest(await getWhole(transport, manifestKey(result.backupId), MAX_MANIFEST_BYTES, DEFAULT_RETRY, signal));
  if (sealed.header.backupId !== result.backupId || sealed.header.signer !== signer || !checkManifestSignature(sealed))
    throw new BackupError('integrity', `${where} read back is not the manifest this host wrote`);
  const packs = (await transport.list(`backups/${result.backupId}/packs/`, signal)).filter((o) => o.key.endsWith('.pack'));
  const bytes = packs.reduce((n, o) => n + o.size, 0);
  if (packs.length !== result.stats.packs || bytes !== result.stats.storedBytes)
    throw new BackupError(
      'integrity',
      `${transport.describe(`backups/${result.backupId}/packs/`)} holds ${packs.length} packs of ${bytes} bytes, not the ${result.stats.packs} of ${result.stats.storedBytes} uploaded`,
    );
  await publishLatest(transport, sealed.header, DEFAULT_RETRY, signal);
}
