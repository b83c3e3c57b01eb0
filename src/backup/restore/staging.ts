import { constants } from 'node:fs';
import { mkdir, open, readdir, symlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Logger } from '../../log.js';
import { Redactor } from '../../secrets/redact.js';
import { runCommand } from '../../host/exec.js';
import { errnoOf } from '../errors.js';
import type { ManifestBody } from '../format.js';
import { syncDir } from '../target.js';
import { forEachLimited } from './for-each-limited.js';

// The staging tree on disk around the data: directories and symlinks before
// it, files created ahead of it, its write-back started while it downloads,
// and the sync that makes all of it durable before the commit.

/** Directories and symlinks first (files appear on their first write, or are created ahead). */
export async function createDirsAndSymlinks(body: ManifestBody, staging: string): Promise<void> {
  for (const entry of body.entries) {
    const path = join(staging, entry.path);
    try {
      if (entry.type === 'dir' && entry.path !== '.') await mkdir(path, { mode: 0o700 });
      if (entry.type === 'symlink') await symlink(entry.target, path);
    } catch (err) {
      if (errnoOf(err) !== 'EEXIST') throw err;
    }
  }
}

/** Directories whose files are created at the same time, each by its own creator. */
export const PRECREATORS = 2;

/** Create (empty, 0600) every file in `paths`, which are grouped by directory: `parallel` directories at a time. */
export async function precreate(paths: string[], parallel: number, signal: AbortSignal, log: Logger | undefined): Promise<void> {
  const byDir: string[][] = [];
  let lastDir: string | undefined;
  for (const path of paths) {
    const dir = dirname(path);
    if (dir !== lastDir) byDir.push([]);
    lastDir = dir;
    byDir.at(-1)!.push(path);
  }
  try {
    await forEachLimited(byDir.length, parallel, async (dirIndex) => {
      for (const path of byDir[dirIndex]!) {
        if (signal.aborted) return;
        await (await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_NOFOLLOW, 0o600)).close();
      }
    });
  } catch (e) {
    // Only an optimisation: the write that needs the file creates it, and reports any error.
    log?.debug({ err: e instanceof Error ? e.message : String(e) }, 'restore: stopped creating files ahead');
  }
}

/**
 * Write-back ahead: the kernel would leave a restore's data in the page cache
 * until the final sync (a host with much memory keeps gigabytes dirty), and
 * that sync would then wait for all of it with nothing else to do. A syncfs
 * every `every` bytes written writes it out while the next chunks download.
 */
export class FlushAhead {
  #sinceFlush = 0;
  #flushing: Promise<void> | undefined;
  #off: boolean;

  constructor(
    readonly dir: string,
    readonly every: number,
    readonly log: Logger | undefined,
  ) {
    this.#off = every <= 0;
  }

  /** `bytes` more were written: start a syncfs once enough were since the last one, if none is running. */
  wrote(bytes: number): void {
    this.#sinceFlush += bytes;
    if (this.#off || this.#flushing || this.#sinceFlush < this.every) return;
    this.#sinceFlush = 0;
    const startedAt = performance.now();
    this.#flushing = syncfs(this.dir)
      .then(
        () => this.log?.debug({ ms: Math.round(performance.now() - startedAt) }, 'restore: flushed ahead'),
        (e: unknown) => {
          // Only an optimisation: the final sync (with its fallback) still makes everything durable.
          this.#off = true;
          this.log?.info({ err: e instanceof Error ? e.message : String(e) }, 'restore: cannot flush ahead (sync -f); the data is synced once at the end');
        },
      )
      .finally(() => (this.#flushing = undefined));
  }

  /** The flush under way, if any. */
  get running(): Promise<void> | undefined {
    return this.#flushing;
  }
}

/** syncfs(2) of the filesystem holding `dir`, through `sync -f`. */
export async function syncfs(dir: string): Promise<void> {
  await runCommand(['sync', '-f', dir], new Redactor(), { timeoutSeconds: 600 });
}

/** Make everything written to the staging tree durable: syncfs, or fsync of every file and directory if that fails. */
export async function syncTree(staging: string): Promise<void> {
  try {
    await syncfs(staging);
  } catch {
    await fsyncTree(staging);
  }
}

async function fsyncTree(dir: string): Promise<void> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) await fsyncTree(path);
    else if (entry.isFile()) {
      const fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
    }
  }
  await syncDir(dir);
}
