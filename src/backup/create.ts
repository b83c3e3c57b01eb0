import { createHash, type KeyObject } from 'node:crypto';
import type { Logger } from '../log.js';
import { x25519PublicFromString, publicKeyString } from '../identity/seal.js';
import {
  DEFAULT_PACK_SIZE,
  FORMAT,
  FORMAT_V2,
  LATEST_KEY,
  RECORD_OVERHEAD,
  deriveManifestKey,
  deriveSetKeys,
  encodeManifest,
  manifestKey,
  newBackupId,
  sharedPackKey,
  wipeScheme,
  type BackupStats,
  type ChunkRef,
  type ChunkScheme,
  type Chunker as ChunkerSpec,
  type Entry,
  type LatestPointer,
  type ManifestHeader,
  type ManifestHeaderV2,
  type PackRef,
} from './format.js';
import type { KnownChunk, KnownChunks, StoredPack } from './known-chunks.js';
import { newSetKey, type SetKey } from './set-key.js';
import { ProgressTracker, type Progress } from './progress.js';
import { Throttle } from './throttle.js';
import { DEFAULT_RETRY, type RetryPolicy } from './retry.js';
import { ChunkWorkers, SlotRing, defaultWorkerCount } from './workers/pool.js';
import { type Transport } from './transport.js';

import { PackWriter, putRetrying } from './pack-writer.js';
import { readBuffer, readPieces, walk, type PendingFile } from './source-tree.js';
import { DEFAULT_CHUNKER, cutterFor, longestChunk, type Cutter } from './cutter.js';

export interface ManifestSigner {
  /** "ed25519:<base64url>", as HostIdentity.signingKey */
  signingKey: string;
  sign(data: Uint8Array): Buffer;
}

