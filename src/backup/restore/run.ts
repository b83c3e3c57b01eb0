import { writeFileAtomic } from '../../host/files.js';
import { BackupError, errnoOf } from '../errors.js';
import { wipeScheme, type ManifestBody } from '../format.js';
import { removeJournal } from '../journal.js';
import { indexChunks } from '../plan.js';
import { ProgressTracker, formatBytes } from '../progress.js';
import { DEFAULT_RETRY, type RetryPolicy } from '../retry.js';
import { chooseLayout, commitLayout, ensureStaging, type TargetLayout } from '../target.js';
import { applyRootMetadata, finishTree } from './finish.js';
import { openManifest, resolveBackupId } from './manifest.js';
import { takeLease } from '../leases.js';
import { isManaged } from '../transport.js';
import { transportOf, type RestoreOptions, type RestoreResult } from './options.js';
import { RestoreJournal, resumeOrStart } from './resume.js';
import { fetchAll } from './session.js';

/**
 * Restore a backup into `target`: many ranged GETs in flight, each streamed
 * through decrypt → decompress → verify → write, one chunk in memory per
 * download; transient errors retried with backoff from the byte reached; a
 * journal beside the staging directory lets a killed restore continue; the
 * target appears (or is marked complete) only when every chunk has verified
 * (and, with verifyFiles, every file's SHA-256 read back from disk), and
 * everything is synced.
 */
export async function restoreFromObjectStorage(options: RestoreOptions): Promise<RestoreResult> {
  const transport = transportOf(options);
  if (!options.lease || !isManaged(transport)) return restoreUnleased(options);
  // The lease names the backup, so it is resolved first (again below: an explicit id is only checked then).
  const backupId = await resolveBackupId(transport, options.backupId, options.retry ?? DEFAULT_RETRY, options.signal);
  const lease = await takeLease(transport, {
    kind: 'restore',
    host: options.lease.host,
    backupIds: [backupId],
    ...(options.signal ? { signal: options.signal } : {}),
  });
  try {
    return await restoreUnleased({ ...options, backupId });
  } finally {
    await lease.release().catch(() => undefined);
  }
}

async function restoreUnleased(options: RestoreOptions): Promise<RestoreResult> {
  const started = performance.now();
  const transport = transportOf(options);
  const counter = { retries: 0 };
  const retry: RetryPolicy = { ...(options.retry ?? DEFAULT_RETRY), counter };
  const abort = new AbortController();
  const onOuterAbort = (): void => abort.abort(options.signal?.reason);
  options.signal?.addEventListener('abort', onOuterAbort, { once: true });
  const signal = abort.signal;

  const backupId = await resolveBackupId(transport, options.backupId, retry, signal);
  const log = options.logger?.child({ backupId });
  const manifest = await openManifest(transport, backupId, options.openDataKey, {
    ...(options.verifyManifest ? { verifyManifest: options.verifyManifest } : {}),
    retry,
    signal,
    ...(options.redactor ? { redactor: options.redactor } : {}),
  });
  const { header, body } = manifest;
  const index = indexChunks(header, body);
  let layout: TargetLayout;
  try {
    layout = await chooseLayout(options.target);
  } catch (e) {
    wipeScheme(manifest.scheme);
    throw e;
  }
  const bytesTotal = index.files.reduce((sum, file) => sum + file.size, 0);
  const progress = new ProgressTracker('restore', bytesTotal, index.files.length, options.onProgress);
  log?.info(
    {
      target: options.target,
      layout: layout.mode,
      files: index.files.length,
      bytes: bytesTotal,
      storedBytes: header.stats.storedBytes,
      createdAt: header.createdAt,
      signer: header.signer ?? null,
    },
    'restore: manifest verified',
  );

  const { done, committing } = await resumeOrStart(layout, backupId, manifest.digest, body.chunks.length, log);
  const journal = new RestoreJournal(layout.journal, backupId, manifest.digest, done);
  let transferred = 0;
  let resumedChunks = committing ? done.count : 0;
  try {
    if (!committing) {
      await ensureStaging(layout);
      await journal.write('fetching');
      const fetched = await fetchAll({
        options: { ...options, retry },
        transport,
        manifest,
        index,
        staging: layout.staging,
        journal,
        progress,
        signal,
        abort,
        log,
      });
      transferred = fetched.transferred;
      resumedChunks = fetched.resumedChunks;
      progress.phase = 'finishing';
      log?.info({ transferred, finishedFiles: fetched.finalized.size }, 'restore: every chunk verified and written; setting metadata');
      await finishTree(options, body, index.files, fetched.finalized, layout, index.pieces);
      await journal.write('committing');
    }
    progress.phase = 'finishing';
    log?.debug({ layout: layout.mode }, 'restore: committing');
    const marker = { ...options.markerExtra, backupId, manifestDigest: manifest.digest, target: options.target, bytes: bytesTotal, files: index.files.length };
    await commit(options, body, layout, marker);
  } catch (e) {
    abort.abort();
    if (errnoOf(e) === 'ENOSPC') {
      throw new BackupError(
        'space',
        `ENOSPC: no space left on the volume holding ${options.target} (the backup holds ${formatBytes(bytesTotal)}); nothing was marked restored, and a run with room continues from what is in place`,
        { target: options.target, errno: 'ENOSPC' },
        { cause: e },
      );
    }
    throw e;
  } finally {
    wipeScheme(manifest.scheme);
    options.signal?.removeEventListener('abort', onOuterAbort);
  }
  progress.phase = 'done';
  progress.maybeEmit(true);
  const seconds = (performance.now() - started) / 1000;
  log?.info(
    {
      target: options.target,
      bytes: bytesTotal,
      transferred,
      seconds: Number(seconds.toFixed(3)),
      rate: `${formatBytes(bytesTotal / Math.max(seconds, 1e-3))}/s`,
      resumedChunks,
      retries: counter.retries,
    },
    'restore: complete',
  );
  return {
    backupId,
    manifestDigest: manifest.digest,
    target: options.target,
    bytes: bytesTotal,
    files: index.files.length,
    transferredBytes: transferred,
    resumedChunks,
    retries: counter.retries,
    seconds,
  };
}

/**
 * Make the staged tree the target, give an existing target the backup's own
 * metadata, write the completion record (with completedAt), then remove the
 * journal. Safe to repeat after a crash at any point.
 */
async function commit(options: RestoreOptions, body: ManifestBody, layout: TargetLayout, marker: Record<string, unknown>): Promise<void> {
  await commitLayout(layout);
  const rootMeta = layout.mode === 'into' && !options.keepTargetMetadata;
  if (rootMeta) await applyRootMetadata(options, body, layout.target);
  if (options.markerPath) {
    await writeFileAtomic(options.markerPath, JSON.stringify({ ...marker, completedAt: new Date().toISOString() }) + '\n', { mode: 0o644 });
  }
  await removeJournal(layout.journal);
  // Removing the journal from the target itself changed its mtime: set it once more.
  if (rootMeta) await applyRootMetadata(options, body, layout.target);
}
