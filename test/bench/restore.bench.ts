// Benchmark: bosun backup create and restore against MinIO on loopback, side
// by side in one run with `s5cmd cp` of the same bytes stored raw.
//
//   node dist/test/bench/restore.bench.js [--size 1GiB] [--runs N] [--workers N]
//        [--concurrency N] [--slots N] [--verify-files] [--dir /tmp] [--keep]
//        [--variant workers=2,slots=16 ...] [--variant code=/tmp/old-dist ...]
//        [--variant arenas=2 ...] [--variant semi=16 ...]
//
// The default "bosun restore" is the product command: `bosun restore` as
// /usr/bin/bosun runs it (the bundle, dist/bundle/cli.js, with the node flags
// of rpm/bosun.sh), credentials from the environment. Each --variant is another
// restore configuration run in the same rounds as the default one (and s5cmd),
// for comparing settings on one machine state; variants run the restore in a
// harness process (test/bench/child.js) that sets them (`--variant workers=1`
// is the harness with the product's settings).
// code=DIR runs the restore of another build (DIR is its dist directory, e.g.
// a copy of dist/ made before a change), to compare code on one machine state.
// arenas=N runs it with MALLOC_ARENA_MAX=N in its environment (glibc malloc arenas).
// Restores and creates run with the node flags of /usr/bin/bosun (rpm/bosun.sh);
// semi=N runs the restore with --max-semi-space-size=N instead of the product's
// (semi=0: without the flag, V8's default); flag=--some-node-flag adds one
// node (or V8) flag to the product's. directGets=false makes the restore's
// ranged GETs through the SDK instead of bosun's own connections (raw-get.ts);
// flushAheadBytes=0 syncs the restored data only at the end, precreateFiles=false
// creates each file on its first write (src/backup/restore/).
//
// Needs the test services (test/services/up; s5cmd comes with them). Each
// restore and each s5cmd download runs in its own process, timed from spawn
// to exit, with its peak RSS; the two alternate run by run so both see the
// same machine. Prints the figures and one JSON line at the end.
import { spawn } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeleteObjectsCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { createS3Client, formatBytes } from '../../src/backup/index.js';
import { median, repoRoot } from '../helpers.js';
import { requireServices } from '../services/env.js';
import type { BenchChildConfig } from './child.js';
import { assertBundleFresh } from '../lab/driver.js';
import { productNodeFlags } from './node-flags.js';
import { out, parseSize } from './print.js';

const MiB = 1024 * 1024;

type Variant = Partial<Pick<BenchChildConfig, 'workers' | 'concurrency' | 'slots' | 'verifyFiles' | 'directGets' | 'flushAheadBytes' | 'precreateFiles'>> & {
  code?: string;
  arenas?: number;
  semi?: number;
  flag?: string;
};

function parseVariant(v: string): Variant {
  const out: Record<string, number | boolean | string> = {};
  for (const kv of v.split(',')) {
    const eq = kv.indexOf('=');
    const [k, val] = eq < 0 ? [kv, undefined] : [kv.slice(0, eq), kv.slice(eq + 1)];
    if (!['workers', 'concurrency', 'slots', 'verifyFiles', 'directGets', 'flushAheadBytes', 'precreateFiles', 'code', 'arenas', 'semi', 'flag'].includes(k))
      throw new Error(
        `--variant: unknown setting ${k} (workers, concurrency, slots, verifyFiles, directGets, flushAheadBytes, precreateFiles, code, arenas, semi, flag)`,
      );
    out[k] = k === 'code' || k === 'flag' ? (val ?? '') : k === 'verifyFiles' || k === 'directGets' || k === 'precreateFiles' ? val !== 'false' : Number(val);
  }
  return out;
}

function args(): {
  size: number;
  runs: number;
  workers?: number;
  concurrency?: number;
  slots?: number;
  verifyFiles: boolean;
  dir: string;
  keep: boolean;
  variants: Variant[];
} {
  const a = process.argv.slice(2);
  const variants = a.flatMap((x, i) => (x === '--variant' && a[i + 1] ? [parseVariant(a[i + 1]!)] : []));
  const get = (name: string): string | undefined => {
    const i = a.indexOf(`--${name}`);
    return i >= 0 ? a[i + 1] : undefined;
  };
  const workers = get('workers');
  const concurrency = get('concurrency');
  const slots = get('slots');
  const size = parseSize(get('size') ?? a.find((x) => /^\d/.test(x)) ?? '1GiB');
  return {
    ...(slots !== undefined ? { slots: Number(slots) } : {}),
    verifyFiles: a.includes('--verify-files'),
    size,
    // Five rounds up to 2 GiB (a round takes seconds there, and on this VM one round can take half as long again as the next), three above.
    runs: Number(get('runs') ?? (size <= 2 * 1024 * MiB ? 5 : 3)),
    ...(workers !== undefined ? { workers: Number(workers) } : {}),
    ...(concurrency !== undefined ? { concurrency: Number(concurrency) } : {}),
    dir: get('dir') ?? tmpdir(),
    keep: a.includes('--keep'),
    variants,
  };
}

