import { constants } from 'node:fs';
import { lstat, mkdir, open, readdir, rename, rm, rmdir, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { BackupError, errnoOf } from './errors.js';
import { readJournal } from './journal.js';

/**
 * Where a restore writes while it runs, and how it commits.
 *
 * - "rename": the target does not exist. Everything is written into a hidden
 *   sibling, `.<name>.bosun-restore`, and renamed to the target in one step
 *   once every byte is verified; the target never exists half-made.
 * - "into": the target is an existing empty directory (typically the data
 *   volume's mount point, which cannot be replaced by a rename). Everything is
 *   written into `<target>/.bosun-restore` and moved up entry by entry at the
 *   commit; until the commit has finished, `<target>/.bosun-restore.journal`
 *   exists and says the directory is not a complete restore.
 *
 * The journal sits beside the staging directory, so it is on the same
 * filesystem and is removed with it.
 */
export interface TargetLayout {
  mode: 'rename' | 'into';
  target: string;
  staging: string;
  journal: string;
}

export const STAGING_NAME = '.bosun-restore';
export const JOURNAL_NAME = '.bosun-restore.journal';
/** what may already be in an "empty" target: a fresh filesystem's lost+found, and our own staging */
const IGNORABLE = new Set([STAGING_NAME, JOURNAL_NAME, 'lost+found']);

export function renameLayout(target: string): TargetLayout {
  const staging = join(dirname(target), `.${basename(target)}${STAGING_NAME}`);
  return { mode: 'rename', target, staging, journal: `${staging}.journal` };
}

export function intoLayout(target: string): TargetLayout {
  return { mode: 'into', target, staging: join(target, STAGING_NAME), journal: join(target, JOURNAL_NAME) };
}

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (e) {
    if (errnoOf(e) === 'ENOENT') return false;
    throw e;
  }
}

/** Decide the layout for `target`, or refuse a target that holds anything bosun did not put there. */
export async function chooseLayout(target: string): Promise<TargetLayout> {
  const asRename = renameLayout(target);
  if (await readJournal(asRename.journal)) return asRename;
  let st;
  try {
    st = await lstat(target);
  } catch (e) {
    if (errnoOf(e) === 'ENOENT') return asRename;
    throw new BackupError('target', `cannot inspect restore target ${target}: ${errnoOf(e) ?? String(e)}`, { target });
  }
  if (!st.isDirectory()) throw new BackupError('target', `restore target ${target} exists and is not a directory; refusing to touch it`, { target });
  const asInto = intoLayout(target);
  // Our own unfinished restore (perhaps stopped half-way through moving entries up at the commit).
  if (await readJournal(asInto.journal)) return asInto;
  const names = await readdir(target);
  const foreign = names.filter((n) => !IGNORABLE.has(n));
  if (foreign.length > 0) {
    throw new BackupError(
      'target',
      `restore target ${target} is not empty (it holds ${foreign.slice(0, 3).join(', ')}${foreign.length > 3 ? ', …' : ''}); bosun restores only into a missing or empty directory and never overwrites data`,
      { target, entries: foreign.length },
    );
  }
  return asInto;
}

/** Remove what an abandoned restore (another backup) left in the staging directory. */
export async function clearStaging(layout: TargetLayout): Promise<void> {
  await rm(layout.staging, { recursive: true, force: true });
}

/** Commit: make the staged tree the target. Safe to run again after a crash part-way. */
export async function commitLayout(layout: TargetLayout): Promise<void> {
  if (layout.mode === 'rename') {
    if (await exists(layout.staging)) await rename(layout.staging, layout.target);
    await syncDir(dirname(layout.target));
    return;
  }
  if (await exists(layout.staging)) {
    for (const name of await readdir(layout.staging)) await rename(join(layout.staging, name), join(layout.target, name));
    await rmdir(layout.staging);
  }
  await syncDir(layout.target);
}

export async function syncDir(dir: string): Promise<void> {
  const dh = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}

export async function ensureStaging(layout: TargetLayout): Promise<void> {
  await mkdir(layout.staging, { recursive: true, mode: 0o700 });
}

/**
 * Open files of the staging tree, shared by all downloads. A file is opened on
 * its first write (O_CREAT, never O_TRUNC, so a resumed restore keeps what it
 * wrote) and kept open for the next chunks; at most `limit` stay open.
 */
export class HandlePool {
  readonly #open = new Map<string, { fh: Promise<FileHandle>; refs: number; lastUse: number }>();
  #tick = 0;

  constructor(readonly limit = 128) {}

  async use<T>(path: string, fn: (fh: FileHandle) => Promise<T>): Promise<T> {
    let slot = this.#open.get(path);
    if (!slot) {
      slot = { fh: open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_NOFOLLOW, 0o600), refs: 0, lastUse: 0 };
      this.#open.set(path, slot);
      const mine = slot;
      void slot.fh.catch(() => {
        if (this.#open.get(path) === mine) this.#open.delete(path);
      });
    }
    slot.refs++;
    slot.lastUse = ++this.#tick;
    try {
      const fh = await slot.fh;
      return await fn(fh);
    } finally {
      slot.refs--;
      if (this.#open.size > this.limit) await this.#evict();
    }
  }

  async #evict(): Promise<void> {
    const idle = [...this.#open.entries()].filter(([, s]) => s.refs === 0).sort((a, b) => a[1].lastUse - b[1].lastUse);
    // Take every victim out of the map before the first await, so no use() can pick one up while it closes.
    const closing = idle.slice(0, this.#open.size - this.limit + 16).map(([path, s]) => {
      this.#open.delete(path);
      return s.fh.then((fh) => fh.close());
    });
    await Promise.all(closing);
  }

  /** Close a file that will not be written again (if no write is using it). */
  async forget(path: string): Promise<void> {
    const s = this.#open.get(path);
    if (!s || s.refs > 0) return;
    this.#open.delete(path);
    await (await s.fh).close();
  }

  async closeAll(): Promise<void> {
    const all = [...this.#open.values()];
    this.#open.clear();
    await Promise.allSettled(all.map(async (s) => (await s.fh).close()));
  }
}