export interface CreateBackupOptions {
  /** directory to back up; its own mode, owner and mtime are kept too */
  source: string;
  transport: Transport;
  /** X25519 public key ("x25519:…") the set key is sealed to */
  recipient: string | KeyObject;
  /**
   * the set key to write under, sealed to `recipient` (set-key.ts); without one a fresh key is made and
   * nothing already in the store is reused
   */
  setKey?: SetKey;
  /** chunks the store holds under setKey (an earlier backup's, a killed run's): referenced, not uploaded again */
  known?: KnownChunks;
  /** called once a pack is stored, with the chunks in it (a killed run's successor reuses them: job.ts) */
  onPackStored?: (pack: StoredPack) => Promise<void>;
  /** signs the manifest (the creating host's Ed25519 identity); see FORMAT.md */
  signer?: ManifestSigner;
  /** label of the creating host, kept in the manifest header */
  host?: string;
  /** how the data was made consistent, kept in the header */
  consistency?: ManifestHeaderV2['consistency'];
  /** how files are cut into chunks (default: content-defined, DEFAULT_CHUNKER) */
  chunker?: ChunkerSpec;
  /** fixed slices of this size instead (tests use it to know where chunks lie) */
  chunkSize?: number;
  packSize?: number;
  /** zstd level; 0 stores chunks uncompressed */
  compressionLevel?: number;
  uploadConcurrency?: number;
  /** bytes per second the packs are uploaded at, at most (the spec's backup.bandwidthLimitMiBps) */
  bandwidthLimit?: number;
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
 * chunks, name each chunk by its keyed digest; a chunk the store already holds
 * (`known`) or this backup already placed is referenced, any other is
 * compressed, encrypted and appended to a pack, each pack uploaded once full;
 * then upload the manifest, and only then move latest.json. A backup whose
 * manifest is missing was never finished and is never restored.
 */
export async function createBackup(options: CreateBackupOptions): Promise<BackupResult> {
  const started = performance.now();
  const chunker: ChunkerSpec = options.chunker ?? (options.chunkSize !== undefined ? { kind: 'fixed', size: options.chunkSize } : DEFAULT_CHUNKER);
  const retry = options.retry ?? DEFAULT_RETRY;
  const backupId = options.backupId ?? newBackupId();
  const recipient = typeof options.recipient === 'string' ? x25519PublicFromString(options.recipient) : options.recipient;
  const log = options.logger?.child({ backupId });

  const { entries, files, skipped } = await walk(options.source, log);
  const stats = entryStats(entries, skipped);
  const plannedBytes = files.reduce((n, f) => n + f.entry.size, 0);
  log?.info({ files: stats.files, bytes: plannedBytes }, 'backup: source walked');

  const setKey = options.setKey ?? newSetKey(recipient);
  const known: KnownChunks = options.setKey ? (options.known ?? new Map<string, KnownChunk>()) : new Map<string, KnownChunk>();
  const keys = deriveSetKeys(setKey.key);
  const scheme: ChunkScheme = { format: FORMAT_V2, key: keys.chunk, idKey: keys.chunkId };
  const cutter = cutterFor(chunker, keys.gear);
  keys.gear.fill(0);

  const progress = new ProgressTracker('backup', plannedBytes, stats.files, options.onProgress);
  progress.phase = 'transferring';
  // Hashing, compression and encryption run on worker threads; the main thread
  // reads files in order (and hashes each whole file) and assembles packs.
  const workerCount = options.workers ?? defaultWorkerCount();
  const ring = new SlotRing(4 * workerCount + 1, longestChunk(chunker) + RECORD_OVERHEAD + 64);
  const workers = new ChunkWorkers(workerCount, { scheme, slots: ring.sab, slotSize: ring.slotSize });
  // A record is at most a slot: that bounds how far a pack can pass packSize.
  const packs = new PackWriter({
    transport: options.transport,
    keyOf: (pack) => sharedPackKey(backupId, pack),
    packSize: options.packSize ?? DEFAULT_PACK_SIZE,
    concurrency: options.uploadConcurrency ?? 2,
    retry,
    log,
    signal: options.signal,
    maxRecord: ring.slotSize,
    ...(options.bandwidthLimit !== undefined ? { throttle: new Throttle(options.bandwidthLimit) } : {}),
  });
  const placer = new ChunkPlacer(workers, ring, packs, options.compressionLevel ?? 1, known, options.onPackStored);
  const filesDone: Array<Promise<void>> = [];

  try {
    await storeFiles(files, {
      cutter,
      buffer: readBuffer(longestChunk(chunker)),
      ring,
      placer,
      maxInflight: 4 * workerCount,
      progress,
      stats,
      filesDone,
      log,
      signal: options.signal,
    });
    await Promise.all(filesDone);
    const { chunks, packs: packRefs } = placer.finish(await packs.finish());
    Object.assign(stats, {
      packs: packRefs.length,
      chunks: chunks.length,
      storedBytes: packRefs.reduce((n, pack) => n + pack.size, 0),
      reusedChunks: placer.reusedChunks,
      reusedBytes: placer.reusedBytes,
      uploadedBytes: packs.uploadedBytes,
    });

    progress.phase = 'finishing';
    const header = headerOf(options, { backupId, recipient, setKey, chunker, packs: packRefs, stats });
    const manifestBytes = deriveManifestKey(setKey.key, backupId);
    try {
      const manifest = encodeManifest({ header, body: { entries, chunks, packs: packRefs } }, manifestBytes, signerOf(options.signer));
      await publishManifest(options, header, manifest, retry, log);
    } finally {
      manifestBytes.fill(0);
    }
  } catch (e) {
    await Promise.allSettled(filesDone);
    await packs.abandon();
    throw e;
  } finally {
    await workers.close();
    wipeScheme(scheme);
    if (!options.setKey) setKey.key.fill(0);
  }
  progress.phase = 'done';
  progress.maybeEmit(true);
  const seconds = (performance.now() - started) / 1000;
  log?.info({ ...stats, seconds: Number(seconds.toFixed(3)), manifest: options.transport.describe(manifestKey(backupId)) }, 'backup: complete');
  return { backupId, manifestKey: manifestKey(backupId), stats, seconds };
}

/** The readable header of a new backup (FORMAT.md, "Manifest"). */
function headerOf(
  options: CreateBackupOptions,
  made: { backupId: string; recipient: KeyObject; setKey: SetKey; chunker: ChunkerSpec; packs: PackRef[]; stats: BackupStats },
): ManifestHeaderV2 {
  return {
    format: FORMAT_V2,
    backupId: made.backupId,
    createdAt: new Date().toISOString(),
    ...(options.host !== undefined ? { host: options.host } : {}),
    recipient: publicKeyString('x25519', made.recipient),
    sealedDataKey: made.setKey.sealed,
    keyId: made.setKey.keyId,
    ...(options.signer ? { signer: options.signer.signingKey } : {}),
    chunker: made.chunker,
    cipher: 'aes-256-gcm',
    compression: 'zstd',
    hash: 'hmac-sha256',
    ...(options.consistency ? { consistency: options.consistency } : {}),
    packs: made.packs,
    stats: made.stats,
  };
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
 * The chunks of one backup: each named by its digest on a worker; one the
 * store holds already (known) or this backup placed already is referenced,
 * any other is sealed on a worker and placed in a new pack. Pack indexes are
 * settled at the end (finish), when it is known which packs the backup uses.
 */
class ChunkPlacer {
  readonly #chunks: ChunkRef[] = [];
  /** per chunk: the key of its pack (a new pack's is known once it is started) */
  readonly #packOf: Array<string | number> = [];
  readonly #byDigest = new Map<string, number>();
  /** sizes of the reused packs, by key */
  readonly #reusedPacks = new Map<string, number>();
  reusedChunks = 0;
  reusedBytes = 0;

  constructor(
    private readonly workers: ChunkWorkers,
    private readonly ring: SlotRing,
    private readonly packs: PackWriter,
    private readonly level: number,
    private readonly known: KnownChunks,
    private readonly onPackStored: CreateBackupOptions['onPackStored'],
  ) {
    if (onPackStored) packs.onStored = (stored) => onPackStored(this.#storedPack(stored));
  }

  /** Place the plaintext in `slot` (releasing it): the chunk's index, or minus its length for a run of zeros. */
  async place(slot: number, plainLength: number): Promise<number> {
    try {
      const named = await this.workers.run({ op: 'digest', slot, length: plainLength });
      if (!named.ok || named.op !== 'digest') throw new Error('chunk worker failed to name a chunk');
      if (named.zero) return -plainLength;
      const placed = this.#byDigest.get(named.digest);
      if (placed !== undefined) return placed;
      const stored = this.known.get(named.digest);
      if (stored !== undefined && stored.plainLength === plainLength) return this.#reuse(named.digest, stored);
      const sealed = await this.workers.run({ op: 'seal', slot, length: plainLength, level: this.level, digest: named.digest });
      if (!sealed.ok || sealed.op !== 'seal') throw new Error('chunk worker failed to seal a chunk');
      const index = this.#add([0, 0, sealed.recordLength, plainLength, sealed.codec === 1 ? 1 : 0, named.digest], -1);
      // Copied from the slot straight into the pack's buffer: the slot is held until then.
      const at = await this.packs.add(this.ring.view(slot, sealed.recordLength), index);
      this.#chunks[index]![1] = at.offset;
      this.#packOf[index] = at.pack;
      return index;
    } finally {
      this.ring.release(slot);
    }
  }

  #add(ref: ChunkRef, pack: string | number): number {
    const index = this.#chunks.length;
    this.#chunks.push(ref);
    this.#packOf.push(pack);
    this.#byDigest.set(ref[5], index);
    return index;
  }

  #reuse(digest: string, stored: KnownChunk): number {
    this.reusedChunks += 1;
    this.reusedBytes += stored.plainLength;
    this.#reusedPacks.set(stored.pack.key, stored.pack.size);
    return this.#add([0, stored.offset, stored.storedLength, stored.plainLength, stored.codec, digest], stored.pack.key);
  }

  #storedPack(stored: { key: string; size: number; tags: number[] }): StoredPack {
    return {
      key: stored.key,
      size: stored.size,
      chunks: stored.tags.map((index) => this.#chunks[index]!).map(([, offset, length, plain, codec, digest]) => [digest, offset, length, plain, codec]),
    };
  }

  /** The chunk table and the packs it points into: the reused packs first, in first-use order, then the new ones. */
  finish(written: readonly PackRef[]): { chunks: ChunkRef[]; packs: PackRef[] } {
    const packs: PackRef[] = [];
    const indexOf = new Map<string, number>();
    const use = (key: string, size: number): number => {
      let at = indexOf.get(key);
      if (at === undefined) {
        at = packs.push({ key, size }) - 1;
        indexOf.set(key, at);
      }
      return at;
    };
    this.#chunks.forEach((ref, index) => {
      const pack = this.#packOf[index]!;
      ref[0] = typeof pack === 'string' ? use(pack, this.#reusedPacks.get(pack)!) : use(written[pack]!.key, written[pack]!.size);
    });
    return { chunks: this.#chunks, packs };
  }
}

interface StoreContext {
  cutter: Cutter;
  buffer: Buffer;
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
    await readPieces(file.abs, ctx.cutter, ctx.buffer, ctx.ring, async (slot, plain) => {
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