/** A deterministic-enough pseudo-random source that is fast (randomBytes for "random" data). */
function textSource(): Buffer {
  const words =
    'select insert update delete from where order by group the quick brown fox jumps over lazy dog id name value timestamp error warning info debug user account balance'.split(
      ' ',
    );
  const parts: string[] = [];
  let n = 0;
  while (n < 16 * MiB) {
    const w = `${words[Math.floor(Math.random() * words.length)]} ${Math.floor(Math.random() * 100000)}${Math.random() < 0.1 ? '\n' : ' '}`;
    parts.push(w);
    n += w.length;
  }
  return Buffer.from(parts.join(''));
}

/** Text-like content that compresses about 3:1 and does not repeat across files (so chunk dedup gets no free ride). */
function textBlock(base: Buffer, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let off = 0; off < n; off += 65536) {
    const len = Math.min(65536, n - off);
    const at = Math.floor(Math.random() * (base.length - len));
    base.copy(b, off, at, at + len);
  }
  return b;
}

interface DataSet {
  files: number;
  bytes: number;
  compressibleBytes: number;
}

/** Mixed files: 10% of the bytes in many small files, 30% in medium ones, 60% in a few large ones; about half text, half random. */
async function generate(root: string, size: number): Promise<DataSet> {
  const base = textSource();
  let files = 0;
  let bytes = 0;
  let compressible = 0;
  const write = async (path: string, n: number, text: boolean): Promise<void> => {
    const fh = await open(path, 'w');
    try {
      for (let off = 0; off < n; off += 8 * MiB) {
        const len = Math.min(8 * MiB, n - off);
        await fh.write(text ? textBlock(base, len) : randomBytes(len));
      }
    } finally {
      await fh.close();
    }
    files++;
    bytes += n;
    if (text) compressible += n;
  };
  let budget = Math.round(size * 0.1);
  for (let d = 0; budget > 0; d++) {
    const dir = join(root, 'small', String(d).padStart(3, '0'));
    await mkdir(dir, { recursive: true });
    for (let i = 0; i < 100 && budget > 0; i++) {
      const n = Math.min(budget, 1024 + Math.floor(Math.random() * 63 * 1024));
      await write(join(dir, `f${i}.dat`), n, i % 2 === 0);
      budget -= n;
    }
  }
  budget = Math.round(size * 0.3);
  await mkdir(join(root, 'medium'), { recursive: true });
  for (let i = 0; budget > 0; i++) {
    const n = Math.min(budget, MiB + Math.floor(Math.random() * 15 * MiB));
    await write(join(root, 'medium', `m${i}.bin`), n, i % 2 === 0);
    budget -= n;
  }
  budget = size - bytes;
  await mkdir(join(root, 'large'), { recursive: true });
  for (let i = 0; budget > 0; i++) {
    const n = Math.min(budget, 64 * MiB + Math.floor(Math.random() * 192 * MiB));
    await write(join(root, 'large', `l${i}.bin`), n, i % 2 === 1);
    budget -= n;
  }
  return { files, bytes, compressibleBytes: compressible };
}

interface Measured {
  seconds: number;
  maxRssBytes: number;
  cpuSeconds?: number;
  stdout: string;
}

/** Run a command, timed from spawn to exit, with its peak RSS from GNU time. */
function measure(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<Measured> {
  return new Promise((resolve, reject) => {
    const timeFile = join(tmpdir(), `bosun-bench-time-${process.pid}-${Math.random().toString(36).slice(2)}`);
    const started = performance.now();
    const child = spawn('/usr/bin/time', ['-f', '%M %U %S', '-o', timeFile, ...argv], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      const seconds = (performance.now() - started) / 1000;
      void readFile(timeFile, 'utf8')
        .then(async (t) => {
          await rm(timeFile, { force: true });
          if (code !== 0) throw new Error(`${argv.join(' ')} exited with ${code}: ${stderr.slice(-2000)}`);
          const [rssKb, user, sys] = t.trim().split('\n').at(-1)!.split(' ').map(Number);
          resolve({ seconds, maxRssBytes: rssKb! * 1024, cpuSeconds: user! + sys!, stdout });
        })
        .catch(reject);
    });
  });
}

