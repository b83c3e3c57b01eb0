/**
 * Restoring a backup from object storage (FORMAT.md): the public API of the
 * restore, as importers use it. The work is in the files beside this one.
 */
export { restoreFromObjectStorage, resolveBackupId, openManifest, trustSigners, isBackupError, type ManifestInfo, type RestoreOptions, type RestoreResult, type RestoreSource } from './run.js';
