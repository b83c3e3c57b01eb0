import { constants, fchmodSync, fchownSync, ftruncateSync, futimesSync } from 'node:fs';
import { chmod, lchown, link, lstat, lutimes, open, unlink, utimes, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { errnoOf } from '../errors.js';
import type { FileEntry, ManifestBody } from '../format.js';
import type { PieceLayout } from '../plan.js';
import { WRITE_PIECE } from '../slice-writer.js';
import type { TargetLayout } from '../target.js';
import { forEachLimited } from './for-each-limited.js';
import type { RestoreOptions } from './options.js';
import { syncTree } from './staging.js';

function mtimeSeconds(mtimeNs: string): number {
  const nanoseconds = BigInt(mtimeNs);
  return Number(nanoseconds / 1_000_000_000n) + Number(nanoseconds % 1_000_000_000n) / 1e9;
}

/**
 * Size (which also makes trailing holes), zeros where a non-sparse file had
 * them, owner, mode, mtime. Safe to repeat. The metadata calls are synchronous
 * on the descriptor: each is one short system call, cheaper than a promise and
 * a trip through the libuv thread pool (two to four per file).
 */
export async function finishFile(options: RestoreOptions, file: FileEntry, fh: FileHandle, pieces: PieceLayout, fileIndex: number): Promise<void> {
  // The last write already gave the file its size, unless the file ends in a run of zeros.
  if (file.chunks.length === 0 || file.chunks[file.chunks.length - 1]! < 0) ftruncateSync(fh.fd, file.size);
  if (!file.sparse && file.chunks.some((chunk) => chunk < 0)) {
    const zero = Buffer.alloc(WRITE_PIECE);
    for (const [ordinal, chunk] of file.chunks.entries()) {
      if (chunk >= 0) continue;
      const start = pieces.start(fileIndex, ordinal);
      const end = start + pieces.length(fileIndex, ordinal);
      for (let pos = start; pos < end; pos += zero.length) await fh.write(zero, 0, Math.min(zero.length, end - pos), pos);
    }
  }
  // Files are created by this process: owned by it already when the backup says so.
  if ((options.preserveOwner ?? process.getuid?.() === 0) && (file.uid !== process.getuid?.() || file.gid !== process.getgid?.()))
    fchownSync(fh.fd, file.uid, file.gid);
  fchmodSync(fh.fd, file.mode);
  const mtime = mtimeSeconds(file.mtimeNs);
  futimesSync(fh.fd, mtime, mtime);
}

async function finishPath(options: RestoreOptions, file: FileEntry, path: string, pieces: PieceLayout, fileIndex: number): Promise<void> {
  const fh = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_NOFOLLOW, 0o600);
  try {
    await finishFile(options, file, fh, pieces, fileIndex);
  } finally {
    await fh.close();
  }
}

/**
 * After the data: files not finished during the fetch (all of them after a
 * resume), hard links, then owner, mode and mtime of symlinks and
 * directories, deepest first so creating a child never bumps a directory's
 * restored mtime. All of it is safe to repeat after a crash.
 */
export async function finishTree(
  options: RestoreOptions,
  body: ManifestBody,
  files: FileEntry[],
  finalized: Set<number>,
  layout: TargetLayout,
  pieces: PieceLayout,
): Promise<void> {
  const owner = options.preserveOwner ?? process.getuid?.() === 0;
  await forEachLimited(files.length, 8, async (fileIndex) => {
    if (!finalized.has(fileIndex)) await finishPath(options, files[fileIndex]!, join(layout.staging, files[fileIndex]!.path), pieces, fileIndex);
  });
  await linkHardLinks(body, layout.staging);
  await forEachLimited(body.entries.length, 8, async (entryIndex) => {
    const entry = body.entries[entryIndex]!;
    if (entry.type !== 'symlink') return;
    const path = join(layout.staging, entry.path);
    if (owner) await lchown(path, entry.uid, entry.gid);
    const mtime = mtimeSeconds(entry.mtimeNs);
    await lutimes(path, mtime, mtime);
  });
  const dirs = body.entries.filter((entry) => entry.type === 'dir');
  for (const dir of dirs.reverse()) {
    if (dir.path === '.' && layout.mode === 'into') continue;
    const path = join(layout.staging, dir.path);
    if (owner) await lchown(path, dir.uid, dir.gid);
    await chmod(path, dir.mode);
    const mtime = mtimeSeconds(dir.mtimeNs);
    await utimes(path, mtime, mtime);
  }
  await syncTree(layout.staging);
}

/** Every hard link of the manifest, one at a time; a name that already is another file is replaced. */
async function linkHardLinks(body: ManifestBody, staging: string): Promise<void> {
  for (const entry of body.entries) {
    if (entry.type !== 'hardlink') continue;
    const path = join(staging, entry.path);
    const to = join(staging, entry.target);
    try {
      await link(to, path);
    } catch (err) {
      if (errnoOf(err) !== 'EEXIST') throw err;
      const [existing, original] = await Promise.all([lstat(path), lstat(to)]);
      if (existing.ino !== original.ino) {
        await unlink(path);
        await link(to, path);
      }
    }
  }
}

/** The backup's owner, mode and mtime of its root, on the target directory itself. */
export async function applyRootMetadata(options: RestoreOptions, body: ManifestBody, dir: string): Promise<void> {
  const root = body.entries[0];
  if (root?.type !== 'dir') return;
  if (options.preserveOwner ?? process.getuid?.() === 0) await lchown(dir, root.uid, root.gid);
  await chmod(dir, root.mode);
  const mtime = mtimeSeconds(root.mtimeNs);
  await utimes(dir, mtime, mtime);
}
