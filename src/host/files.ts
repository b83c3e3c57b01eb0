import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { chmod, chown, link, mkdir, open, readFile, rename, rm, stat, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { BosunError } from '../errors.js';

export interface WriteOptions {
  /** permission bits, always explicit: a file never inherits the umask's idea of safe */
  mode: number;
  uid?: number;
  gid?: number;
  /** fail with EEXIST instead of replacing an existing file (first-boot key creation) */
  exclusive?: boolean;
  /**
   * false: still atomic (old or new content, never a mix), but not forced to disk
   * before returning; for bookkeeping whose loss in a power cut only costs
   * repeated work, never correctness.
   */
  durable?: boolean;
}

/**
 * Write a file so that a reader (or a reboot) sees either the old content or the
 * new, never a mix: write a temp file beside it, fsync, set owner and mode,
 * rename over the target, fsync the directory. The temp file is created 0600
 * and only gets its final mode once complete, so a secret is never briefly
 * world-readable.
 */
export async function writeFileAtomic(path: string, content: string | Uint8Array, opts: WriteOptions): Promise<void> {
  const dir = dirname(path);
  await mkdir(dir, { recursive: true, mode: 0o755 }).catch((e: unknown) => {
    throw wrapWriteError(path, e);
  });
  const tmp = join(dir, `.${basenameOf(path)}.bosun-tmp-${randomBytes(6).toString('hex')}`);
  const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
  try {
    await fh.writeFile(content);
    if (opts.uid !== undefined || opts.gid !== undefined) await fh.chown(opts.uid ?? -1, opts.gid ?? -1);
    await fh.chmod(opts.mode);
    if (opts.durable !== false) await fh.sync();
  } catch (e) {
    await fh.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    throw wrapWriteError(path, e);
  }
  await fh.close();
  try {
    if (opts.exclusive) {
      // link() refuses to replace an existing name: two racing first boots cannot
      // both create a key and each believe theirs is the one on disk.
      await link(tmp, path);
      await unlink(tmp);
    } else {
      await rename(tmp, path);
    }
    if (opts.durable !== false) await syncDir(dir);
  } catch (e) {
    await unlink(tmp).catch(() => undefined);
    throw wrapWriteError(path, e);
  }
}

function basenameOf(p: string): string {
  return p.slice(p.lastIndexOf('/') + 1);
}

async function syncDir(dir: string): Promise<void> {
  const dh = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}

function wrapWriteError(path: string, e: unknown): BosunError {
  const code = (e as NodeJS.ErrnoException).code ?? 'unknown';
  return new BosunError('E_WRITE', `cannot write ${path}: ${code}`, { path, errno: code }, { cause: e });
}

export async function readFileIfExists(path: string): Promise<Buffer | undefined> {
  try {
    return await readFile(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

export async function ensureDir(path: string, mode: number, owner?: { uid?: number; gid?: number }): Promise<void> {
  await mkdir(path, { recursive: true, mode });
  if (owner && (owner.uid !== undefined || owner.gid !== undefined)) await chown(path, owner.uid ?? -1, owner.gid ?? -1);
  const st = await stat(path);
  if ((st.mode & 0o7777) !== mode) await chmod(path, mode);
}

export async function removeFile(path: string): Promise<void> {
  await rm(path, { force: true });
}
