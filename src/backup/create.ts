import { createHash, randomBytes, type KeyObject } from 'node:crypto';
import type { Logger } from '../log.js';
import { seal, x25519PublicFromString, publicKeyString } from '../identity/seal.js';
import {
  DEFAULT_CHUNK_SIZE,
  DEFAULT_PACK_SIZE,
  FORMAT,
  LATEST_KEY,
  RECORD_OVERHEAD,
  deriveKeys,
  encodeManifest,
  manifestKey,
  newBackupId,
  type BackupStats,
  type ChunkRef,
  type Entry,
  type LatestPointer,
  type ManifestHeader,
  type PackRef,
} from './format.js';
import { ProgressTracker, type Progress } from './progress.js';
import { DEFAULT_RETRY, type RetryPolicy } from './retry.js';
import { ChunkWorkers, SlotRing, defaultWorkerCount } from './workers/pool.js';
import { type Transport } from './transport.js';

import { PackWriter, putRetrying } from './pack-writer.js';
import { readChunks, walk, type PendingFile } from './source-tree.js';

export interface ManifestSigner {
  /** "ed25519:<base64url>", as HostIdentity.signingKey */
  signingKey: string;
  sign(data: Uint8Array): Buffer;
}

export interface CreateBackupOptions {
  /** directory to back up; its own mode, owner and mtime are kept too */
  source: string;
  transport: Transport;
  /** X25519 public key ("x25519:…") the backup's data key is sealed to */
  recipient: string | KeyObject;
  /** signs the manifest (the creating host's Ed25519 identity); see FORMAT.md */
  signer?: ManifestSigner;
  /** label of the creating host, kept in the manifest header */
  host?: string;
  chunkSize?: number;
  packSize?: number;
  /** zstd level; 0 stores chunks uncompressed */
  compressionLevel?: number;
  uploadConcurrency?: number;
  /** point latest.json at this backup once it is complete (default true) */
  updateLatest?: boolean;
  retry?: RetryPolicy;
  logger?: Logger;
  onProgress?: (p: Progress) => void;
  signal?: AbortSignal;
  /** worker threads that hash, compress and encrypt chunks (default: cores - 1, 1 to 4) */
  workers?: number;
  /** for tests: a fixed id */
  backupId?: string;
}

export interface BackupResult {
  backupId: string;
  manifestKey: string;
  stats: BackupStats;
  seconds: number;
}

/**
 * Make a backup of `source`: walk the tree, cut each regular file into
 * fixed-size chunks, compress and encrypt each chunk, append the records to
 * packs of about packSize and upload each pack once full; then upload the
 * manifest, and only then move latest.json. A backup whose manifest is missing
 * was never finished and is never restored.
 */
