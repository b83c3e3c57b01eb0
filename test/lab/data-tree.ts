// A small data set like a database's, made on the host, backed up with the
// real CLI and restored in the guests; and the checksum listings the tests
// compare (host tree vs the guest's data volume).
import { createHash, randomBytes } from 'node:crypto';
import { chmod, chown, link, lstat, mkdir, open, readdir, readFile, readlink, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

const MiB = 1024 * 1024;

/** A few MiB of mixed files: a random table file, a compressible one, a WAL segment, small files. */
export async function makeSource(src: string): Promise<void> {
  await mkdir(join(src, 'base/16384'), { recursive: true });
  await mkdir(join(src, 'pg_wal'));
  await writeFile(join(src, 'base/16384/2619'), randomBytes(12 * MiB + 321));
  await writeFile(join(src, 'base/16384/text'), Buffer.from('row,value\n'.repeat(300_000)));
  await writeFile(join(src, 'pg_wal/000000010000000000000001'), Buffer.alloc(4 * MiB, 7));
  for (let i = 0; i < 40; i++) await writeFile(join(src, `base/16384/small-${i}`), randomBytes(1000 + i * 97));
  await writeFile(join(src, 'PG_VERSION'), '16\n');
}

/** `sha256sum` lines of every regular file under root, in the order `DATA_SUMS` lists them in a guest. */
export async function hostSums(root: string): Promise<string> {
  const files: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    for (const e of await readdir(join(root, rel), { withFileTypes: true })) {
      const p = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(p);
      else if (e.isFile()) files.push(p);
    }
  };
  await walk('');
  files.sort((a, b) => (Buffer.from(`./${a}`) < Buffer.from(`./${b}`) ? -1 : 1));
  const lines: string[] = [];
  for (const f of files)
    lines.push(
      `${createHash('sha256')
        .update(await readFile(join(root, f)))
        .digest('hex')}  ./${f}`,
    );
  return lines.join('\n');
}

/** Guest shell: the same listing for the data volume at `dir`, without what the demo service and bosun write there (and `extra` names). */
export function dataSums(dir: string, extra: string[] = []): string {
  const skip = ['starts', 'last-reload', '.bosun-restored.json', ...extra].map((n) => `! -name ${n}`).join(' ');
  return `cd ${dir} && find . -type f ! -path './lost+found/*' ${skip} -print0 | LC_ALL=C sort -z | xargs -0 sha256sum`;
}

/**
 * A tree with every kind of entry the backup format carries: owners and modes
 * (setuid too), an empty file, a sparse file, symlinks (one dangling), a hard
 * link. Compared with `hostListing` / `guestListing`.
 */
export async function makeEveryKind(src: string): Promise<void> {
  await mkdir(join(src, 'base/16384'), { recursive: true });
  await mkdir(join(src, 'pg_wal'), { mode: 0o700 });
  await writeFile(join(src, 'base/16384/2619'), randomBytes(9 * MiB + 123));
  await writeFile(join(src, 'base/16384/text'), Buffer.from('row,value\n'.repeat(400_000)));
  await writeFile(join(src, 'pg_wal/000000010000000000000001'), Buffer.alloc(4 * MiB));
  await writeFile(join(src, 'PG_VERSION'), '16\n');
  await writeFile(join(src, 'empty'), '');
  const sparse = await open(join(src, 'sparse.img'), 'w');
  await sparse.write(randomBytes(64 * 1024), 0, 64 * 1024, 20 * MiB);
  await sparse.truncate(48 * MiB);
  await sparse.close();
  await symlink('base/16384/2619', join(src, 'current'));
  await symlink('/nowhere/at/all', join(src, 'dangling'));
  await link(join(src, 'PG_VERSION'), join(src, 'base/PG_VERSION.link'));
  await chmod(join(src, 'base/16384/2619'), 0o600);
  await chmod(join(src, 'PG_VERSION'), 0o640);
  await chmod(join(src, 'sparse.img'), 0o4755);
  for (const p of ['base', 'base/16384', 'base/16384/2619', 'base/16384/text', 'pg_wal', 'pg_wal/000000010000000000000001', 'PG_VERSION', 'sparse.img'])
    await chown(join(src, p), 1234, 1234);
  await chmod(src, 0o700);
}

/**
 * One line per entry, sorted: what must survive a restore. Made on the host
 * from the source and in the guest by a shell pipeline (`guestListing`), so
 * the comparison trusts no bosun code.
 *   f <path> <mode> <uid>:<gid> <size> <sha256>   regular file
 *   l <path> <uid>:<gid> -> <target>               symlink
 *   d <path> <mode> <uid>:<gid>                    directory
 * plus "h <a> <b>" for each pair of names of one inode.
 */
export async function hostListing(root: string): Promise<string> {
  const lines: string[] = [];
  const inodes = new Map<number, string>();
  const walk = async (rel: string): Promise<void> => {
    for (const name of (await readdir(join(root, rel))).sort()) {
      const p = rel ? `${rel}/${name}` : name;
      const st = await lstat(join(root, p));
      const own = `${st.uid}:${st.gid}`;
      if (st.isDirectory()) {
        lines.push(`d ${p} ${(st.mode & 0o7777).toString(8)} ${own}`);
        await walk(p);
      } else if (st.isSymbolicLink()) lines.push(`l ${p} ${own} -> ${await readlink(join(root, p))}`);
      else if (st.isFile()) {
        lines.push(
          `f ${p} ${(st.mode & 0o7777).toString(8)} ${own} ${st.size} ${createHash('sha256')
            .update(await readFile(join(root, p)))
            .digest('hex')}`,
        );
        if (st.nlink > 1) {
          const first = inodes.get(st.ino);
          if (first === undefined) inodes.set(st.ino, p);
          else lines.push(`h ${first} ${p}`);
        }
      }
    }
  };
  await walk('');
  return lines.sort((a, b) => (Buffer.from(a) < Buffer.from(b) ? -1 : 1)).join('\n');
}

/** Guest shell: `hostListing`'s lines for the volume at `dir`, without lost+found, bosun's marker and the top-level names in `skip`. */
export function guestListing(dir: string, skip: string[] = []): string {
  const prune = `\\( ${['.bosun-restored.json', 'lost+found', ...skip].map((n) => `-path ./${n}`).join(' -o ')} \\) -prune -o`;
  return `cd ${dir} && {
  find . -mindepth 1 ${prune} -type f -printf 'f %P %m %U:%G %s ' -exec sh -c 'sha256sum < "$1" | cut -d" " -f1' _ {} \\; ;
  find . -mindepth 1 ${prune} -type l -printf 'l %P %U:%G -> %l\\n' ;
  find . -mindepth 1 ${prune} -type d -printf 'd %P %m %U:%G\\n' ;
  find . -mindepth 1 ${prune} -type f -links +1 -printf '%i %P\\n' | sort -n | awk '$1==p {print "h " q " " $2} {p=$1; q=$2}' ;
} | LC_ALL=C sort`;
}
