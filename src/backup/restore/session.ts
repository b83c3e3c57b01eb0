import { join } from 'node:path';
import type { Logger } from '../../log.js';
import { BackupError } from '../errors.js';
import { RECORD_OVERHEAD, maxChunkLength, type ChunkRef, type ChunkScheme, type FileEntry, type ManifestBody } from '../format.js';
import type { DoneSet } from '../journal.js';
import { planRanges, type RestoreIndex, type WorkRange } from '../plan.js';
import type { ProgressTracker } from '../progress.js';
import { DEFAULT_RETRY } from '../retry.js';
import { Semaphore } from '../semaphore.js';
import { HandlePool } from '../target.js';
import { Throttle } from '../throttle.js';
import type { Transport } from '../transport.js';
import { ChunkWorkers, DigestChecker, SlotRing, defaultWorkerCount } from '../workers/pool.js';
import { Downloads } from './downloads.js';
import { finishFile } from './finish.js';
import type { OpenedManifest } from './manifest.js';
import type { RestoreOptions } from './options.js';
import { recheckDone, type RestoreJournal } from './resume.js';
import { FlushAhead, PRECREATORS, createDirsAndSymlinks, precreate } from './staging.js';
import { WrittenTracker, type FileTracker } from './tracker.js';

export interface SessionContext {
  /** with `retry` set: the policy that counts the restore's retries */
  options: RestoreOptions;
  transport: Transport;
  manifest: OpenedManifest;
  index: RestoreIndex;
  /** where the tree is written (the layout's staging directory) */
  staging: string;
  /** the restore's journal; its done set is what is written so far */
  journal: RestoreJournal;
  progress: ProgressTracker;
  signal: AbortSignal;
  abort: AbortController;
  log: Logger | undefined;
}

export interface FetchResult {
  /** bytes fetched from the store */
  transferred: number;
  /** files finished during the fetch (the rest are finished by finishTree) */
  finalized: Set<number>;
  /** chunks an interrupted run had written that read back intact */
  resumedChunks: number;
}

/** Every missing chunk fetched, verified and written; every file's digest checked on disk. */
export async function fetchAll(context: SessionContext): Promise<FetchResult> {
  // Directories and symlinks first; files appear on their first write (or are created ahead, see RestoreSession).
  await createDirsAndSymlinks(context.manifest.body, context.staging);
  return new RestoreSession(context).fetch();
}

/**
 * The fetch of one restore: the state its steps share (open files, the done
 * set, the file tracker, the slot ring and chunk workers, checkpoints, the
 * first failure) and a method per step. Constructing it starts what runs
 * beside the downloads: files created ahead, the digest worker (verifyFiles),
 * the chunk workers.
 */
export class RestoreSession {
  readonly #options: RestoreOptions;
  readonly #transport: Transport;
  readonly #body: ManifestBody;
  readonly #index: RestoreIndex;
  readonly #staging: string;
  readonly #journal: RestoreJournal;
  readonly #done: DoneSet;
  readonly #progress: ProgressTracker;
  readonly #abort: AbortController;
  readonly #log: Logger | undefined;
  /** the longest piece of any file: what a slot holds */
  readonly #maxPiece: number;
  readonly #scheme: ChunkScheme;
  readonly #handles = new HandlePool();
  #failure: Error | undefined;
  /** files finished (size, zeros, owner, mode, mtime) as soon as their digest verified on disk */
  readonly #finalized = new Set<number>();
  readonly #finishing = new Set<Promise<void>>();
  readonly #finishSlots = new Semaphore(8);
  readonly #precreating: Promise<void> | undefined;
  readonly #tracker: FileTracker;
  readonly #concurrency: number;
  readonly #ring: SlotRing;
  readonly #workers: ChunkWorkers;
  readonly #downloads: Downloads;
  readonly #flushAhead: FlushAhead;
  readonly #checkpointInterval: number;
  #lastCheckpoint = 0;
  #checkpointing: Promise<void> | undefined;
  #lastLog = 0;

