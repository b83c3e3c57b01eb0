import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../../log.js';
import { chunkDigest, type ChunkScheme, type ManifestBody } from '../format.js';
import { DoneSet, readJournal, writeJournal } from '../journal.js';
import type { RestoreIndex } from '../plan.js';
import { clearStaging, type TargetLayout } from '../target.js';
import { forEachLimited } from './for-each-limited.js';

/** One restore's journal (journal.ts): which backup and manifest, which chunks are written, how far it got. */
export class RestoreJournal {
  constructor(
    readonly path: string,
    readonly backupId: string,
    readonly manifestDigest: string,
    readonly done: DoneSet,
  ) {}

  write(state: 'fetching' | 'committing'): Promise<void> {
    return writeJournal(this.path, { backupId: this.backupId, manifestDigest: this.manifestDigest, chunks: this.done.size, done: this.done.encode(), state });
  }
}

/**
 * Resume or start afresh: a journal of this very manifest gives the chunks
 * already written and whether the commit was reached; anything else in the
 * staging directory (another backup's unfinished restore) is cleared.
 */
export async function resumeOrStart(
  layout: TargetLayout,
  backupId: string,
  manifestDigest: string,
  chunks: number,
  log: Logger | undefined,
): Promise<{ done: DoneSet; committing: boolean }> {
  const journal = await readJournal(layout.journal);
  if (journal && journal.backupId === backupId && journal.manifestDigest === manifestDigest && journal.chunks === chunks) {
    const done = DoneSet.decode(chunks, journal.done);
    const committing = journal.state === 'committing';
    log?.info({ doneChunks: done.count, chunks, committing }, 'restore: continuing an interrupted restore');
    return { done, committing };
  }
  if (journal) log?.warn({ previous: journal.backupId }, 'restore: discarding an unfinished restore of another backup');
  await clearStaging(layout);
  return { done: new DoneSet(chunks), committing: false };
}

/**
 * Read back every chunk the journal lists as written and compare it with its
 * digest; a chunk that does not match (a power cut lost it, or the file was
 * touched) is taken off the list and fetched again. Returns how many were.
 */
export async function recheckDone(body: ManifestBody, index: RestoreIndex, done: DoneSet, staging: string, scheme: ChunkScheme): Promise<number> {
  let lost = 0;
  await forEachLimited(body.chunks.length, 4, async (chunk) => {
    if (!done.has(chunk)) return;
    const ref = body.chunks[chunk]!;
    const buf = Buffer.allocUnsafe(ref[3]);
    for (const slice of index.targets.of(chunk)) {
      let fh: FileHandle | undefined;
      try {
        fh = await open(join(staging, index.files[slice.file]!.path), constants.O_RDONLY | constants.O_NOFOLLOW);
        const { bytesRead } = await fh.read(buf, 0, buf.length, index.pieces.start(slice.file, slice.ordinal));
        if (bytesRead !== buf.length || chunkDigest(scheme, buf) !== ref[5]) throw new Error('mismatch');
      } catch {
        done.delete(chunk);
        lost++;
        return;
      } finally {
        await fh?.close();
      }
    }
  });
  return lost;
}
