import { join } from 'node:path';
import { writeFileAtomic } from '../../host/files.js';
import type { Logger } from '../../log.js';
import { BackupError, errnoOf } from '../errors.js';
import { Semaphore } from '../semaphore.js';
import { ChunkWorkers, DigestChecker, SlotRing, defaultWorkerCount } from '../workers/pool.js';
import { RECORD_OVERHEAD, type ChunkRef, type FileEntry } from '../format.js';
import { removeJournal } from '../journal.js';
import { indexChunks, planRanges, type WorkRange } from '../plan.js';
import { ProgressTracker, formatBytes } from '../progress.js';
import { DEFAULT_RETRY, withRetry, type RetryPolicy } from '../retry.js';
import { HandlePool, chooseLayout, commitLayout, ensureStaging, type TargetLayout } from '../target.js';
import { Throttle } from '../throttle.js';
import { TransportError, storeError, type Transport } from '../transport.js';
import { applyRootMetadata, finishFile, finishTree } from './finish.js';
import { openManifest, resolveBackupId, type OpenedManifest } from './manifest.js';
import { transportOf, type RestoreOptions, type RestoreResult } from './options.js';
import { RestoreJournal, recheckDone, resumeOrStart } from './resume.js';
import { FlushAhead, PRECREATORS, createDirsAndSymlinks, precreate } from './staging.js';
import { WrittenTracker, type FileTracker } from './tracker.js';

/**
 * Restore a backup into `target`: many ranged GETs in flight, each streamed
 * through decrypt → decompress → verify → write, one chunk in memory per
 * download; transient errors retried with backoff from the byte reached; a
 * journal beside the staging directory lets a killed restore continue; the
 * target appears (or is marked complete) only when every chunk has verified
 * (and, with verifyFiles, every file's SHA-256 read back from disk), and
 * everything is synced.
 */
export async function restoreFromObjectStorage(o: RestoreOptions): Promise<RestoreResult> {
  const started = performance.now();
  const t = transportOf(o);
  const counter = { retries: 0 };
  const retry: RetryPolicy = { ...(o.retry ?? DEFAULT_RETRY), counter };
  const abort = new AbortController();
  const onOuterAbort = (): void => abort.abort(o.signal?.reason);
  o.signal?.addEventListener('abort', onOuterAbort, { once: true });
  const signal = abort.signal;

  const backupId = await resolveBackupId(t, o.backupId, retry, signal);
  const log = o.logger?.child({ backupId });
  const m = await openManifest(t, backupId, o.openDataKey, {
    ...(o.verifyManifest ? { verifyManifest: o.verifyManifest } : {}),
    retry,
    signal,
    ...(o.redactor ? { redactor: o.redactor } : {}),
  });
  const { header, body } = m;
  const chunkSize = header.chunkSize;
  const index = indexChunks(body);
  let layout: TargetLayout;
  try {
    layout = await chooseLayout(o.target);
  } catch (e) {
    m.chunkKey.fill(0);
    throw e;
  }
  const bytesTotal = index.files.reduce((n, f) => n + f.size, 0);
  const progress = new ProgressTracker('restore', bytesTotal, index.files.length, o.onProgress);
  log?.info({ target: o.target, layout: layout.mode, files: index.files.length, bytes: bytesTotal, storedBytes: header.stats.storedBytes, createdAt: header.createdAt, signer: header.signer ?? null }, 'restore: manifest verified');

  // Resume or start afresh.
  const resumed = await resumeOrStart(layout, backupId, m.digest, body.chunks.length, log);
  const done = resumed.done;
  let committing = resumed.committing;
  const journal = new RestoreJournal(layout.journal, backupId, m.digest, done);

  let transferred = 0;
  let resumedChunks = committing ? done.count : 0;
  try {
    if (!committing) {
      await ensureStaging(layout);
      await journal.write('fetching');
      const fetched = await fetchAll({ ...o, retry }, t, m, index, layout, journal, progress, signal, abort, log);
      transferred = fetched.transferred;
      resumedChunks = fetched.resumedChunks;
      progress.phase = 'finishing';
      log?.info({ transferred, finishedFiles: fetched.finalized.size }, 'restore: every chunk verified and written; setting metadata');
      await finishTree(o, body, index.files, fetched.finalized, layout, chunkSize);
      committing = true;
      await journal.write('committing');
    }
    progress.phase = 'finishing';
    log?.debug({ layout: layout.mode }, 'restore: committing');
    await commitLayout(layout);
    const rootMeta = layout.mode === 'into' && !o.keepTargetMetadata;
    if (rootMeta) await applyRootMetadata(o, body, layout.target);
    if (o.markerPath) {
      const marker = { ...o.markerExtra, backupId, manifestDigest: m.digest, target: o.target, bytes: bytesTotal, files: index.files.length, completedAt: new Date().toISOString() };
      await writeFileAtomic(o.markerPath, JSON.stringify(marker) + '\n', { mode: 0o644 });
    }
    await removeJournal(layout.journal);
    // Removing the journal from the target itself changed its mtime: set it once more.
    if (rootMeta) await applyRootMetadata(o, body, layout.target);
  } catch (e) {
    abort.abort();
    if (errnoOf(e) === 'ENOSPC') {
      throw new BackupError('space', `ENOSPC: no space left on the volume holding ${o.target} (the backup holds ${formatBytes(bytesTotal)}); nothing was marked restored, and a run with room continues from what is in place`, { target: o.target, errno: 'ENOSPC' }, { cause: e });
    }
    throw e;
  } finally {
    m.chunkKey.fill(0);
    o.signal?.removeEventListener('abort', onOuterAbort);
  }
  progress.phase = 'done';
  progress.maybeEmit(true);
  const seconds = (performance.now() - started) / 1000;
  log?.info({ target: o.target, bytes: bytesTotal, transferred, seconds: Number(seconds.toFixed(3)), rate: `${formatBytes(bytesTotal / Math.max(seconds, 1e-3))}/s`, resumedChunks, retries: counter.retries }, 'restore: complete');
  return { backupId, manifestDigest: m.digest, target: o.target, bytes: bytesTotal, files: index.files.length, transferredBytes: transferred, resumedChunks, retries: counter.retries, seconds };
}