export async function createBackup(options: CreateBackupOptions): Promise<BackupResult> {
  const started = performance.now();
  const chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE;
  const retry = options.retry ?? DEFAULT_RETRY;
  const backupId = options.backupId ?? newBackupId();
  const recipient = typeof options.recipient === 'string' ? x25519PublicFromString(options.recipient) : options.recipient;
  const log = options.logger?.child({ backupId });

  const { entries, files, skipped } = await walk(options.source, log);
  const stats = entryStats(entries, skipped);
  const plannedBytes = files.reduce((n, f) => n + f.entry.size, 0);
  log?.info({ files: stats.files, bytes: plannedBytes }, 'backup: source walked');

  const dataKey = randomBytes(32);
  const keys = deriveKeys(dataKey, backupId);
  const sealedDataKey = seal(recipient, dataKey);
  dataKey.fill(0);

  const progress = new ProgressTracker('backup', plannedBytes, stats.files, options.onProgress);
  progress.phase = 'transferring';
  // Hashing, compression and encryption run on worker threads; the main thread
  // reads files in order (and hashes each whole file) and assembles packs.
  const workerCount = options.workers ?? defaultWorkerCount();
  const ring = new SlotRing(4 * workerCount + 1, chunkSize + RECORD_OVERHEAD + 64);
  const workers = new ChunkWorkers(workerCount, { key: keys.chunk, backupId, slots: ring.sab, slotSize: ring.slotSize });
  // A record is at most a slot: that bounds how far a pack can pass packSize.
  const packs = new PackWriter(
    options.transport,
    backupId,
    options.packSize ?? DEFAULT_PACK_SIZE,
    options.uploadConcurrency ?? 2,
    retry,
    log,
    options.signal,
    ring.slotSize,
  );
  const placer = new ChunkPlacer(workers, ring, packs, options.compressionLevel ?? 1);
  const filesDone: Array<Promise<void>> = [];

  try {
    await storeFiles(files, { chunkSize, ring, placer, maxInflight: 4 * workerCount, progress, stats, filesDone, log, signal: options.signal });
    await Promise.all(filesDone);
    const packRefs: PackRef[] = await packs.finish();
    stats.packs = packRefs.length;
    stats.chunks = placer.chunks.length;
    stats.storedBytes = packRefs.reduce((n, pack) => n + pack.size, 0);

    progress.phase = 'finishing';
    const header: ManifestHeader = {
      format: FORMAT,
      backupId,
      createdAt: new Date().toISOString(),
      ...(options.host !== undefined ? { host: options.host } : {}),
      recipient: publicKeyString('x25519', recipient),
      sealedDataKey,
      ...(options.signer ? { signer: options.signer.signingKey } : {}),
      chunkSize,
      cipher: 'aes-256-gcm',
      compression: 'zstd',
      hash: 'sha256',
      stats,
    };
    await publishManifest(
      options,
      header,
      encodeManifest({ header, body: { entries, chunks: placer.chunks, packs: packRefs } }, keys.manifest, signerOf(options.signer)),
      retry,
      log,
    );
  } catch (e) {
    await Promise.allSettled(filesDone);
    await packs.abandon();
    throw e;
  } finally {
    await workers.close();
    keys.chunk.fill(0);
    keys.manifest.fill(0);
  }
  progress.phase = 'done';
  progress.maybeEmit(true);
  const seconds = (performance.now() - started) / 1000;
  log?.info({ ...stats, seconds: Number(seconds.toFixed(3)), manifest: options.transport.describe(manifestKey(backupId)) }, 'backup: complete');
  return { backupId, manifestKey: manifestKey(backupId), stats, seconds };
}

function entryStats(entries: readonly Entry[], skipped: number): BackupStats {
  const stats: BackupStats = { files: 0, dirs: 0, symlinks: 0, hardlinks: 0, bytes: 0, storedBytes: 0, chunks: 0, packs: 0, skipped };
  for (const entry of entries) {
    if (entry.type === 'dir') stats.dirs++;
    else if (entry.type === 'symlink') stats.symlinks++;
    else if (entry.type === 'hardlink') stats.hardlinks++;
    else stats.files++;
  }
  return stats;
}

function signerOf(signer: ManifestSigner | undefined): ((data: Buffer) => Buffer) | undefined {
  return signer ? (data) => signer.sign(data) : undefined;
}

/** The manifest, and only then latest.json: a backup without its manifest was never finished and is never restored. */
async function publishManifest(
  options: CreateBackupOptions,
  header: ManifestHeader,
  manifest: Buffer,
  retry: RetryPolicy,
  log: Logger | undefined,
): Promise<void> {
  await putRetrying(options.transport, manifestKey(header.backupId), manifest, retry, options.signal, log);
  if (options.updateLatest ?? true) await publishLatest(options.transport, header, retry, options.signal, log);
}

