import type { S3Client } from '@aws-sdk/client-s3';
import type { Logger } from '../../log.js';
import type { Redactor } from '../../secrets/redact.js';
import type { ManifestHeader } from '../format.js';
import type { Progress } from '../progress.js';
import type { RetryPolicy } from '../retry.js';
import { S3Transport } from '../s3-transport.js';
import type { Transport } from '../transport.js';

/** What a manifest policy sees before any data is fetched. */
export interface ManifestInfo {
  header: ManifestHeader;
  /** the signature verified against header.signer (false: the manifest is unsigned) */
  signed: boolean;
}

export type RestoreSource = { transport: Transport } | { client: S3Client; bucket: string; prefix?: string };

export type RestoreOptions = RestoreSource & {
  /** a backup id, or "latest" */
  backupId: string;
  /** the directory to restore into: missing, or empty (see target.ts) */
  target: string;
  /** open the sealed data key of the manifest (e.g. with the backup key pair); throw if it cannot */
  openDataKey: (sealedDataKey: string, header: ManifestHeader) => Buffer | Promise<Buffer>;
  /** accept or refuse a manifest (throw to refuse), e.g. trustSigners([...]); default: accept signed and unsigned */
  verifyManifest?: (info: ManifestInfo) => void | Promise<void>;
  logger?: Logger;
  /** the data key is registered here, so no log line or error can carry it */
  redactor?: Redactor;
  onProgress?: (progress: Progress) => void;
  /** bytes per second over all downloads */
  bandwidthLimit?: number;
  /** ranged GETs in flight (default 8) */
  concurrency?: number;
  /** bytes per ranged GET at most (default 16 MiB) */
  rangeSize?: number;
  retry?: RetryPolicy;
  /** set owner and group from the backup (default: when running as root) */
  preserveOwner?: boolean;
  /** write a JSON completion record here after the commit (before the journal goes, so a crash between the two only repeats the commit) */
  markerPath?: string;
  /** more fields for the completion record (e.g. where the backup came from) */
  markerExtra?: Record<string, unknown>;
  /**
   * leave the target directory's own owner, mode and mtime as they are instead
   * of taking the backup's (a data volume's mount point, whose owner and mode
   * the spec sets); only matters when the target already exists
   */
  keepTargetMetadata?: boolean;
  /** chunk-sized buffers shared by all downloads (default: concurrency): the main bound on memory */
  slots?: number;
  /**
   * also read every restored file back and check its SHA-256 against the
   * manifest (default false; like restic's restore --verify): proves what is on
   * disk end to end, at the cost of reading and hashing every byte a second
   * time. Every chunk is verified (GCM tag, length, SHA-256) before it is
   * written either way.
   */
  verifyFiles?: boolean;
  /** worker threads that decrypt, decompress and verify chunks (default: cores - 1, 1 to 4) */
  workers?: number;
  /** how often the journal is checkpointed (default 2000 ms) */
  checkpointIntervalMs?: number;
  /**
   * start writing the restored data to disk after this many bytes are written,
   * while later chunks download (syncfs of the staging tree in the background,
   * one at a time); the sync before the commit then finds little left.
   * Default 256 MiB; 0: only the final sync.
   */
  flushAheadBytes?: number;
  /**
   * create every file (empty) in the background while the first chunks
   * download, two directories at a time, instead of each on its first write
   * (default true)
   */
  precreateFiles?: boolean;
  signal?: AbortSignal;
  /** hold a restore lease in the set while restoring (leases.ts), so a prune keeps this backup; object storage only */
  lease?: { host: string };
};

export interface RestoreResult {
  backupId: string;
  manifestDigest: string;
  target: string;
  /** logical bytes of all files */
  bytes: number;
  files: number;
  /** bytes fetched from the store by this run */
  transferredBytes: number;
  /** chunks an interrupted earlier run had restored (and that read back intact) */
  resumedChunks: number;
  /** failed requests to the store that were retried (connection resets, 5xx, throttling, cut streams) */
  retries: number;
  seconds: number;
}

/** The store a restore reads from: the transport given, or one over the S3 client given. */
export function transportOf(source: RestoreSource): Transport {
  return 'transport' in source
    ? source.transport
    : new S3Transport({ client: source.client, bucket: source.bucket, ...(source.prefix !== undefined ? { prefix: source.prefix } : {}) });
}
