/**
 * Restoring a backup from object storage (FORMAT.md): the public API of the
 * restore, as importers use it. The work is in the files beside this one.
 */
export { restoreFromObjectStorage } from './run.js';
export { resolveBackupId, openManifest, trustSigners } from './manifest.js';
export { isBackupError } from '../errors.js';
export type { ManifestInfo, RestoreOptions, RestoreResult, RestoreSource } from './options.js';
