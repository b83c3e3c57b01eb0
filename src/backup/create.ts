import { createHash, randomBytes, type KeyObject } from 'node:crypto';
import { constants, type BigIntStats } from 'node:fs';
import { lstat, open, readdir, readlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../log.js';
import { seal, x25519PublicFromString, publicKeyString } from '../identity/seal.js';
import { BackupError, errnoOf } from './errors.js';
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
  packKey,
  type BackupStats,
  type ChunkRef,
  type Entry,
  type FileEntry,
  type LatestPointer,
  type ManifestHeader,
  type PackRef,
} from './format.js';
import { ProgressTracker, type Progress } from './progress.js';
import { DEFAULT_RETRY, withRetry, type RetryPolicy } from './retry.js';
import { ChunkWorkers, SlotRing, defaultWorkerCount } from './workers/pool.js';
import { storeError, type Transport } from './transport.js';

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

interface PendingFile {
  entry: FileEntry;
  abs: string;
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
  const packs = new PackWriter(options.transport, backupId, options.packSize ?? DEFAULT_PACK_SIZE, options.uploadConcurrency ?? 2, retry, log, options.signal, ring.slotSize);
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
    await publishManifest(options, header, encodeManifest({ header, body: { entries, chunks: placer.chunks, packs: packRefs } }, keys.manifest, signerOf(options.signer)), retry, log);
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
async function publishManifest(options: CreateBackupOptions, header: ManifestHeader, manifest: Buffer, retry: RetryPolicy, log: Logger | undefined): Promise<void> {
  await putRetrying(options.transport, manifestKey(header.backupId), manifest, retry, options.signal, log);
  if (options.updateLatest ?? true) {
    const pointer: LatestPointer = { format: FORMAT, backupId: header.backupId, createdAt: header.createdAt };
    await putRetrying(options.transport, LATEST_KEY, Buffer.from(JSON.stringify(pointer) + '\n'), retry, options.signal, log);
  }
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
    if (size !== file.entry.size) ctx.log?.warn({ path: file.entry.path, before: file.entry.size, read: size }, 'backup: file changed size while it was read; the backup has what was read');
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

/** Upload one object, retrying transient failures; a failure for good is a BackupError naming the object. */
async function putRetrying(t: Transport, key: string, body: Buffer, retry: RetryPolicy, signal: AbortSignal | undefined, log?: Logger): Promise<void> {
  try {
    await withRetry(retry, () => t.put(key, body, signal), {
      ...(signal ? { signal } : {}),
      onRetry: (e, n, ms) => log?.warn({ object: t.describe(key), failures: n, delayMs: ms, err: e instanceof Error ? e.message : String(e) }, 'backup: upload failed, retrying'),
    });
  } catch (e) {
    throw storeError(t, key, e);
  }
}

function sourceError(path: string, e: unknown): BackupError {
  return new BackupError('source', `cannot read ${path}: ${errnoOf(e) ?? String(e)}`, { path, errno: errnoOf(e) }, { cause: e });
}

/**
 * The tree in manifest order: depth first, names sorted, every directory before
 * what it holds. A second name of an inode already seen becomes a hard link.
 */
async function walk(root: string, log: Logger | undefined): Promise<{ entries: Entry[]; files: PendingFile[]; skipped: number }> {
  const entries: Entry[] = [];
  const files: PendingFile[] = [];
  const inodes = new Map<string, string>();
  let skipped = 0;
  const rootStat = await lstat(root, { bigint: true }).catch((e: unknown) => {
    throw sourceError(root, e);
  });
  if (!rootStat.isDirectory()) throw new BackupError('source', `${root} is not a directory`, { path: root });

  const visit = async (rel: string, abs: string, st: BigIntStats): Promise<void> => {
    const base = { path: rel, uid: Number(st.uid), gid: Number(st.gid), mtimeNs: st.mtimeNs.toString() };
    const mode = Number(st.mode) & 0o7777;
    if (st.isDirectory()) {
      entries.push({ type: 'dir', ...base, mode });
      let names: string[];
      try {
        names = await readdir(abs);
      } catch (e) {
        throw sourceError(abs, e);
      }
      names.sort();
      for (const name of names) {
        const childAbs = join(abs, name);
        let cst;
        try {
          cst = await lstat(childAbs, { bigint: true });
        } catch (e) {
          if (errnoOf(e) === 'ENOENT') continue; // gone since readdir: a live tree
          throw sourceError(childAbs, e);
        }
        await visit(rel === '.' ? name : `${rel}/${name}`, childAbs, cst);
      }
    } else if (st.isFile()) {
      if (st.nlink > 1n) {
        const id = `${st.dev}:${st.ino}`;
        const first = inodes.get(id);
        if (first !== undefined) {
          entries.push({ type: 'hardlink', path: rel, target: first });
          return;
        }
        inodes.set(id, rel);
      }
      const size = Number(st.size);
      const entry: FileEntry = { type: 'file', ...base, mode, size, sha256: '', sparse: st.blocks * 512n < st.size, chunks: [] };
      entries.push(entry);
      files.push({ entry, abs });
    } else if (st.isSymbolicLink()) {
      let target: string;
      try {
        target = await readlink(abs);
      } catch (e) {
        throw sourceError(abs, e);
      }
      entries.push({ type: 'symlink', ...base, target });
    } else {
      skipped++;
      log?.warn({ path: rel }, 'backup: skipping a socket, fifo or device node');
    }
  };
  await visit('.', root, rootStat);
  return { entries, files, skipped };
}

/** Read a file in chunkSize pieces, each into a slot of `ring` (where a worker will seal it); `each` owns the slot. */
async function readChunks(path: string, chunkSize: number, ring: SlotRing, each: (slot: number, plain: Buffer) => Promise<void>): Promise<void> {
  let fh: FileHandle;
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (e) {
    throw sourceError(path, e);
  }
  try {
    for (;;) {
      const slot = await ring.acquire();
      const buf = ring.view(slot, chunkSize);
      let n = 0;
      try {
        while (n < buf.length) {
          const { bytesRead } = await fh.read(buf, n, buf.length - n, null);
          if (bytesRead === 0) break;
          n += bytesRead;
        }
      } catch (e) {
        ring.release(slot);
        throw e;
      }
      if (n === 0) {
        ring.release(slot);
        break;
      }
      await each(slot, buf.subarray(0, n));
      if (n < chunkSize) break;
    }
  } catch (e) {
    if (e instanceof BackupError) throw e;
    throw sourceError(path, e);
  } finally {
    await fh.close();
  }
}

/**
 * Copies records into the current pack and uploads each full pack, a few at a
 * time. The packs are a fixed set of buffers (one filling, `concurrency`
 * uploading), reused once their upload is done: memory stays flat however
 * large the backup, and no 32 MiB buffer is left for the GC per pack.
 */
class PackWriter {
  readonly #free: Buffer[] = [];
  readonly #waiting: Array<(b: Buffer | undefined) => void> = [];
  #buffers = 0;
  #current: Buffer | undefined;
  #size = 0;
  #index = 0;
  /** add() calls run one after another: a pack's offsets are handed out in the order records land. */
  #queue: Promise<unknown> = Promise.resolve();
  readonly #refs: PackRef[] = [];
  readonly #inflight = new Set<Promise<void>>();
  #failure: Error | undefined;

  constructor(
    readonly transport: Transport,
    readonly backupId: string,
    readonly packSize: number,
    readonly concurrency: number,
    readonly retry: RetryPolicy,
    readonly log: Logger | undefined,
    readonly signal: AbortSignal | undefined,
    /** the largest record add() is given (a pack may pass packSize by less than one record) */
    readonly maxRecord: number,
  ) {}

  /** Copies `record` into the current pack; resolves with where it sits once it is there. */
  add(record: Buffer): Promise<{ pack: number; offset: number }> {
    const run = this.#queue.then(() => this.#add(record));
    this.#queue = run.catch(() => undefined);
    return run;
  }

  async #add(record: Buffer): Promise<{ pack: number; offset: number }> {
    if (this.#failure !== undefined) throw this.#failure;
    if (record.length > this.maxRecord) throw new Error(`a record of ${record.length} bytes is larger than a pack slot of ${this.maxRecord}`);
    this.#current ??= await this.#buffer();
    // A failed upload wakes the waiters with no buffer.
    if (this.#failure !== undefined || this.#current === undefined) throw this.#failure ?? new Error('no pack buffer');
    const at = { pack: this.#index, offset: this.#size };
    record.copy(this.#current, this.#size);
    this.#size += record.length;
    if (this.#size >= this.packSize) await this.#flush();
    return at;
  }

  /** A free pack buffer: a new one while fewer than concurrency + 1 exist, else the next one an upload gives back. */
  #buffer(): Promise<Buffer | undefined> {
    const b = this.#free.pop();
    if (b) return Promise.resolve(b);
    if (this.#buffers < this.concurrency + 1) {
      this.#buffers++;
      return Promise.resolve(Buffer.allocUnsafe(this.packSize + this.maxRecord));
    }
    return new Promise((resolve) => this.#waiting.push(resolve));
  }

  #giveBack(b: Buffer): void {
    const next = this.#waiting.shift();
    if (next) next(b);
    else this.#free.push(b);
  }

  async #flush(): Promise<void> {
    const buf = this.#current;
    if (buf === undefined || this.#size === 0) return;
    const body = buf.subarray(0, this.#size);
    const key = packKey(this.backupId, this.#index);
    this.#refs.push({ key, size: body.length });
    this.#current = undefined;
    this.#size = 0;
    this.#index++;
    while (this.#inflight.size >= this.concurrency) await Promise.race(this.#inflight);
    if (this.#failure !== undefined) throw this.#failure;
    const p: Promise<void> = putRetrying(this.transport, key, body, this.retry, this.signal, this.log)
      .then(
        // Only a finished upload gives its buffer back: a failed one may still be read by the transport.
        () => this.#giveBack(buf),
        (e: unknown) => {
          this.#failure ??= e instanceof Error ? e : new Error(String(e));
          for (const w of this.#waiting.splice(0)) w(undefined);
        },
      )
      .finally(() => this.#inflight.delete(p));
    this.#inflight.add(p);
  }

  async finish(): Promise<PackRef[]> {
    await this.#queue;
    await this.#flush();
    await Promise.all(this.#inflight);
    if (this.#failure !== undefined) throw this.#failure;
    return this.#refs;
  }

  async abandon(): Promise<void> {
    await Promise.allSettled(this.#inflight);
  }
}
