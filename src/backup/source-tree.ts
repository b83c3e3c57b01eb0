/**
 * The source side of a backup: the tree walked in manifest order, and each
 * regular file read and cut into chunks (cutter.ts) in the slots the workers seal.
 */
import { constants, type BigIntStats } from 'node:fs';
import { lstat, open, readdir, readlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../log.js';
import { BackupError, errnoOf } from './errors.js';
import { type Entry, type FileEntry } from './format.js';
import type { Cutter } from './cutter.js';
import { SlotRing } from './workers/pool.js';

/** A regular file of the tree: its manifest entry (size and chunks filled in as it is read) and where it is. */
export interface PendingFile {
  entry: FileEntry;
  abs: string;
}

function sourceError(path: string, e: unknown): BackupError {
  return new BackupError('source', `cannot read ${path}: ${errnoOf(e) ?? String(e)}`, { path, errno: errnoOf(e) }, { cause: e });
}

/**
 * The tree in manifest order: depth first, names sorted, every directory before
 * what it holds. A second name of an inode already seen becomes a hard link.
 */
export async function walk(root: string, log: Logger | undefined): Promise<{ entries: Entry[]; files: PendingFile[]; skipped: number }> {
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

/** How much of a file is read at a time (the chunks of a block are then copied into slots). */
const READ_BLOCK = 4 * 1024 * 1024;

/** A buffer for readPieces: one per backup, reused for every file. */
export function readBuffer(longest: number): Buffer {
  return Buffer.allocUnsafe(READ_BLOCK + longest);
}

/**
 * Read a file in blocks and cut it into chunks where `cutter` says, each
 * chunk copied into a slot of `ring` (where a worker will name and seal it);
 * `each` owns the slot. A chunk that spans two blocks is moved to the front of
 * the buffer before the next read, so `buffer` must hold a block and the
 * longest chunk.
 */
export async function readPieces(
  path: string,
  cutter: Cutter,
  buffer: Buffer,
  ring: SlotRing,
  each: (slot: number, plain: Buffer) => Promise<void>,
): Promise<void> {
  let fh: FileHandle;
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (e) {
    throw sourceError(path, e);
  }
  cutter.reset();
  const emit = async (from: number, to: number): Promise<void> => {
    const slot = await ring.acquire();
    const view = ring.view(slot, to - from);
    buffer.copy(view, 0, from, to);
    await each(slot, view);
  };
  try {
    // buffer[start, have) holds bytes not yet in a chunk; the cutter has scanned them up to `scan`.
    let have = 0;
    let start = 0;
    let scan = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buffer, have, buffer.length - have, null);
      have += bytesRead;
      for (let cut = cutter.next(buffer, scan, have); cut >= 0; cut = cutter.next(buffer, scan, have)) {
        await emit(start, cut);
        start = scan = cut;
      }
      scan = have;
      if (bytesRead === 0) {
        if (start < have) await emit(start, have);
        break;
      }
      if (have === buffer.length || start > 0) {
        buffer.copy(buffer, 0, start, have);
        have -= start;
        scan -= start;
        start = 0;
      }
    }
  } catch (e) {
    if (e instanceof BackupError) throw e;
    throw sourceError(path, e);
  } finally {
    await fh.close();
  }
}
