// A small data set like a database's, made on the host, backed up with the
// real CLI and restored in the guests; and the checksum listings the tests
// compare (host tree vs the guest's data volume).
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
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
  for (const f of files) lines.push(`${createHash('sha256').update(await readFile(join(root, f))).digest('hex')}  ./${f}`);
  return lines.join('\n');
}

/** Guest shell: the same listing for the data volume at `dir`, without what the demo service and bosun write there (and `extra` names). */
export function dataSums(dir: string, extra: string[] = []): string {
  const skip = ['starts', 'last-reload', '.bosun-restored.json', ...extra].map((n) => `! -name ${n}`).join(' ');
  return `cd ${dir} && find . -type f ! -path './lost+found/*' ${skip} -print0 | LC_ALL=C sort -z | xargs -0 sha256sum`;
}
