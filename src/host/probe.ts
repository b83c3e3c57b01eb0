import { readdir, realpath, stat as fsStat, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { readFileIfExists } from './files.js';
import { runCommand, type ExecResult, type SecretScrubber } from './exec.js';

/**
 * Read-only questions phases ask about the host while observing. Observing
 * never changes anything, so `bosun plan` may run it on a live host. Probe
 * commands are inspection tools only (lsblk, blkid, mdadm --examine, ...).
 */
export interface HostProbe {
  /** true for the imagined blank host of `bosun plan --blank`: phases plan from nothing */
  readonly blank: boolean;
  /** a file's content, or undefined if it does not exist */
  readFile(path: string): Promise<Buffer | undefined>;
  /** the unit's state in the words of systemctl is-enabled / is-active ("enabled", "active", "not-found", ...) */
  unitState(unit: string): Promise<{ enabled: string; active: string }>;
  /** run an inspection command; never throws for a non-zero exit */
  run(argv: readonly string[]): Promise<ExecResult>;
  /** the symlinks in a directory (such as /dev/disk/by-id) and what they resolve to */
  links(dir: string): Promise<{ name: string; target: string }[]>;
  /** the names in a directory, sorted; empty if it does not exist */
  listDir(dir: string): Promise<string[]>;
  /** owner and permission bits of a path, or undefined if it does not exist */
  stat(path: string): Promise<{ uid: number; gid: number; mode: number } | undefined>;
  /** size, used and available bytes of the filesystem that holds path (as df counts them), or undefined */
  usage(path: string): Promise<VolumeUsage | undefined>;
}

export interface VolumeUsage {
  sizeBytes: number;
  usedBytes: number;
  availBytes: number;
}

/** KEY=VALUE lines (systemctl show, mdadm --export, ...) into a map; key and value trimmed, other lines skipped. */
export function keyValueLines(text: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of text.split('\n')) {
    const i = line.indexOf('=');
    if (i > 0) m.set(line.slice(0, i).trim(), line.slice(i + 1).trim());
  }
  return m;
}

/**
 * `systemctl show --property=LoadState,ActiveState,UnitFileState` of one unit as the words
 * `is-enabled` and `is-active` print: a unit systemd cannot find is "not-found" (and inactive),
 * one without a unit file state (a device, a scope) "unknown".
 */
export function parseUnitShow(text: string): { enabled: string; active: string } {
  const props = keyValueLines(text);
  const load = props.get('LoadState') ?? '';
  const enabled = props.get('UnitFileState') || (load === 'not-found' ? 'not-found' : 'unknown');
  return { enabled, active: props.get('ActiveState') || 'unknown' };
}

export class LiveProbe implements HostProbe {
  readonly blank = false;

  constructor(
    private readonly redactor: SecretScrubber,
    private readonly root = '',
  ) {}

  readFile(path: string): Promise<Buffer | undefined> {
    return readFileIfExists(this.root + path);
  }

  async unitState(unit: string): Promise<{ enabled: string; active: string }> {
    // One `systemctl show` instead of is-enabled + is-active: half the processes per unit, which a health
    // round asks about several times (each systemctl costs ~0.3 s of a small guest's CPU).
    const r = await this.run(['systemctl', 'show', '--property=LoadState,ActiveState,UnitFileState', '--', unit]);
    return r.exitCode === 0 ? parseUnitShow(r.stdout) : { enabled: 'unknown', active: 'unknown' };
  }

  async run(argv: readonly string[]): Promise<ExecResult> {
    try {
      return await runCommand(argv, this.redactor, { check: false, timeoutSeconds: 60 });
    } catch (e) {
      return { exitCode: -1, stdout: '', stderr: e instanceof Error ? e.message : String(e) };
    }
  }

  async links(dir: string): Promise<{ name: string; target: string }[]> {
    let names: string[];
    try {
      names = await readdir(this.root + dir);
    } catch {
      return [];
    }
    const out: { name: string; target: string }[] = [];
    for (const name of names.sort()) {
      const target = await realpath(join(this.root + dir, name)).catch(() => undefined);
      if (target) out.push({ name: join(dir, name), target: this.root ? target.slice(this.root.length) : target });
    }
    return out;
  }

  async listDir(dir: string): Promise<string[]> {
    return (await readdir(this.root + dir).catch(() => [] as string[])).sort();
  }

  async stat(path: string): Promise<{ uid: number; gid: number; mode: number } | undefined> {
    const st = await fsStat(this.root + path).catch(() => undefined);
    return st && { uid: st.uid, gid: st.gid, mode: st.mode & 0o7777 };
  }

  async usage(path: string): Promise<VolumeUsage | undefined> {
    // statfs(2) instead of spawning df: the same numbers (used = blocks - free, avail = what an unprivileged user may use).
    const fs = await statfs(this.root + path).catch(() => undefined);
    return fs && { sizeBytes: fs.blocks * fs.bsize, usedBytes: (fs.blocks - fs.bfree) * fs.bsize, availBytes: fs.bavail * fs.bsize };
  }
}

/** The host as it is before bosun's first boot: nothing there. Used by `bosun plan --blank` and tests. */
export class BlankProbe implements HostProbe {
  readonly blank = true;

  readFile(): Promise<Buffer | undefined> {
    return Promise.resolve(undefined);
  }

  unitState(): Promise<{ enabled: string; active: string }> {
    return Promise.resolve({ enabled: 'disabled', active: 'inactive' });
  }

  run(): Promise<ExecResult> {
    return Promise.resolve({ exitCode: 1, stdout: '', stderr: 'blank host' });
  }

  links(): Promise<{ name: string; target: string }[]> {
    return Promise.resolve([]);
  }

  listDir(): Promise<string[]> {
    return Promise.resolve([]);
  }

  stat(): Promise<undefined> {
    return Promise.resolve(undefined);
  }

  usage(): Promise<undefined> {
    return Promise.resolve(undefined);
  }
}