  /** Keep the first failure and stop everything under way (a field: it is handed on as a callback). */
  readonly #fail = (e: unknown): void => {
    this.#failure ??= e instanceof Error ? e : new Error(String(e));
    this.#abort.abort();
  };

  constructor(context: SessionContext) {
    const { options, manifest, index, log } = context;
    this.#options = options;
    this.#transport = context.transport;
    this.#body = manifest.body;
    this.#index = index;
    this.#staging = context.staging;
    this.#journal = context.journal;
    this.#done = context.journal.done;
    this.#progress = context.progress;
    this.#abort = context.abort;
    this.#log = log;
    this.#maxPiece = maxChunkLength(manifest.header);
    this.#scheme = manifest.scheme;

    // Files are created ahead of their data, in the background, one directory
    // at a time per creator. Creating a file is the costliest step of a small
    // one (the kernel holds the directory's lock while ext4 searches its inode
    // bitmap), and the small files come last in a backup: left to their first
    // writes, thousands of creations would pile up at the end, every pool thread
    // waiting on the same directory's lock, with nothing left to overlap them.
    // A file the writes reach first is created there (same flags); either open
    // finds the other's file.
    this.#precreating =
      (options.precreateFiles ?? true)
        ? precreate(
            index.files.map((file) => this.#pathOf(file)),
            PRECREATORS,
            context.signal,
            log,
          )
        : undefined;
    this.#tracker = this.#createTracker();
    // The slots bound the memory: a download holds one while a record arrives and
    // until it is written; when all are taken, downloads wait (and TCP pushes back).
    this.#concurrency = options.concurrency ?? 8;
    this.#ring = new SlotRing(options.slots ?? this.#concurrency, this.#maxPiece + RECORD_OVERHEAD + 64);
    this.#workers = new ChunkWorkers(options.workers ?? defaultWorkerCount(), {
      scheme: manifest.scheme,
      slots: this.#ring.sab,
      slotSize: this.#ring.slotSize,
    });
    this.#downloads = new Downloads({
      transport: context.transport,
      body: manifest.body,
      ring: this.#ring,
      progress: context.progress,
      retry: options.retry ?? DEFAULT_RETRY,
      signal: context.signal,
      throttle: options.bandwidthLimit ? new Throttle(options.bandwidthLimit) : undefined,
      log,
      onRecord: (chunk, slot) => this.#handleRecord(chunk, slot),
    });
    this.#flushAhead = new FlushAhead(context.staging, options.flushAheadBytes ?? 256 * 1024 * 1024, log);
    // Checkpoints: record what was written (not necessarily synced: a resumed
    // restore reads each listed chunk back and checks it before trusting it).
    this.#checkpointInterval = options.checkpointIntervalMs ?? 2000;
  }

  async fetch(): Promise<FetchResult> {
    // Chunks an interrupted run wrote are read back and checked before they count as done.
    if (this.#done.count > 0) {
      const lost = await recheckDone(this.#body, this.#index, this.#done, this.#staging, this.#scheme);
      this.#log?.info({ rechecked: this.#done.count + lost, refetch: lost }, 'restore: checked the chunks an interrupted run wrote');
    }
    const resumedChunks = this.#done.count;
    this.#countResumed();

    const ranges = planRanges(
      this.#body.chunks,
      (chunk) => this.#index.targets.used(chunk),
      (chunk) => this.#done.has(chunk),
      this.#options.rangeSize ?? 16 * 1024 * 1024,
    );
    this.#progress.phase = 'transferring';
    this.#log?.info(
      {
        ranges: ranges.length,
        chunks: ranges.reduce((sum, range) => sum + range.chunks.length, 0),
        bytes: ranges.reduce((sum, range) => sum + range.end - range.start + 1, 0),
      },
      'restore: fetching',
    );
    this.#lastCheckpoint = performance.now();
    this.#lastLog = performance.now();

    const streams = this.#startStreams(ranges);
    try {
      await Promise.all(streams);
      if (this.#failure === undefined) {
        const pending = await this.#tracker.finish();
        if (pending > 0 && this.#failure === undefined) this.#fail(new BackupError('integrity', `internal error: ${pending} files were not fully verified`));
      }
      while (this.#finishing.size > 0) await Promise.allSettled([...this.#finishing]);
      if (this.#checkpointing) await this.#checkpointing;
      if (this.#failure !== undefined) throw this.#failure;
      await this.#journal.write('fetching');
    } finally {
      // The workers first: none may be writing to a descriptor when it is closed (and its number reused).
      await this.#workers.close().catch(() => undefined);
      await Promise.allSettled([this.#handles.closeAll(), this.#tracker.close(), this.#flushAhead.running, this.#precreating]);
    }
    return { transferred: this.#downloads.transferred, finalized: this.#finalized, resumedChunks };
  }

  #pathOf(file: FileEntry): string {
    return join(this.#staging, file.path);
  }

  /** The digest worker that reads each file back (verifyFiles), or a count of the slices written. */
  #createTracker(): FileTracker {
    const onVerdict = (file: number, ok: boolean, detail: string | undefined): void => this.#onVerdict(file, ok, detail);
    if (!(this.#options.verifyFiles ?? false)) return new WrittenTracker(this.#index.files, onVerdict);
    const files = this.#index.files.map((file, index) => ({
      path: this.#pathOf(file),
      size: file.size,
      sha256: file.sha256,
      holes: file.chunks.map((chunk) => chunk < 0),
      bounds: this.#index.pieces.bounds(index, file.chunks.length),
    }));
    return new DigestChecker(this.#maxPiece, files, onVerdict, this.#fail);
  }

  /** A file verified (or, without read-back, is all written): finish it now. A file that did not verify fails the restore. */
  #onVerdict(fileIndex: number, ok: boolean, detail: string | undefined): void {
    const file = this.#index.files[fileIndex]!;
    if (!ok) {
      this.#fail(
        new BackupError('integrity', `restored ${file.path} does not match its SHA-256 in the manifest${detail !== undefined ? ` (${detail})` : ''}`, {
          path: file.path,
        }),
      );
      return;
    }
    const finishing: Promise<void> = this.#finishSlots
      .run(async () => {
        await this.#handles.use(this.#pathOf(file), (fh) => finishFile(this.#options, file, fh, this.#index.pieces, fileIndex));
        await this.#handles.forget(this.#pathOf(file));
        this.#finalized.add(fileIndex);
      })
      .catch(this.#fail)
      .finally(() => this.#finishing.delete(finishing));
    this.#finishing.add(finishing);
  }

  /** The slices of resumed chunks are written already: tell the tracker, and count them (and every hole) as progress. */
  #countResumed(): void {
    const { targets, files } = this.#index;
    let resumedBytes = 0;
    for (let chunk = 0; chunk < targets.chunks; chunk++) {
      if (!this.#done.has(chunk)) continue;
      for (const slice of targets.of(chunk)) {
        this.#tracker.written(slice.file, slice.ordinal);
        resumedBytes += this.#body.chunks[chunk]![3];
      }
    }
    files.forEach((file, index) => {
      for (const [ordinal, chunk] of file.chunks.entries()) if (chunk < 0) resumedBytes += this.#index.pieces.length(index, ordinal);
    });
    this.#progress.add(resumedBytes);
  }

  /** `concurrency` streams, each fetching the next range until none is left or the restore failed. */
  #startStreams(ranges: WorkRange[]): Array<Promise<void>> {
    const queue = ranges.slice();
    return Array.from({ length: Math.min(this.#concurrency, queue.length) }, async () => {
      while (queue.length > 0 && this.#failure === undefined) {
        const range = queue.shift()!;
        try {
          await this.#downloads.fetchRange(range);
        } catch (e) {
          this.#fail(e);
        }
      }
    });
  }

  /**
   * Open the record in `slot` in place and, once it verified, write it to its
   * first file slice (the worker writes, on the handle held here): the
   * plaintext's length, or why it did not open.
   */
  #openSlot(chunk: number, slot: number): Promise<number | string> {
    const ref: ChunkRef = this.#body.chunks[chunk]!;
    const slice = this.#index.targets.of(chunk)[0]!;
    const file = this.#index.files[slice.file]!;
    return this.#handles.use(this.#pathOf(file), async (fh) => {
      const reply = await this.#workers.run({
        op: 'open',
        slot,
        length: ref[2],
        codec: ref[4],
        plainLength: ref[3],
        digest: ref[5],
        write: { fd: fh.fd, pos: this.#index.pieces.start(slice.file, slice.ordinal), sparse: file.sparse },
      });
      if (!reply.ok) {
        if (reply.why === 'write') throw writeError(reply, file);
        return reply.why;
      }
      if (reply.op !== 'open') throw new Error('chunk worker answered an open with something else');
      return reply.plainLength;
    });
  }

  /** Open, verify and write the record in `slot`; the slot is released whatever happens. */
  async #handleRecord(chunk: number, slot: number): Promise<void> {
    try {
      const ref: ChunkRef = this.#body.chunks[chunk]!;
      const key = this.#body.packs[ref[0]]!.key;
      let result = await this.#openSlot(chunk, slot);
      // A bad record is fetched again on its own (it may have been damaged on the way) before the restore gives up.
      for (let attempt = 1; attempt < 3 && typeof result === 'string'; attempt++) {
        this.#log?.warn({ object: this.#transport.describe(key), offset: ref[1], why: result }, 'restore: chunk failed verification, fetching it again');
        await this.#downloads.refetch(chunk, slot);
        result = await this.#openSlot(chunk, slot);
      }
      if (typeof result === 'string') {
        const users = this.#index.targets.of(chunk).map((slice) => this.#index.files[slice.file]!.path);
        throw new BackupError(
          'integrity',
          `corrupt data in ${this.#transport.describe(key)} at bytes ${ref[1]}-${ref[1] + ref[2] - 1} (chunk ${chunk}: ${result} check failed, also after fetching it twice more); it belongs to ${users.slice(0, 3).join(', ')}`,
          { object: this.#transport.describe(key), offset: ref[1], chunk, files: users.slice(0, 10) },
        );
      }
      const plainLength = result;
      // The first slice is written; a chunk stored once for several slices (same content) goes to the others too.
      for (const [copy, slice] of this.#index.targets.of(chunk).entries()) {
        const file = this.#index.files[slice.file]!;
        if (copy > 0) {
          const reply = await this.#handles.use(this.#pathOf(file), (fh) =>
            this.#workers.run({
              op: 'write',
              slot,
              length: plainLength,
              write: { fd: fh.fd, pos: this.#index.pieces.start(slice.file, slice.ordinal), sparse: file.sparse },
            }),
          );
          if (!reply.ok) throw reply.why === 'write' ? writeError(reply, file) : new Error(`chunk worker failed a write: ${reply.why}`);
        }
        this.#tracker.written(slice.file, slice.ordinal);
        this.#progress.add(plainLength);
        this.#flushAhead.wrote(plainLength);
      }
    } finally {
      this.#ring.release(slot);
    }
    this.#done.add(chunk);
    this.#maybeCheckpoint();
    this.#maybeLogProgress();
  }

  /** A checkpoint of the journal every checkpointIntervalMs at most, one at a time. */
  #maybeCheckpoint(): void {
    if (this.#checkpointing || performance.now() - this.#lastCheckpoint < this.#checkpointInterval) return;
    this.#lastCheckpoint = performance.now();
    this.#checkpointing = this.#journal
      .write('fetching')
      .catch(this.#fail)
      .finally(() => (this.#checkpointing = undefined));
  }

  #maybeLogProgress(): void {
    if (!this.#log || performance.now() - this.#lastLog <= 5000) return;
    this.#lastLog = performance.now();
    const progress = this.#progress.snapshot();
    this.#log.info(
      {
        bytesDone: progress.bytesDone,
        bytesTotal: progress.bytesTotal,
        rate: Math.round(progress.rate),
        etaSeconds: progress.etaSeconds === undefined ? null : Math.round(progress.etaSeconds),
      },
      'restore: progress',
    );
  }
}

/** A write the chunk worker reports failed, as an error with its errno code (ENOSPC is reported as such). */
function writeError(reply: { code?: string; message: string }, file: FileEntry): Error {
  return Object.assign(new Error(`writing ${file.path}: ${reply.message}`), reply.code !== undefined ? { code: reply.code } : {});
}
