// Saved guest state: a lab guest booted once, stopped and saved (qemu
// migration to a file) with its root overlay frozen beside it. A test guest
// that only needs "a running guest" starts from it in seconds instead of
// booting for ~45-90 s under TCG: its own overlay chains on the frozen one,
// qemu loads the memory, and the driver then gives the guest its own identity
// (hostname, MACs, address, clock, fresh randomness) and plugs in its disks.
//
// Cached in <lab cache>/saved/<key>/{root.qcow2, state.bin, meta.json}. The
// key covers the image, the qemu binary and SAVED_STATE_RECIPE (bump it when
// the machine's devices change: a saved state only loads into a machine with
// the same devices). A state is built under a lock (two lanes may ask at
// once) in a temporary directory renamed into place last.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** Bump when the guest machine's devices or the saving procedure change. */
export const SAVED_STATE_RECIPE = 'saved-state-1: q35 qemu64 1 vCPU 1024 MiB, 6 disk root ports, vmgenid, virtio-rng, 9p unmounted';

/** Saved states kept (newest first); older ones are removed when a new one is made. */
const KEEP = 2;

export interface SavedState {
  key: string;
  dir: string;
  /** The frozen root overlay (read-only), backed by the image's root.qcow2. */
  overlay: string;
  /** The migration stream qemu loads with -incoming. */
  stateFile: string;
}

export interface SavedStateMeta {
  key: string;
  image: string;
  recipe: string;
  qemu: string;
  createdAt: string;
  bootMs: number;
  saveMs: number;
  stateBytes: number;
}

function qemuVersion(qemu: string): string {
  const r = spawnSync(qemu, ['--version'], { encoding: 'utf8' });
  return (r.stdout ?? '').split('\n')[0] ?? 'unknown';
}

export function savedStateKey(imageDir: string, qemu: string): string {
  return createHash('sha256')
    .update(`${imageDir}\n${qemuVersion(qemu)}\n${SAVED_STATE_RECIPE}`)
    .digest('hex')
    .slice(0, 16);
}

function stateAt(root: string, key: string): SavedState {
  const dir = join(root, key);
  return { key, dir, overlay: join(dir, 'root.qcow2'), stateFile: join(dir, 'state.bin') };
}

function isComplete(state: SavedState): boolean {
  return existsSync(join(state.dir, 'meta.json')) && existsSync(state.overlay) && existsSync(state.stateFile);
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Takes <root>/.lock (a directory holding the owner's pid); a lock whose owner is gone is taken over. */
async function withLock<T>(root: string, what: () => Promise<T>, onWait: () => void): Promise<T> {
  const lock = join(root, '.lock');
  let told = false;
  for (;;) {
    try {
      mkdirSync(lock);
      writeFileSync(join(lock, 'pid'), String(process.pid));
      break;
    } catch {
      const owner = Number(readFileSync(join(lock, 'pid'), { encoding: 'utf8', flag: 'a+' }) || 'NaN');
      if (Number.isInteger(owner) && !pidAlive(owner)) {
        rmSync(lock, { recursive: true, force: true });
        continue;
      }
      if (!told) onWait();
      told = true;
      await sleep(1000);
    }
  }
  try {
    return await what();
  } finally {
    rmSync(lock, { recursive: true, force: true });
  }
}

function pruneOld(root: string, keep: string): void {
  const states = readdirSync(root)
    .filter((n) => /^[0-9a-f]{16}$/.test(n) && n !== keep)
    .map((n) => ({ n, at: statSync(join(root, n)).mtimeMs }))
    .sort((a, b) => b.at - a.at);
  for (const old of states.slice(KEEP - 1)) rmSync(join(root, old.n), { recursive: true, force: true });
  for (const n of readdirSync(root)) if (n.startsWith('.tmp-')) rmSync(join(root, n), { recursive: true, force: true });
}

/**
 * The saved state for this image and qemu: found in the cache, or made by
 * build(tmpDir), which must leave root.qcow2 and state.bin in tmpDir and
 * return the figures for meta.json.
 */
export async function ensureSavedState(opts: {
  cacheDir: string;
  imageDir: string;
  qemu: string;
  build: (tmpDir: string) => Promise<{ bootMs: number; saveMs: number }>;
  onProgress?: (line: string) => void;
}): Promise<SavedState> {
  const root = join(opts.cacheDir, 'saved');
  mkdirSync(root, { recursive: true });
  const key = savedStateKey(opts.imageDir, opts.qemu);
  const state = stateAt(root, key);
  if (isComplete(state)) return state;
  return withLock(
    root,
    async () => {
      if (isComplete(state)) return state;
      pruneOld(root, key);
      const tmp = join(root, `.tmp-${key}-${process.pid}`);
      rmSync(tmp, { recursive: true, force: true });
      mkdirSync(tmp);
      opts.onProgress?.(`lab: saving a booted guest for later starts (${key}; one boot, once per image)`);
      const figures = await opts.build(tmp);
      const meta: SavedStateMeta = {
        key,
        image: opts.imageDir,
        recipe: SAVED_STATE_RECIPE,
        qemu: qemuVersion(opts.qemu),
        createdAt: new Date().toISOString(),
        ...figures,
        stateBytes: statSync(join(tmp, 'state.bin')).size,
      };
      writeFileSync(join(tmp, 'meta.json'), `${JSON.stringify(meta, null, 2)}\n`);
      rmSync(state.dir, { recursive: true, force: true });
      renameSync(tmp, state.dir);
      opts.onProgress?.(`lab: saved state ${key} ready (boot ${(figures.bootMs / 1000).toFixed(1)} s, save ${(figures.saveMs / 1000).toFixed(1)} s)`);
      return state;
    },
    () => opts.onProgress?.(`lab: waiting for another process saving the guest state (${root}/.lock)`),
  );
}

export function readSavedStateMeta(state: SavedState): SavedStateMeta {
  return JSON.parse(readFileSync(join(state.dir, 'meta.json'), 'utf8')) as SavedStateMeta;
}