/** Every missing chunk fetched, verified and written; every file's digest checked on disk. Returns the bytes fetched. */
async function fetchAll(
  o: RestoreOptions,
  t: Transport,
  m: OpenedManifest,
  index: ReturnType<typeof indexChunks>,
  layout: TargetLayout,
  journal: RestoreJournal,
  progress: ProgressTracker,
  signal: AbortSignal,
  abort: AbortController,
  log: Logger | undefined,
): Promise<{ transferred: number; finalized: Set<number>; resumedChunks: number }> {
  const { header, body } = m;
  const done = journal.done;
  const chunkSize = header.chunkSize;
  const retry = o.retry ?? DEFAULT_RETRY;
  const pool = new HandlePool();
  const throttle = o.bandwidthLimit ? new Throttle(o.bandwidthLimit) : undefined;
  const pathOf = (f: FileEntry): string => join(layout.staging, f.path);
  let failure: Error | undefined;
  const fail = (e: unknown): void => {
    failure ??= e instanceof Error ? e : new Error(String(e));
    abort.abort();
  };

  // Directories and symlinks first; files appear on their first write.
  await createDirsAndSymlinks(body, layout.staging);

  // Files are created ahead of their data, in the background, one directory
  // at a time per creator. Creating a file is the costliest step of a small
  // one (the kernel holds the directory's lock while ext4 searches its inode
  // bitmap), and the small files come last in a backup: left to their first
  // writes, thousands of creations would pile up at the end, every pool thread
  // waiting on the same directory's lock, with nothing left to overlap them.
  // A file the writes reach first is created there (same flags); either open
  // finds the other's file.
  const precreating: Promise<void> | undefined = (o.precreateFiles ?? true) ? precreate(index.files.map(pathOf), PRECREATORS, signal, log) : undefined;

  // A file is finished (size, zeros, owner, mode, mtime) as soon as its digest verifies on disk.
  const finalized = new Set<number>();
  const finishing = new Set<Promise<void>>();
  const finishSlots = new Semaphore(8);
  const onVerdict = (file: number, ok: boolean, detail: string | undefined): void => {
    const f = index.files[file]!;
    if (!ok) {
      fail(new BackupError('integrity', `restored ${f.path} does not match its SHA-256 in the manifest${detail !== undefined ? ` (${detail})` : ''}`, { path: f.path }));
      return;
    }
    const p: Promise<void> = finishSlots
      .run(async () => {
        await pool.use(pathOf(f), (fh) => finishFile(o, f, fh, chunkSize));
        await pool.forget(pathOf(f));
        finalized.add(file);
      })
      .catch(fail)
      .finally(() => finishing.delete(p));
    finishing.add(p);
  };
  const digests: FileTracker =
    (o.verifyFiles ?? false)
      ? new DigestChecker(
          chunkSize,
          index.files.map((f) => ({ path: pathOf(f), size: f.size, sha256: f.sha256, holes: f.chunks.map((c) => c === -1) })),
          onVerdict,
          fail,
        )
      : new WrittenTracker(index.files, onVerdict);
  // The slots bound the memory: a download holds one while a record arrives and
  // until it is written; when all are taken, downloads wait (and TCP pushes back).
  const concurrency = o.concurrency ?? 8;
  const ring = new SlotRing(o.slots ?? concurrency, chunkSize + RECORD_OVERHEAD + 64);
  const workers = new ChunkWorkers(o.workers ?? defaultWorkerCount(), { key: m.chunkKey, backupId: header.backupId, slots: ring.sab, slotSize: ring.slotSize });

  // Chunks an interrupted run wrote are read back and checked before they count as done.
  if (done.count > 0) {
    const lost = await recheckDone(body, index, done, layout.staging, chunkSize);
    log?.info({ rechecked: done.count + lost, refetch: lost }, 'restore: checked the chunks an interrupted run wrote');
  }
  const resumedChunks = done.count;
  let resumedBytes = 0;
  for (let c = 0; c < index.targets.chunks; c++) {
    if (!done.has(c)) continue;
    for (const s of index.targets.of(c)) {
      digests.written(s.file, s.ordinal);
      resumedBytes += body.chunks[c]![3];
    }
  }
  for (const f of index.files) for (const [k, c] of f.chunks.entries()) if (c === -1) resumedBytes += Math.min(chunkSize, f.size - k * chunkSize);
  progress.add(resumedBytes);

  const ranges = planRanges(body.chunks, (c) => index.targets.used(c), (c) => done.has(c), o.rangeSize ?? 16 * 1024 * 1024);
  progress.phase = 'transferring';
  log?.info({ ranges: ranges.length, chunks: ranges.reduce((n, r) => n + r.chunks.length, 0), bytes: ranges.reduce((n, r) => n + r.end - r.start + 1, 0) }, 'restore: fetching');

  // Checkpoints: record what was written (not necessarily synced: a resumed
  // restore reads each listed chunk back and checks it before trusting it).
  const interval = o.checkpointIntervalMs ?? 2000;
  let lastCheckpoint = performance.now();
  let checkpointing: Promise<void> | undefined;
  const checkpoint = (): Promise<void> => journal.write('fetching');
  const maybeCheckpoint = (): void => {
    if (checkpointing || performance.now() - lastCheckpoint < interval) return;
    lastCheckpoint = performance.now();
    checkpointing = checkpoint()
      .catch(fail)
      .finally(() => (checkpointing = undefined));
  };
  let lastLog = performance.now();
  let transferred = 0;

  const flushAhead = new FlushAhead(layout.staging, o.flushAheadBytes ?? 256 * 1024 * 1024, log);

  /** A write the chunk worker reports failed, as an error with its errno code (ENOSPC is reported as such). */
  const writeError = (r: { code?: string; message: string }, f: FileEntry): Error =>
    Object.assign(new Error(`writing ${f.path}: ${r.message}`), r.code !== undefined ? { code: r.code } : {});

  /**
   * Open the record in `slot` in place and, once it verified, write it to its
   * first file slice (the worker writes, on the handle held here): the
   * plaintext's length, or why it did not open.
   */
  const openSlot = (c: number, slot: number): Promise<number | string> => {
    const ref: ChunkRef = body.chunks[c]!;
    const s = index.targets.of(c)[0]!;
    const f = index.files[s.file]!;
    return pool.use(pathOf(f), async (fh) => {
      const r = await workers.run({ op: 'open', slot, length: ref[2], codec: ref[4], plainLength: ref[3], sha256: ref[5], write: { fd: fh.fd, pos: s.ordinal * chunkSize, sparse: f.sparse } });
      if (!r.ok) {
        if (r.why === 'write') throw writeError(r, f);
        return r.why;
      }
      if (r.op !== 'open') throw new Error('chunk worker answered an open with something else');
      return r.plainLength;
    });
  };

  /** Open, verify and write the record in `slot`; the slot is released whatever happens. */
  const handleRecord = async (c: number, slot: number): Promise<void> => {
    try {
      const ref: ChunkRef = body.chunks[c]!;
      const key = body.packs[ref[0]]!.key;
      let result = await openSlot(c, slot);
      // A bad record is fetched again on its own (it may have been damaged on the way) before the restore gives up.
      for (let attempt = 1; attempt < 3 && typeof result === 'string'; attempt++) {
        log?.warn({ object: t.describe(key), offset: ref[1], why: result }, 'restore: chunk failed verification, fetching it again');
        await fetchExact(t, key, ref[1], body.packs[ref[0]]!.size, ring.view(slot, ref[2]), retry, signal, throttle);
        transferred += ref[2];
        result = await openSlot(c, slot);
      }
      if (typeof result === 'string') {
        const users = index.targets.of(c).map((s) => index.files[s.file]!.path);
        throw new BackupError('integrity', `corrupt data in ${t.describe(key)} at bytes ${ref[1]}-${ref[1] + ref[2] - 1} (chunk ${c}: ${result} check failed, also after fetching it twice more); it belongs to ${users.slice(0, 3).join(', ')}`, { object: t.describe(key), offset: ref[1], chunk: c, files: users.slice(0, 10) });
      }
      const plainLength = result;
      // The first slice is written; a chunk stored once for several slices (same content) goes to the others too.
      for (const [k, s] of index.targets.of(c).entries()) {
        const f = index.files[s.file]!;
        if (k > 0) {
          const r = await pool.use(pathOf(f), (fh) => workers.run({ op: 'write', slot, length: plainLength, write: { fd: fh.fd, pos: s.ordinal * chunkSize, sparse: f.sparse } }));
          if (!r.ok) throw r.why === 'write' ? writeError(r, f) : new Error(`chunk worker failed a write: ${r.why}`);
        }
        digests.written(s.file, s.ordinal);
        progress.add(plainLength);
        flushAhead.wrote(plainLength);
      }
    } finally {
      ring.release(slot);
    }
    done.add(c);
    maybeCheckpoint();
    if (log && performance.now() - lastLog > 5000) {
      lastLog = performance.now();
      const p = progress.snapshot();
      log.info({ bytesDone: p.bytesDone, bytesTotal: p.bytesTotal, rate: Math.round(p.rate), etaSeconds: p.etaSeconds === undefined ? null : Math.round(p.etaSeconds) }, 'restore: progress');
    }
  };

  const fetchRange = async (r: WorkRange): Promise<void> => {
    const pack = body.packs[r.pack]!;
    let pos = r.start;
    let idx = 0;
    let rec: Buffer | undefined;
    let recSlot = -1;
    let filled = 0;
    // Up to two records of this range are being opened and written while the next one downloads.
    const inflight: Array<Promise<void>> = [];
    const settle = async (keep: number): Promise<void> => {
      while (inflight.length > keep) await inflight.shift();
    };
    try {
      await withRetry(
        retry,
        async (_attempt, progressed) => {
          // A failed request stays a TransportError here so that a 5xx or a
          // refused connection is retried; the catch below names the object.
          const res = await t.get(pack.key, { start: pos, end: r.end }, signal);
          if (res.objectSize !== undefined && res.objectSize !== pack.size) {
            throw new BackupError('truncated', `${t.describe(pack.key)} is ${res.objectSize} bytes but the manifest says ${pack.size}: truncated or replaced`, { object: t.describe(pack.key) });
          }
          for await (const piece of res.body) {
            if (throttle) await throttle.take(piece.length);
            transferred += piece.length;
            progress.transferredBytes += piece.length;
            let off = 0;
            while (off < piece.length && idx < r.chunks.length) {
              const c = r.chunks[idx]!;
              const len = body.chunks[c]![2];
              if (rec === undefined) {
                recSlot = await ring.acquire();
                rec = ring.view(recSlot, len);
              }
              const n = Math.min(len - filled, piece.length - off);
              rec.set(piece.subarray(off, off + n), filled);
              filled += n;
              off += n;
              pos += n;
              progressed();
              if (filled === len) {
                const full = recSlot;
                rec = undefined;
                recSlot = -1;
                filled = 0;
                idx++;
                const p = handleRecord(c, full);
                p.catch(() => undefined);
                inflight.push(p);
                await settle(1);
              }
            }
            if (idx >= r.chunks.length) break;
          }
          if (idx < r.chunks.length) throw new TransportError('transient', `${t.describe(pack.key)}: download ended early at byte ${pos} of ${r.end + 1}`);
        },
        {
          signal,
          onRetry: (e, n, ms) => log?.warn({ object: t.describe(pack.key), resumeAt: pos, failures: n, delayMs: ms, err: e instanceof Error ? e.message : String(e) }, 'restore: download failed, resuming'),
        },
      );
      await settle(0);
    } catch (e) {
      await Promise.allSettled(inflight);
      throw storeError(t, pack.key, e);
    } finally {
      if (recSlot >= 0) ring.release(recSlot);
    }
  };

  const queue = ranges.slice();
  const streams = Array.from({ length: Math.min(concurrency, queue.length) }, async () => {
    while (queue.length > 0 && failure === undefined) {
      const r = queue.shift()!;
      try {
        await fetchRange(r);
      } catch (e) {
        fail(e);
      }
    }
  });
  try {
    await Promise.all(streams);
    if (failure === undefined) {
      const pending = await digests.finish();
      if (pending > 0 && failure === undefined) fail(new BackupError('integrity', `internal error: ${pending} files were not fully verified`));
    }
    while (finishing.size > 0) await Promise.allSettled([...finishing]);
    if (checkpointing) await checkpointing;
    if (failure !== undefined) throw failure;
    await checkpoint();
  } finally {
    // The workers first: none may be writing to a descriptor when it is closed (and its number reused).
    await workers.close().catch(() => undefined);
    await Promise.allSettled([pool.closeAll(), digests.close(), flushAhead.running, precreating]);
  }
  return { transferred, finalized, resumedChunks };
}

/** Fetch exactly one record again, into `into`. */
async function fetchExact(t: Transport, key: string, offset: number, packSize: number, into: Buffer, retry: RetryPolicy, signal: AbortSignal, throttle: Throttle | undefined): Promise<void> {
  const length = into.length;
  try {
    await withRetry(retry, async () => {
      const res = await t.get(key, { start: offset, end: offset + length - 1 }, signal);
      if (res.objectSize !== undefined && res.objectSize !== packSize) throw new BackupError('truncated', `${t.describe(key)} is ${res.objectSize} bytes but the manifest says ${packSize}: truncated or replaced`, { object: t.describe(key) });
      let n = 0;
      for await (const p of res.body) {
        if (throttle) await throttle.take(p.length);
        const take = Math.min(p.length, length - n);
        into.set(p.subarray(0, take), n);
        n += take;
      }
      if (n < length) throw new TransportError('transient', `${t.describe(key)}: got ${n} of ${length} bytes`);
    }, { signal });
  } catch (e) {
    throw storeError(t, key, e);
  }
}