/** Points latest.json at a complete backup (its manifest already stored). */
export async function publishLatest(
  transport: Transport,
  header: Pick<ManifestHeader, 'backupId' | 'createdAt'>,
  retry: RetryPolicy,
  signal?: AbortSignal,
  log?: Logger,
): Promise<void> {
  const pointer: LatestPointer = { format: FORMAT, backupId: header.backupId, createdAt: header.createdAt };
  await putRetrying(transport, LATEST_KEY, Buffer.from(JSON.stringify(pointer) + '\n'), retry, signal, log);
}

/**
 * The chunks of one backup: each sealed on a worker and placed in a pack once,
 * a repeat of a chunk already placed (same SHA-256) referenced instead.
 */
class ChunkPlacer {
  readonly chunks: ChunkRef[] = [];
  readonly #bySha = new Map<string, number>();

  constructor(
    private readonly workers: ChunkWorkers,
    private readonly ring: SlotRing,
    private readonly packs: PackWriter,
    private readonly level: number,
  ) {}

  /** Seal the plaintext in `slot` (releasing it) and place the record in a pack: the chunk's index, or -1 for zeros. */
  async place(slot: number, plainLength: number): Promise<number> {
    try {
      const sealed = await this.workers.run({ op: 'seal', slot, length: plainLength, level: this.level });
      if (!sealed.ok || sealed.op !== 'seal') throw new Error('chunk worker failed to seal a chunk');
      if (sealed.zero) return -1;
      const known = this.#bySha.get(sealed.sha256);
      if (known !== undefined) return known;
      const index = this.chunks.length;
      this.#bySha.set(sealed.sha256, index);
      const ref: ChunkRef = [0, 0, sealed.recordLength, plainLength, sealed.codec === 1 ? 1 : 0, sealed.sha256];
      this.chunks.push(ref);
      // Copied from the slot straight into the pack's buffer: the slot is held until then.
      const at = await this.packs.add(this.ring.view(slot, sealed.recordLength));
      ref[0] = at.pack;
      ref[1] = at.offset;
      return index;
    } finally {
      this.ring.release(slot);
    }
  }
}

interface StoreContext {
  chunkSize: number;
  ring: SlotRing;
  placer: ChunkPlacer;
  /** chunks being sealed and placed at once, at most */
  maxInflight: number;
  progress: ProgressTracker;
  stats: BackupStats;
  /** one promise per file, settled when all its chunks are placed and its entry has their indexes */
  filesDone: Array<Promise<void>>;
  log: Logger | undefined;
  signal: AbortSignal | undefined;
}

/** Read every file in order, chunk by chunk, while up to maxInflight chunks are sealed and placed behind the reads. */
async function storeFiles(files: readonly PendingFile[], ctx: StoreContext): Promise<void> {
  const inflight = new Set<Promise<void>>();
  for (const file of files) {
    ctx.signal?.throwIfAborted();
    const fileHash = createHash('sha256');
    const refs: Array<Promise<number>> = [];
    let size = 0;
    await readChunks(file.abs, ctx.chunkSize, ctx.ring, async (slot, plain) => {
      size += plain.length;
      fileHash.update(plain);
      ctx.progress.add(plain.length);
      const placed = ctx.placer.place(slot, plain.length);
      const tracked: Promise<void> = placed.then(
        () => undefined,
        () => undefined,
      );
      inflight.add(tracked);
      void tracked.finally(() => inflight.delete(tracked));
      refs.push(placed);
      while (inflight.size >= ctx.maxInflight) await Promise.race(inflight);
    });
    if (size !== file.entry.size)
      ctx.log?.warn(
        { path: file.entry.path, before: file.entry.size, read: size },
        'backup: file changed size while it was read; the backup has what was read',
      );
    file.entry.size = size;
    file.entry.sha256 = fileHash.digest('hex');
    ctx.stats.bytes += size;
    const entry = file.entry;
    const done = Promise.all(refs).then((indexes) => {
      entry.chunks = indexes;
    });
    done.catch(() => undefined);
    ctx.filesDone.push(done);
  }
}
