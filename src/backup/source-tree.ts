/**
 * The source side of a backup: the tree walked in manifest order, and each
 * regular file read in chunk-sized pieces into the slots the workers seal.
 */
import { constants, type BigIntStats } from 'node:fs';
import { lstat, open, readdir, readlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../log.js';
import { BackupError, errnoOf } from './errors.js';
import { type Entry, type FileEntry } from './format.js';
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

/** Read a file in chunkSize pieces, each into a slot of `ring` (where a worker will seal it); `each` owns the slot. */
export async function readChunks(path: string, chunkSize: number, ring: SlotRing, each: (slot: number, plain: Buffer) => Promise<void>): Promise<void> {
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
