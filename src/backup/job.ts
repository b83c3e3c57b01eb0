import { z } from 'zod';
import type { HostIdentity } from '../identity/host-identity.js';
import type { Logger } from '../log.js';
import type { SecretScrubber } from '../host/exec.js';
import { createBackup, publishLatest, type BackupResult } from './create.js';
import { BackupError } from './errors.js';
import {
  FORMAT_V2,
  MAX_MANIFEST_BYTES,
  PACK_DIR,
  checkManifestSignature,
  deriveManifestKey,
  manifestKey,
  newBackupId,
  openManifestBody,
  parseManifest,
  type ManifestBody,
} from './format.js';
import { ResumeLog, knownFromBody, knownFromResume, type KnownChunk, type KnownChunks } from './known-chunks.js';
import { takeLease } from './leases.js';
import { pruneBackups } from './prune.js';
import { getWhole, resolveBackupId } from './restore/manifest.js';
import { DEFAULT_RETRY } from './retry.js';
import { S3Transport, createS3Client } from './s3-transport.js';
import { loadOrCreateSetKey, resumeLogPath, type SetKey } from './set-key.js';

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
  /** upload at most this many MiB per second (spec.backup.bandwidthLimitMiBps) */
  bandwidthLimitMiBps: z.number().positive().optional(),
  /** how the data was made consistent (spec.backup.consistency), kept in the manifest */
  consistency: z.enum(['hooks', 'snapshot', 'crash-consistent']).optional(),
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
  options: { signer: HostIdentity; stateDir: string; redactor: SecretScrubber; logger?: Logger; signal?: AbortSignal },
): Promise<BackupJobResult> {
  if (job.store.credentials) {
    options.redactor.add(job.store.credentials.accessKeyId);
    options.redactor.add(job.store.credentials.secretAccessKey);
  }
  const client = createS3Client(job.store);
  const transport = new S3Transport({ client, bucket: job.bucket, prefix: job.prefix });
  try {
    const result = await incrementalBackup(job, transport, options);
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
 * One backup under the host's set key, referencing what the store holds
 * already: the chunks of the set's latest backup (if it is of the same key)
 * and of runs that were killed before their manifest (the resume log). A
 * lease names the new backup, the base and the killed runs while it is made,
 * so a prune meanwhile keeps every pack it references.
 */
async function incrementalBackup(
  job: BackupJob,
  transport: S3Transport,
  options: { signer: HostIdentity; stateDir: string; redactor: SecretScrubber; logger?: Logger; signal?: AbortSignal },
): Promise<BackupResult> {
  const signal = options.signal;
  const setKey = await loadOrCreateSetKey(options.stateDir, job, options.signer);
  options.redactor.add(setKey.key);
  const backupId = newBackupId();
  const lease = await takeLease(transport, { kind: 'backup', host: job.host, backupIds: [backupId], ...(signal ? { signal } : {}) });
  const resume = new ResumeLog(resumeLogPath(options.stateDir, job));
  try {
    const base = await baseOfSet(transport, setKey, signal);
    const killed = await resume.read(setKey.keyId);
    await lease.extend([...(base ? [base.backupId] : []), ...killed.backupIds]);
    const known: KnownChunks = base ? knownFromBody(base.body) : new Map<string, KnownChunk>();
    if (killed.packs.length > 0) {
      const listed = new Map((await transport.list(PACK_DIR, signal)).map((o) => [o.key, o.size]));
      const added = knownFromResume(killed.packs, listed, known);
      options.logger?.info({ killedRuns: killed.backupIds, chunks: added }, 'backup: reusing what killed runs stored');
    }
    await resume.start(setKey.keyId, backupId);
    const result = await createBackup({
      source: job.source,
      transport,
      recipient: job.recipient,
      setKey,
      known,
      onPackStored: (pack) => resume.append(pack),
      signer: options.signer,
      host: job.host,
      backupId,
      ...(job.consistency ? { consistency: job.consistency } : {}),
      ...(job.bandwidthLimitMiBps !== undefined ? { bandwidthLimit: job.bandwidthLimitMiBps * 1024 * 1024 } : {}),
      // latest.json moves only once the store is seen to hold the whole backup (publishVerified)
      updateLatest: false,
      ...(options.logger ? { logger: options.logger } : {}),
      ...(signal ? { signal } : {}),
    });
    await publishVerified(transport, result, options.signer.signingKey, signal);
    await resume.clear();
    return result;
  } finally {
    setKey.key.fill(0);
    await lease.release().catch(() => undefined);
  }
}

/** The set's latest backup, opened, if it is of this set key (else nothing can be shared with it). */
async function baseOfSet(transport: S3Transport, setKey: SetKey, signal?: AbortSignal): Promise<{ backupId: string; body: ManifestBody } | undefined> {
  let latest: string;
  try {
    latest = await resolveBackupId(transport, 'latest', DEFAULT_RETRY, signal);
  } catch (e) {
    if (e instanceof BackupError && e.reason === 'missing') return undefined;
    throw e;
  }
  const sealed = parseManifest(await getWhole(transport, manifestKey(latest), MAX_MANIFEST_BYTES, DEFAULT_RETRY, signal));
  if (sealed.header.format !== FORMAT_V2 || sealed.header.keyId !== setKey.keyId || sealed.header.backupId !== latest) return undefined;
  const manifest = deriveManifestKey(setKey.key, latest);
  try {
    return { backupId: latest, body: openManifestBody(sealed, manifest) };
  } finally {
    manifest.fill(0);
  }
}

/**
 * Points latest.json at a new backup once the store is seen to hold all of it: the manifest read back
 * parses, names this backup and carries this host's valid signature, and the store lists every pack it
 * references at its size. Keyless (the header lists the packs), cheap (one GET and one LIST), and it
 * catches a store that lost or cut an upload it had acknowledged.
 */
async function publishVerified(transport: S3Transport, result: BackupResult, signer: string, signal?: AbortSignal): Promise<void> {
  const where = transport.describe(manifestKey(result.backupId));
  const sealed = parseManifest(await getWhole(transport, manifestKey(result.backupId), MAX_MANIFEST_BYTES, DEFAULT_RETRY, signal));
  if (sealed.header.backupId !== result.backupId || sealed.header.signer !== signer || !checkManifestSignature(sealed) || sealed.header.format !== FORMAT_V2)
    throw new BackupError('integrity', `${where} read back is not the manifest this host wrote`);
  const listed = new Map((await transport.list(PACK_DIR, signal)).map((o) => [o.key, o.size]));
  const wrong = sealed.header.packs.filter((pack) => listed.get(pack.key) !== pack.size);
  if (wrong.length > 0)
    throw new BackupError(
      'integrity',
      `${transport.describe(wrong[0]!.key)} ${listed.has(wrong[0]!.key) ? `is ${listed.get(wrong[0]!.key)} bytes, not the ${wrong[0]!.size} the manifest says` : 'is missing'}${wrong.length > 1 ? ` (and ${wrong.length - 1} more packs)` : ''}`,
    );
  await publishLatest(transport, sealed.header, DEFAULT_RETRY, signal);
}
