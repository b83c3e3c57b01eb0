/**
 * bosun backups: a chunked, compressed, encrypted and checksummed archive of a
 * directory tree in object storage (FORMAT.md), made by createBackup and read
 * back by restoreFromObjectStorage, which a restore phase calls as a library.
 */
export { createBackup, type BackupResult, type CreateBackupOptions, type ManifestSigner } from './create.js';
export {
  restoreFromObjectStorage,
  resolveBackupId,
  openManifest,
  trustSigners,
  type ManifestInfo,
  type RestoreOptions,
  type RestoreResult,
  type RestoreSource,
} from './restore/index.js';
export { BackupError, isBackupError, type BackupFailure } from './errors.js';
export { S3Transport, createS3Client, type S3ClientOptions, type S3Location } from './s3-transport.js';
export { TransportError, type ByteRange, type GetResult, type Transport, type TransportFailure } from './transport.js';
export { renderProgressLine, renderProgressPlain, ProgressPrinter, formatBytes, formatDuration, type Progress } from './progress.js';
export { FORMAT, DEFAULT_PACK_SIZE, type ManifestHeader, type BackupStats } from './format.js';
export { JOURNAL_NAME, STAGING_NAME } from './target.js';