/** CPU seconds MinIO has used so far (utime + stime of its process): BOSUN_BENCH_MINIO_PID, or the pid file test/services/up writes. */
async function minioCpu(): Promise<number | undefined> {
  try {
    const pid = process.env.BOSUN_BENCH_MINIO_PID ?? (await readFile(join(repoRoot, '.cache/services/run/minio.pid'), 'utf8')).trim();
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return undefined;
  }
}

const rate = (bytes: number, seconds: number): string => `${formatBytes(bytes / seconds)}/s`;

async function main(): Promise<void> {
  const o = args();
  const env = await requireServices();
  if (!env.s5cmd) throw new Error('s5cmd not found: run BOSUN_SERVICES_S5CMD=1 bash test/services/up (it builds s5cmd and records its path)');
  const work = await mkdtemp(join(o.dir, 'bosun-bench-'));
  const prefix = `bosun-bench/${Date.now().toString(36)}/`;
  const client = createS3Client({
    endpoint: env.s3.endpoint,
    region: env.s3.region,
    credentials: { accessKeyId: env.s3.accessKeyId, secretAccessKey: env.s3.secretAccessKey },
  });
  // The store's credentials and region, as s5cmd and bosun's CLI read them from the environment.
  const storeEnv = { ...process.env, AWS_ACCESS_KEY_ID: env.s3.accessKeyId, AWS_SECRET_ACCESS_KEY: env.s3.secretAccessKey, AWS_REGION: env.s3.region };
  const s5 = (...a: string[]): string[] => [env.s5cmd!, '--endpoint-url', env.s3.endpoint, ...a];
  const childJs = join(repoRoot, 'dist/test/bench/child.js');
  const nodeFlags = productNodeFlags();
  assertBundleFresh();
  const cliJs = join(repoRoot, 'dist/bundle/cli.js');
  const deletePrefix = async (p: string): Promise<void> => {
    for (;;) {
      const l = await client.send(new ListObjectsV2Command({ Bucket: env.s3.bucket, Prefix: p }));
      const keys = (l.Contents ?? []).map((c) => ({ Key: c.Key! }));
      if (keys.length === 0) break;
      await client.send(new DeleteObjectsCommand({ Bucket: env.s3.bucket, Delete: { Objects: keys } }));
    }
  };
  try {
    const src = join(work, 'src');
    out(`bosun bench: node flags of /usr/bin/bosun: ${nodeFlags.join(' ') || '(none)'}`);
    out(`bosun bench: generating ${formatBytes(o.size)} of mixed files in ${src} ...`);
    const ds = await generate(src, o.size);
    out(`  ${ds.files} files, ${formatBytes(ds.bytes)}, ${Math.round((100 * ds.compressibleBytes) / ds.bytes)}% text-like (compressible), the rest random`);
    await measure(['sync']);

    const keyFile = join(work, 'recipient.pem');
    await writeFile(keyFile, generateKeyPairSync('x25519').privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
    const base: Omit<BenchChildConfig, 'mode'> = {
      endpoint: env.s3.endpoint,
      region: env.s3.region,
      bucket: env.s3.bucket,
      prefix: `${prefix}bosun/`,
      accessKeyId: env.s3.accessKeyId,
      secretAccessKey: env.s3.secretAccessKey,
      keyFile,
      ...(o.workers !== undefined ? { workers: o.workers } : {}),
      ...(o.concurrency !== undefined ? { concurrency: o.concurrency } : {}),
      ...(o.slots !== undefined ? { slots: o.slots } : {}),
      verifyFiles: o.verifyFiles,
    };

    out('uploading the raw copy for s5cmd ...');
    const up = await measure(s5('cp', `${src}/*`, `s3://${env.s3.bucket}/${prefix}raw/`), storeEnv);
    out(`  s5cmd cp upload: ${up.seconds.toFixed(2)} s, ${rate(ds.bytes, up.seconds)}`);

    const creates: Array<{ seconds: number; rss: number; cpu: number; stored: number; backupId: string }> = [];
    for (let i = 0; i < o.runs; i++) {
      const m = await measure([process.execPath, ...nodeFlags, childJs, JSON.stringify({ ...base, mode: 'create', source: src } satisfies BenchChildConfig)]);
      const r = JSON.parse(m.stdout) as { result: { backupId: string; stats: { storedBytes: number } } };
      creates.push({ seconds: m.seconds, rss: m.maxRssBytes, cpu: m.cpuSeconds ?? 0, stored: r.result.stats.storedBytes, backupId: r.result.backupId });
      out(
        `  bosun backup create #${i + 1}: ${m.seconds.toFixed(2)} s, ${rate(ds.bytes, m.seconds)}, peak RSS ${formatBytes(m.maxRssBytes)}, CPU ${(m.cpuSeconds ?? 0).toFixed(1)} s`,
      );
      // Only the last backup is restored: drop the earlier ones so a big run does not fill the disk.
      if (i > 0) await deletePrefix(`${prefix}bosun/backups/${creates[i - 1]!.backupId}/`);
    }
    const backupId = creates.at(-1)!.backupId;
    const stored = creates.at(-1)!.stored;

    const s5runs: Measured[] = [];
    const bosunRuns: Measured[] = [];
    const s5synced: number[] = [];
    const variantRuns: Measured[][] = o.variants.map(() => []);
    const label = (v: Variant): string =>
      Object.entries(v)
        .map(([k, x]) => `${k}=${String(x)}`)
        .join(',');
    for (let i = 0; i < o.runs; i++) {
      const who: Array<'s5cmd' | 'bosun' | number> = ['s5cmd', 'bosun', ...o.variants.map((_, k) => k)];
      // Rotate the order run by run so every one of them sees the same machine on average.
      const order = who.map((_, k) => who[(k + i) % who.length]!);
      for (const w of order) {
        const dst = join(work, `dst-${String(w)}`);
        await rm(dst, { recursive: true, force: true });
        await measure(['sync']);
        const m0 = await minioCpu();
        if (w === 's5cmd') {
          const m = await measure(s5('cp', `s3://${env.s3.bucket}/${prefix}raw/*`, `${dst}/`), storeEnv);
          const m1 = await minioCpu();
          // bosun's restore ends with its data on disk (syncfs before the commit); s5cmd's does not: time that part too.
          const synced = await measure(['sync', '-f', dst]);
          s5runs.push(m);
          s5synced.push(m.seconds + synced.seconds);
          const minio = m0 !== undefined && m1 !== undefined ? `, MinIO CPU ${(m1 - m0).toFixed(1)} s` : '';
          out(
            `  s5cmd cp download #${i + 1}: ${m.seconds.toFixed(2)} s, ${rate(ds.bytes, m.seconds)}, peak RSS ${formatBytes(m.maxRssBytes)}, CPU ${(m.cpuSeconds ?? 0).toFixed(1)} s${minio} (+ sync ${synced.seconds.toFixed(2)} s)`,
          );
        } else {
          const { code, arenas, semi, flag, ...v } = w === 'bosun' ? {} : o.variants[w]!;
          const js = code !== undefined ? join(code, 'test/bench/child.js') : childJs;
          // arenas=N: the restore runs with glibc's MALLOC_ARENA_MAX=N (fewer malloc arenas for its threads).
          const childEnv = arenas !== undefined ? { ...process.env, MALLOC_ARENA_MAX: String(arenas) } : process.env;
          const semiFlags =
            semi === undefined
              ? nodeFlags
              : [...nodeFlags.filter((f) => !f.startsWith('--max-semi-space-size=')), ...(semi > 0 ? [`--max-semi-space-size=${semi}`] : [])];
          const flags = flag ? [...semiFlags, flag] : semiFlags;
          const m =
            w === 'bosun'
              ? // The product command, as /usr/bin/bosun runs it.
                await measure(
                  [
                    process.execPath,
                    ...nodeFlags,
                    cliJs,
                    'restore',
                    dst,
                    '--bucket',
                    env.s3.bucket,
                    '--prefix',
                    `${prefix}bosun/`,
                    '--backup',
                    backupId,
                    '--key-file',
                    keyFile,
                    '--endpoint',
                    env.s3.endpoint,
                    '--region',
                    env.s3.region,
                  ],
                  storeEnv,
                )
              : await measure(
                  [process.execPath, ...flags, js, JSON.stringify({ ...base, ...v, mode: 'restore', target: dst, backupId } satisfies BenchChildConfig)],
                  childEnv,
                );
          const m1 = await minioCpu();
          (w === 'bosun' ? bosunRuns : variantRuns[w]!).push(m);
          const minio = m0 !== undefined && m1 !== undefined ? `, MinIO CPU ${(m1 - m0).toFixed(1)} s` : '';
          out(
            `  bosun restore${w === 'bosun' ? '' : ` [${label(o.variants[w]!)}]`} #${i + 1}: ${m.seconds.toFixed(2)} s, ${rate(ds.bytes, m.seconds)}, peak RSS ${formatBytes(m.maxRssBytes)}, CPU ${(m.cpuSeconds ?? 0).toFixed(1)} s${minio}`,
          );
        }
        await rm(dst, { recursive: true, force: true });
      }
    }

    const createMed = median(creates.map((c) => c.seconds));
    const s5Med = median(s5runs.map((m) => m.seconds));
    const bosunMed = median(bosunRuns.map((m) => m.seconds));
    const ratio = s5Med / bosunMed;
    const [l1, l5] = loadavg();
    out('');
    out(
      `bosun bench, ${formatBytes(ds.bytes)} in ${ds.files} files, medians of ${o.runs} runs, file read-back verification ${o.verifyFiles ? 'on' : 'off'} (load average ${l1!.toFixed(1)} / ${l5!.toFixed(1)}):`,
    );
    out(
      `  backup create   ${createMed.toFixed(2)} s  ${rate(ds.bytes, createMed)}  peak RSS ${formatBytes(median(creates.map((c) => c.rss)))}  stored ${formatBytes(stored)} (${(ds.bytes / stored).toFixed(2)}:1)`,
    );
    out(`  s5cmd cp        ${s5Med.toFixed(2)} s  ${rate(ds.bytes, s5Med)}  peak RSS ${formatBytes(median(s5runs.map((m) => m.maxRssBytes)))}`);
    out(
      `  bosun restore   ${bosunMed.toFixed(2)} s  ${rate(ds.bytes, bosunMed)}  peak RSS ${formatBytes(Math.max(...bosunRuns.map((m) => m.maxRssBytes)))} (max)  CPU ${median(bosunRuns.map((m) => m.cpuSeconds ?? 0)).toFixed(1)} s`,
    );
    out(`  s5cmd cp + sync ${median(s5synced).toFixed(2)} s  ${rate(ds.bytes, median(s5synced))}  (data on disk, as bosun's restore leaves it)`);
    out(
      `  restore rate / s5cmd rate = ${ratio.toFixed(2)}; / (s5cmd + sync) rate = ${(median(s5synced) / bosunMed).toFixed(2)}  (target >= 0.90; peak RSS target < 300 MB)`,
    );
    for (const [k, v] of o.variants.entries()) {
      const med = median(variantRuns[k]!.map((m) => m.seconds));
      out(
        `  variant [${label(v)}]: ${med.toFixed(2)} s  ${rate(ds.bytes, med)}  / s5cmd rate = ${(s5Med / med).toFixed(2)}  peak RSS ${formatBytes(Math.max(...variantRuns[k]!.map((m) => m.maxRssBytes)))} (max)  CPU ${median(variantRuns[k]!.map((m) => m.cpuSeconds ?? 0)).toFixed(1)} s`,
      );
    }
    out(
      JSON.stringify({
        bench: 'restore',
        bytes: ds.bytes,
        files: ds.files,
        runs: o.runs,
        createSeconds: creates.map((c) => c.seconds),
        s5cmdSeconds: s5runs.map((m) => m.seconds),
        s5cmdSyncedSeconds: s5synced,
        restoreSeconds: bosunRuns.map((m) => m.seconds),
        restoreMaxRssBytes: bosunRuns.map((m) => m.maxRssBytes),
        createMaxRssBytes: creates.map((c) => c.rss),
        storedBytes: stored,
        ratio,
        variants: o.variants.map((v, k) => ({
          ...v,
          restoreSeconds: variantRuns[k]!.map((m) => m.seconds),
          maxRssBytes: variantRuns[k]!.map((m) => m.maxRssBytes),
        })),
        verifyFiles: o.verifyFiles,
        loadavg: [l1, l5],
      }),
    );
  } finally {
    if (!o.keep) {
      await rm(work, { recursive: true, force: true });
      await deletePrefix(prefix);
    }
    client.destroy();
  }
}

await main();
