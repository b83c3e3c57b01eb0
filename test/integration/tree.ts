// A directory tree with every kind of entry a backup carries, and a
// description of a tree (content, mode, owner, mtime, link targets, hard-link
// groups) for comparing a restore with its source. Shared by the backup
// integration tests (library and CLI).
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { chmod, chown, link, lstat, lutimes, mkdir, open, readdir, readFile, readlink, symlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';

const MiB = 1024 * 1024;

export function text(n: number, seed = 0): Buffer {
  const words = ['select', 'from', 'where', 'insert', 'update', 'the', 'quick', 'brown', 'fox', 'jumps'];
  const parts: string[] = [];
  let len = 0;
  for (let i = seed; len < n; i++) {
    const w = `${words[(i * 7) % words.length]} ${(i * 31) % 1000}\n`;
    parts.push(w);
    len += w.length;
  }
  return Buffer.from(parts.join('').slice(0, n));
}

export const T0 = 1_600_000_000.123456;

/** A tree with every kind of entry a data directory can hold. Owners and setuid need root, which the tests run as. */
export async function makeTree(root: string): Promise<void> {
  await mkdir(root, { recursive: true });
  await mkdir(join(root, 'docs'));
  await writeFile(join(root, 'docs/readme.txt'), text(300_000));
  await writeFile(join(root, 'docs/empty'), '');
  await mkdir(join(root, 'data'));
  await writeFile(join(root, 'data/big.bin'), randomBytes(2 * MiB + 12345));
  await writeFile(join(root, 'data/compressible.log'), text(3 * MiB, 5));
  const dup = randomBytes(MiB + 999);
  await writeFile(join(root, 'data/dup1'), dup);
  await writeFile(join(root, 'data/dup2'), dup);
  await writeFile(join(root, 'data/zeros.bin'), Buffer.alloc(2 * MiB));
  const fh = await open(join(root, 'data/sparse.img'), 'w');
  await fh.write(text(100_000), 0, 100_000, 0);
  await fh.write(randomBytes(MiB), 0, MiB, 20 * MiB + 123);
  await fh.write(randomBytes(4096), 0, 4096, 64 * MiB - 4096);
  await fh.close();
  await writeFile(join(root, 'data/script.sh'), '#!/bin/sh\necho hi\n');
  await mkdir(join(root, 'hl'));
  await link(join(root, 'data/big.bin'), join(root, 'hl/second-name'));
  await symlink('docs/readme.txt', join(root, 'link-rel'));
  await symlink('/nonexistent/target', join(root, 'dangling'));
  await mkdir(join(root, 'ro'));
  await writeFile(join(root, 'ro/frozen'), 'frozen\n');
  await mkdir(join(root, 'shared'));
  await execa('mkfifo', [join(root, 'pipe')]);

  await chown(join(root, 'docs/readme.txt'), 1001, 1002);
  await chown(join(root, 'data'), 26, 26);
  await chown(join(root, 'data/big.bin'), 26, 26);
  await chown(join(root, 'shared'), 0, 4242);
  await symlink('x', join(root, 'owned-link'));
  await execa('chown', ['-h', '777:778', join(root, 'owned-link')]);
  await chmod(join(root, 'docs/empty'), 0o600);
  await chmod(join(root, 'data/script.sh'), 0o4755);
  await chmod(join(root, 'ro/frozen'), 0o444);
  await chmod(join(root, 'data'), 0o700);
  await chmod(join(root, 'shared'), 0o2770);
  await chmod(root, 0o750);
  let i = 0;
  for (const p of [
    'docs/readme.txt',
    'docs/empty',
    'data/big.bin',
    'data/compressible.log',
    'data/dup1',
    'data/dup2',
    'data/zeros.bin',
    'data/sparse.img',
    'data/script.sh',
    'ro/frozen',
  ]) {
    await utimes(join(root, p), T0 + i, T0 + 1000 + i++);
  }
  for (const p of ['link-rel', 'dangling', 'owned-link']) await lutimes(join(root, p), T0, T0 + 50 + i++);
  await chmod(join(root, 'ro'), 0o555);
  for (const p of ['docs', 'data', 'hl', 'ro', 'shared', '.']) await utimes(join(root, p), T0, T0 + 5000 + i++);
}

export interface Described {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  /** microseconds */
  mtimeUs: bigint;
  size?: number;
  sha256?: string;
  target?: string;
  /** other names of the same inode */
  links?: string[];
}

/** Everything bosun promises to keep, per path (sockets and fifos are left out: backups do not carry them); `skip` leaves more paths out. */
export async function describeTree(root: string, skip: readonly string[] = []): Promise<Map<string, Described>> {
  const out = new Map<string, Described>();
  const inodes = new Map<bigint, string[]>();
  const walk = async (rel: string): Promise<void> => {
    if (skip.includes(rel)) return;
    const abs = rel === '.' ? root : join(root, rel);
    const st = await lstat(abs, { bigint: true });
    const base = { mode: Number(st.mode & 0o7777n), uid: Number(st.uid), gid: Number(st.gid), mtimeUs: st.mtimeNs / 1000n };
    if (st.isDirectory()) {
      out.set(rel, { type: 'dir', ...base });
      for (const n of (await readdir(abs)).sort()) await walk(rel === '.' ? n : `${rel}/${n}`);
    } else if (st.isFile()) {
      const names = inodes.get(st.ino) ?? [];
      names.push(rel);
      inodes.set(st.ino, names);
      out.set(rel, {
        type: 'file',
        ...base,
        size: Number(st.size),
        sha256: createHash('sha256')
          .update(await readFile(abs))
          .digest('hex'),
      });
    } else if (st.isSymbolicLink()) {
      out.set(rel, { type: 'symlink', ...base, mode: 0, target: await readlink(abs) });
    }
  };
  await walk('.');
  for (const names of inodes.values()) for (const n of names) out.get(n)!.links = names.filter((x) => x !== n);
  return out;
}

export function assertSameTree(actual: Map<string, Described>, expected: Map<string, Described>): void {
  assert.deepEqual([...actual.keys()].sort(), [...expected.keys()].sort());
  for (const [p, e] of expected) {
    const a = actual.get(p)!;
    const diff = a.mtimeUs - e.mtimeUs;
    assert.ok(diff >= -1n && diff <= 1n, `${p}: mtime ${a.mtimeUs} µs, expected ${e.mtimeUs} µs`);
    assert.deepEqual({ ...a, mtimeUs: 0n }, { ...e, mtimeUs: 0n }, p);
  }
}
