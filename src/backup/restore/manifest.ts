import type { Redactor } from '../../secrets/redact.js';
import { BackupError } from '../errors.js';
import {
  LATEST_KEY,
  LatestPointer,
  MAX_MANIFEST_BYTES,
  checkManifestSignature,
  isBackupId,
  keysOfBackup,
  manifestKey,
  openManifestBody,
  parseManifest,
  type ChunkScheme,
  type ManifestBody,
  type ManifestHeader,
} from '../format.js';
import { DEFAULT_RETRY, withRetry, type RetryPolicy } from '../retry.js';
import { TransportError, storeError, type Transport } from '../transport.js';
import type { ManifestInfo, RestoreOptions } from './options.js';

/** A manifest fetched, authenticated and opened, with the keys that open its chunks. */
export interface OpenedManifest {
  header: ManifestHeader;
  body: ManifestBody;
  digest: string;
  scheme: ChunkScheme;
}

/** A manifest policy that requires a valid signature by one of the given Ed25519 keys ("ed25519:…"). */
export function trustSigners(keys: readonly string[]): (info: ManifestInfo) => void {
  return ({ header, signed }) => {
    if (!signed || header.signer === undefined) throw new BackupError('key', `backup ${header.backupId} is not signed, and only signed backups are trusted`);
    if (!keys.includes(header.signer)) throw new BackupError('key', `backup ${header.backupId} is signed by ${header.signer}, which is not a trusted key`);
  };
}

/** A whole small object (manifest, pointer) into memory, with retries; refuses anything over `limit`. */
export async function getWhole(transport: Transport, key: string, limit: number, retry: RetryPolicy, signal?: AbortSignal): Promise<Buffer> {
  return withRetry(
    retry,
    async () => {
      const response = await transport.get(key, undefined, signal);
      if (response.objectSize !== undefined && response.objectSize > limit)
        throw new BackupError('format', `${transport.describe(key)} is ${response.objectSize} bytes, more than a manifest may be`);
      const parts: Buffer[] = [];
      let received = 0;
      for await (const piece of response.body) {
        received += piece.length;
        if (received > limit) throw new BackupError('format', `${transport.describe(key)} is larger than a manifest may be`);
        // A copy: the transport may reuse the piece's memory for the next one.
        parts.push(Buffer.from(piece));
      }
      if (response.objectSize !== undefined && received !== response.objectSize)
        throw new TransportError('transient', `${transport.describe(key)}: got ${received} of ${response.objectSize} bytes`);
      return Buffer.concat(parts, received);
    },
    signal ? { signal } : {},
  );
}

export async function resolveBackupId(transport: Transport, backupId: string, retry: RetryPolicy = DEFAULT_RETRY, signal?: AbortSignal): Promise<string> {
  if (backupId !== 'latest') {
    if (!isBackupId(backupId)) throw new BackupError('format', `"${backupId}" is not a backup id (expected e.g. 20250102T030405Z-1a2b3c4d, or "latest")`);
    return backupId;
  }
  let raw: Buffer;
  try {
    raw = await getWhole(transport, LATEST_KEY, 64 * 1024, retry, signal);
  } catch (e) {
    throw storeError(transport, LATEST_KEY, e);
  }
  try {
    return LatestPointer.parse(JSON.parse(raw.toString('utf8'))).backupId;
  } catch {
    throw new BackupError('format', `${transport.describe(LATEST_KEY)} is not a bosun latest pointer`);
  }
}

/**
 * Fetch, authenticate and open a manifest. Nothing on disk is touched, so a
 * wrong key or an untrusted signer fails before the target is looked at.
 */
export async function openManifest(
  transport: Transport,
  backupId: string,
  openDataKey: RestoreOptions['openDataKey'],
  opts: { verifyManifest?: RestoreOptions['verifyManifest']; retry?: RetryPolicy; signal?: AbortSignal; redactor?: Redactor } = {},
): Promise<OpenedManifest> {
  const key = manifestKey(backupId);
  let bytes: Buffer;
  try {
    bytes = await getWhole(transport, key, MAX_MANIFEST_BYTES, opts.retry ?? DEFAULT_RETRY, opts.signal);
  } catch (e) {
    throw storeError(transport, key, e);
  }
  const sealed = parseManifest(bytes);
  if (sealed.header.backupId !== backupId)
    throw new BackupError('integrity', `${transport.describe(key)} names backup ${sealed.header.backupId}: it was moved or replaced`);
  const signed = checkManifestSignature(sealed);
  await opts.verifyManifest?.({ header: sealed.header, signed });
  let dataKey: Buffer;
  try {
    dataKey = Buffer.from(await openDataKey(sealed.header.sealedDataKey, sealed.header));
  } catch (e) {
    throw new BackupError(
      'key',
      `cannot open the data key of backup ${backupId}: it is sealed to ${sealed.header.recipient}, and the key given is not that key (or the sealed key was altered)`,
      { backupId, recipient: sealed.header.recipient },
      { cause: e },
    );
  }
  opts.redactor?.add(dataKey);
  const keys = keysOfBackup(sealed.header, dataKey);
  dataKey.fill(0);
  opts.redactor?.add(keys.scheme.key);
  opts.redactor?.add(keys.manifest);
  if (keys.scheme.format === 'bosun-backup-v2') opts.redactor?.add(keys.scheme.idKey);
  try {
    const body = openManifestBody(sealed, keys.manifest);
    return { header: sealed.header, body, digest: sealed.digest, scheme: keys.scheme };
  } finally {
    keys.manifest.fill(0);
  }
}
