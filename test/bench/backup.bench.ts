// Benchmark: bosun's backups against restic's, same data, same MinIO, same run.
//
//   node dist/test/bench/backup.bench.js [--size 1GiB] [--rounds 3] [--seed N] [--dir /tmp] [--keep]
//
// Each round, with bosun and restic alternating which goes first:
//   1. a full backup of a database-like tree (a few large files of 8 KiB table
//      pages, random files, WAL segments, many small files; deterministic from
//      the seed) into an empty prefix: bosun as the agent makes it (`bosun
//      backup job`, the job on stdin, a fresh BOSUN_STATE_DIR so a fresh set
//      key), restic as `restic backup` into a repository `restic init` made
//      (not timed);
//   2. 1% of the tree changed (64 KiB writes at random offsets in four files,
//      then 64 KiB + 1 byte inserted in the middle of the largest), and a second
//      backup with each: bosun's job with the same state dir (incremental on
//      the set key), restic's into the same repository (its parent snapshot);
//   3. a restore of the second (latest) backup and of the first into fresh
//      directories (`bosun restore`, `restic restore`), each checked against
//      the tree it came from, file by file (SHA-256).
// Every command is its own process, timed from spawn to exit, with its CPU time
// (user + sys) and peak RSS (GNU time, from wait4's rusage), and the CPU MinIO
// spent meanwhile. bosun runs as /usr/bin/bosun does (the bundle with the node
// flags of rpm/bosun.sh). restic runs with its defaults (compression auto,
// cache under the run's work directory); the round's two prefixes are deleted
// at its end. Prints a table of medians, the targets met or missed, and one
// JSON line.
//
// Needs the test services and restic (BOSUN_SERVICES_RESTIC=1 bash
// test/services/up builds it and records it as RESTIC in the state file; a
// RESTIC=/path in the environment overrides).
import { spawn, spawnSync } from 'node:child_process';
import { createHash, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { DeleteObjectsCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { createS3Client, formatBytes } from '../../src/backup/index.js';
import { BACKUP_JOB_FORMAT, type BackupJob, type BackupJobResult } from '../../src/backup/job.js';
import { publicKeyString } from '../../src/identity/seal.js';
import { assertBundleFresh } from '../lab/driver.js';
import { median, repoRoot } from '../helpers.js';
import { requireServices, type ServiceEnv } from '../services/env.js';
import { KeyStream, Rng, TableWriter } from './db-data.js';
import { productNodeFlags } from './node-flags.js';
import { out, parseSize } from './print.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
/** how much of a file is generated, written or hashed at a time */
const BLOCK = 4 * MiB;
/** one write of the 1% change; the insertion is one byte more */
const EDIT = 64 * KiB;
const WAL_SEGMENT = 16 * MiB;
const RESTIC_PASSWORD = 'bosun-bench';
const HOST = 'bench-host';

function args(): { size: number; rounds: number; seed: number; dir: string; keep: boolean } {
  const a = process.argv.slice(2);
  const get = (name: string): string | undefined => {
    const i = a.indexOf(`--${name}`);
    return i >= 0 ? a[i + 1] : undefined;
  };
  const rounds = Number(get('rounds') ?? 3);
  if (!Number.isInteger(rounds) || rounds < 1) throw new Error('--rounds expects a whole number >= 1');
  return { size: parseSize(get('size') ?? '1GiB'), rounds, seed: Number(get('seed') ?? 1), dir: get('dir') ?? tmpdir(), keep: a.includes('--keep') };
}

// ---------------------------------------------------------------- the tree, on disk

type Kind = 'table' | 'random' | 'wal';

/** A file of the tree: its content is a function of kind, size and seed, so any file can be written again as it was. */
interface SourceFile {
  path: string;
  kind: Kind;
  size: number;
  seed: number;
}

/** 10% of the bytes in small files (1-64 KiB), 30% in medium ones (1-16 MiB, every fourth a 16 MiB WAL segment), the rest in large ones (64-256 MiB); half table pages, half random. */
function planTree(seed: number, size: number): SourceFile[] {
  const rng = new Rng(seed);
  const files: SourceFile[] = [];
  const add = (path: string, kind: Kind, n: number): number => {
    files.push({ path, kind, size: n, seed: rng.int(2 ** 32) });
    return n;
  };
  let budget = Math.round(size * 0.1);
  for (let i = 0; budget > 0; i++)
    budget -= add(
      `base/small/${String(Math.floor(i / 100)).padStart(3, '0')}/f${i % 100}`,
      i % 2 ? 'random' : 'table',
      Math.min(budget, rng.between(KiB, 64 * KiB)),
    );
  budget = Math.round(size * 0.3);
  for (let i = 0; budget > 0; i++) {
    if (i % 4 === 3 && budget >= WAL_SEGMENT) budget -= add(`pg_wal/${String(i).padStart(24, '0')}`, 'wal', WAL_SEGMENT);
    else budget -= add(`base/medium/m${i}`, i % 2 ? 'random' : 'table', Math.min(budget, rng.between(MiB, 16 * MiB)));
  }
  budget = size - files.reduce((n, f) => n + f.size, 0);
  for (let i = 0; budget > 0; i++) budget -= add(`base/large/l${i}`, i % 2 ? 'random' : 'table', Math.min(budget, rng.between(64 * MiB, 256 * MiB)));
  return files;
}

/** Generates n bytes of a kind at a time from one seed: table pages, random bytes, or a WAL segment written up to some point and zero after. */
class Filler {
  private readonly rng: Rng;
  private readonly random: KeyStream;
  private readonly table: TableWriter;
  private readonly walWritten: number;
  private at = 0;
  constructor(
    private readonly kind: Kind,
    seed: number,
    size: number,
  ) {
    this.rng = new Rng(seed);
    this.random = new KeyStream(seed, 'backup bench');
    this.table = new TableWriter(new Rng(seed ^ 0x5bd1e995));
    this.walWritten = Math.floor(size * (0.2 + this.rng.int(81) / 100));
  }
  /** the next n bytes (n a multiple of 8 KiB except at the end, so table pages stay whole) */
  next(n: number): Buffer {
    const from = this.at;
    this.at += n;
    if (this.kind === 'table') return this.table.bytes(n);
    if (this.kind === 'random') return this.random.bytes(n);
    const random = Math.max(0, Math.min(n, this.walWritten - from));
    return random === n ? this.random.bytes(n) : Buffer.concat([this.random.bytes(random), Buffer.alloc(n - random)]);
  }
}

/** Writes one file of the tree; returns its SHA-256. */
async function writeSourceFile(root: string, f: SourceFile): Promise<string> {
  const path = join(root, f.path);
  await mkdir(dirname(path), { recursive: true });
  const fill = new Filler(f.kind, f.seed, f.size);
  const hash = createHash('sha256');
  const fh = await open(path, 'w');
  try {
    for (let off = 0; off < f.size; off += BLOCK) {
      const piece = fill.next(Math.min(BLOCK, f.size - off));
      hash.update(piece);
      await fh.write(piece);
    }
  } finally {
    await fh.close();
  }
  return hash.digest('hex');
}

async function hashFile(path: string): Promise<{ size: number; sha: string }> {
  const hash = createHash('sha256');
  const fh = await open(path, 'r');
  const buf = Buffer.allocUnsafe(BLOCK);
  let size = 0;
  try {
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, BLOCK, null);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
      size += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return { size, sha: hash.digest('hex') };
}

/** What a tree must hold: relative path -> size and SHA-256. */
type Expected = Map<string, { size: number; sha: string }>;

/** Every regular file under root (relative paths); throws on anything that is not a file or directory. */
async function listFiles(root: string, rel = ''): Promise<string[]> {
  const found: string[] = [];
  for (const e of await readdir(join(root, rel), { withFileTypes: true })) {
    const p = rel === '' ? e.name : `${rel}/${e.name}`;
    if (e.isDirectory()) found.push(...(await listFiles(root, p)));
    else if (e.isFile()) found.push(p);
    else throw new Error(`${join(root, p)}: neither a file nor a directory`);
  }
  return found;
}

/** Checks that root holds exactly the expected files with the expected bytes. */
async function checkTree(root: string, expected: Expected, what: string): Promise<void> {
  const files = await listFiles(root);
  const extra = files.filter((p) => !expected.has(p));
  const present = new Set(files);
  const missing = [...expected.keys()].filter((p) => !present.has(p));
  if (extra.length > 0 || missing.length > 0)
    throw new Error(
      `${what}: the restored tree differs: ${missing.length} files missing (${missing.slice(0, 3).join(', ')}), ${extra.length} extra (${extra.slice(0, 3).join(', ')})`,
    );
  for (const p of files) {
    const got = await hashFile(join(root, p));
    const want = expected.get(p)!;
    if (got.size !== want.size || got.sha !== want.sha)
      throw new Error(`${what}: ${p} restored as ${got.size} bytes sha256 ${got.sha}, not ${want.size} bytes ${want.sha}`);
  }
}

// ---------------------------------------------------------------- the 1% change

interface ChangePlan {
  targets: SourceFile[];
  writes: Array<{ file: SourceFile; at: number; data: Buffer }>;
  insert: { file: SourceFile; at: number; data: Buffer };
  changedBytes: number;
}

/** 1% of the tree's bytes: 64 KiB writes at random offsets over the largest file and three others of 1 MiB or more, then 64 KiB + 1 byte inserted in the middle of the largest. */
function planChange(seed: number, files: SourceFile[]): ChangePlan {
  const rng = new Rng(seed ^ 0x2545f491);
  const total = files.reduce((n, f) => n + f.size, 0);
  const largest = files.reduce((a, b) => (b.size > a.size ? b : a));
  const others = files.filter((f) => f !== largest && f.size >= MiB);
  const targets = [largest];
  while (targets.length < 4 && others.length > 0) targets.push(others.splice(rng.int(others.length), 1)[0]!);
  const fillers = new Map(targets.map((f, k) => [f, new Filler(f.kind === 'table' ? 'table' : 'random', seed * 31 + k, Number.MAX_SAFE_INTEGER)]));
  const count = Math.max(0, Math.floor((total * 0.01 - (EDIT + 1)) / EDIT));
  const writes = Array.from({ length: count }, (_, w) => {
    const file = targets[w % targets.length]!;
    return { file, at: rng.int(file.size - EDIT + 1), data: fillers.get(file)!.next(EDIT) };
  });
  const insert = {
    file: largest,
    at: Math.floor(largest.size / 2),
    data: fillers
      .get(largest)!
      .next(EDIT + 8 * KiB)
      .subarray(0, EDIT + 1),
  };
  return { targets, writes, insert, changedBytes: count * EDIT + EDIT + 1 };
}

/** Applies the change in place (pwrite for the writes; the insertion writes the file anew beside it and renames it over). */
async function applyChange(root: string, plan: ChangePlan): Promise<void> {
  for (const w of plan.writes) {
    const fh = await open(join(root, w.file.path), 'r+');
    try {
      await fh.write(w.data, 0, w.data.length, w.at);
    } finally {
      await fh.close();
    }
  }
  const path = join(root, plan.insert.file.path);
  const tmp = `${path}.insert`;
  const src = await open(path, 'r');
  const dst = await open(tmp, 'w');
  try {
    const buf = Buffer.allocUnsafe(BLOCK);
    const copy = async (from: number, to: number): Promise<void> => {
      for (let at = from; at < to;) {
        const { bytesRead } = await src.read(buf, 0, Math.min(BLOCK, to - at), at);
        if (bytesRead === 0) throw new Error(`${path}: short read at ${at}`);
        await dst.write(buf, 0, bytesRead);
        at += bytesRead;
      }
    };
    const size = (await src.stat()).size;
    await copy(0, plan.insert.at);
    await dst.write(plan.insert.data);
    await copy(plan.insert.at, size);
  } finally {
    await src.close();
    await dst.close();
  }
  await rename(tmp, path);
}

// ---------------------------------------------------------------- processes and the store

interface Measured {
  seconds: number;
  cpuSeconds: number;
  maxRssBytes: number;
  /** CPU seconds MinIO used meanwhile, when its pid is known */
  minioCpu: number | undefined;
  stdout: string;
}

/** CPU seconds MinIO has used so far: BOSUN_BENCH_MINIO_PID, else the pid file test/services/up wrote. */
function minioCpu(): number | undefined {
  try {
    const cache = process.env.BOSUN_CACHE_DIR || join(repoRoot, '.cache/services');
    const pid = process.env.BOSUN_BENCH_MINIO_PID ?? readFileSync(join(cache, 'run/minio.pid'), 'utf8').trim();
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return undefined;
  }
}

/** Runs a command, timed from spawn to exit, with its CPU time and peak RSS from GNU time (wait4's rusage); input goes to its stdin. */
function measure(argv: string[], opts: { env?: NodeJS.ProcessEnv; input?: string } = {}): Promise<Measured> {
  return new Promise((resolve, reject) => {
    const timeFile = join(tmpdir(), `bosun-bench-time-${process.pid}-${Math.random().toString(36).slice(2)}`);
    const minio0 = minioCpu();
    const started = performance.now();
    const child = spawn('/usr/bin/time', ['-f', '%M %U %S', '-o', timeFile, ...argv], {
      env: opts.env ?? process.env,
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    if (opts.input !== undefined) child.stdin!.end(opts.input);
    child.on('error', reject);
    child.on('close', (code) => {
      const seconds = (performance.now() - started) / 1000;
      const minio1 = minioCpu();
      void readFile(timeFile, 'utf8')
        .then(async (t) => {
          await rm(timeFile, { force: true });
          if (code !== 0) throw new Error(`${argv.join(' ')} exited with ${code}: ${stderr.slice(-2000)}`);
          const [rssKb, user, sys] = t.trim().split('\n').at(-1)!.split(' ').map(Number);
          resolve({
            seconds,
            cpuSeconds: user! + sys!,
            maxRssBytes: rssKb! * 1024,
            minioCpu: minio0 !== undefined && minio1 !== undefined ? minio1 - minio0 : undefined,
            stdout,
          });
        })
        .catch(reject);
    });
  });
}

async function listPrefix(client: S3Client, bucket: string, prefix: string): Promise<Array<{ key: string; size: number }>> {
  const found: Array<{ key: string; size: number }> = [];
  let token: string | undefined;
  do {
    const l = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ...(token ? { ContinuationToken: token } : {}) }));
    for (const c of l.Contents ?? []) found.push({ key: c.Key!, size: c.Size ?? 0 });
    token = l.IsTruncated ? l.NextContinuationToken : undefined;
  } while (token);
  return found;
}

async function prefixBytes(client: S3Client, bucket: string, prefix: string): Promise<number> {
  return (await listPrefix(client, bucket, prefix)).reduce((n, o) => n + o.size, 0);
}

async function deletePrefix(client: S3Client, bucket: string, prefix: string): Promise<void> {
  const keys = (await listPrefix(client, bucket, prefix)).map((o) => ({ Key: o.key }));
  for (let i = 0; i < keys.length; i += 1000) await client.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: keys.slice(i, i + 1000) } }));
}

/** restic's binary: RESTIC (environment or the services' state file), else Debian's /usr/bin/restic with a loud warning. */
function findRestic(env: ServiceEnv): { path: string; warning?: string } {
  if (env.restic) return { path: env.restic };
  if (existsSync('/usr/bin/restic'))
    return {
      path: '/usr/bin/restic',
      warning:
        "WARNING: restic was not built by test/services/up (no RESTIC in the state file): using Debian's /usr/bin/restic, an OLD release; these figures do not compare bosun with current restic",
    };
  throw new Error('restic not found: run BOSUN_SERVICES_RESTIC=1 bash test/services/up (it builds restic and records its path), or set RESTIC=/path/to/restic');
}

// ---------------------------------------------------------------- the run

type Tool = 'bosun' | 'restic';
type Op = 'full' | 'second' | 'restoreLatest' | 'restoreFirst';
const OPS: Op[] = ['full', 'second', 'restoreLatest', 'restoreFirst'];

interface Run extends Measured {
  /** full: bytes the prefix holds after it; second: bytes it added to the prefix */
  storeBytes?: number;
  /** what the tool says it uploaded (bosun: stats.uploadedBytes; restic: data_added_packed) */
  uploadedBytes?: number;
  /** restores: a `sync -f` of the target after the tool exited */
  syncSeconds?: number;
}

async function main(): Promise<void> {
  const o = args();
  const env = await requireServices();
  const restic = findRestic(env);
  const resticVersion = spawnSync(restic.path, ['version'], { encoding: 'utf8' }).stdout.trim();
  assertBundleFresh();
  const nodeFlags = productNodeFlags();
  const cliJs = join(repoRoot, 'dist/bundle/cli.js');
  const work = await mkdtemp(join(o.dir, 'bosun-backup-bench-'));
  const prefix = `bosun-bench/${Date.now().toString(36)}-backup/`;
  const client = createS3Client({
    endpoint: env.s3.endpoint,
    region: env.s3.region,
    credentials: { accessKeyId: env.s3.accessKeyId, secretAccessKey: env.s3.secretAccessKey },
  });
  const storeEnv = { ...process.env, AWS_ACCESS_KEY_ID: env.s3.accessKeyId, AWS_SECRET_ACCESS_KEY: env.s3.secretAccessKey, AWS_REGION: env.s3.region };
  const resticEnv = { ...storeEnv, AWS_DEFAULT_REGION: env.s3.region, RESTIC_PASSWORD, RESTIC_CACHE_DIR: join(work, 'restic-cache') };
  const runs: Record<Tool, Record<Op, Run[]>> = {
    bosun: { full: [], second: [], restoreLatest: [], restoreFirst: [] },
    restic: { full: [], second: [], restoreLatest: [], restoreFirst: [] },
  };
  const line = (tool: Tool, what: string, round: number, m: Run, bytes: number, extra = ''): void =>
    out(
      `  #${round + 1} ${tool.padEnd(6)} ${what.padEnd(15)} ${m.seconds.toFixed(2).padStart(6)} s  ${formatBytes(bytes / m.seconds).padStart(9)}/s  CPU ${m.cpuSeconds.toFixed(1)} s  peak RSS ${formatBytes(m.maxRssBytes)}${m.minioCpu !== undefined ? `  MinIO CPU ${m.minioCpu.toFixed(1)} s` : ''}${extra}`,
    );
  try {
    if (restic.warning) out(`\n${'!'.repeat(100)}\n${restic.warning}\n${'!'.repeat(100)}\n`);
    out(`backup bench: ${resticVersion}; bosun ${cliJs} with node ${nodeFlags.join(' ') || '(no flags)'}`);
    const src = join(work, 'src');
    const files = planTree(o.seed, o.size);
    const v1: Expected = new Map();
    const t0 = performance.now();
    for (const f of files) v1.set(f.path, { size: f.size, sha: await writeSourceFile(src, f) });
    const bytesV1 = files.reduce((n, f) => n + f.size, 0);
    const count = (k: Kind): number => files.filter((f) => f.kind === k).reduce((n, f) => n + f.size, 0);
    out(
      `  tree: ${files.length} files, ${formatBytes(bytesV1)} (table pages ${formatBytes(count('table'))}, random ${formatBytes(count('random'))}, WAL ${formatBytes(count('wal'))}), written in ${((performance.now() - t0) / 1000).toFixed(1)} s to ${src}`,
    );
    const change = planChange(o.seed, files);
    out(
      `  change: ${change.writes.length} writes of 64 KiB over ${change.targets.map((f) => f.path).join(', ')}, and 64 KiB + 1 B inserted in the middle of ${change.insert.file.path}: ${formatBytes(change.changedBytes)} (${((100 * change.changedBytes) / bytesV1).toFixed(2)}% of the tree)`,
    );
    const bytesV2 = bytesV1 + change.insert.data.length;
    const keyFile = join(work, 'recipient.pem');
    const privateKey = generateKeyPairSync('x25519').privateKey;
    await writeFile(keyFile, privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
    const recipient = publicKeyString('x25519', createPublicKey(privateKey));
    await measure(['sync']);

    for (let round = 0; round < o.rounds; round++) {
      const order: Tool[] = round % 2 === 0 ? ['bosun', 'restic'] : ['restic', 'bosun'];
      const bosunPrefix = `${prefix}r${round}/bosun/`;
      const resticPrefix = `${prefix}r${round}/restic/`;
      const repo = `s3:${env.s3.endpoint}/${env.s3.bucket}/${resticPrefix.replace(/\/$/, '')}`;
      const stateDir = join(work, `state-r${round}`);
      await mkdir(stateDir, { recursive: true, mode: 0o700 });
      await measure([restic.path, '-r', repo, 'init'], { env: resticEnv });
      const job: BackupJob = {
        format: BACKUP_JOB_FORMAT,
        source: src,
        bucket: env.s3.bucket,
        prefix: bosunPrefix,
        recipient,
        host: HOST,
        consistency: 'crash-consistent',
        store: {
          endpoint: env.s3.endpoint,
          region: env.s3.region,
          forcePathStyle: true,
          credentials: { accessKeyId: env.s3.accessKeyId, secretAccessKey: env.s3.secretAccessKey },
        },
      };
      const ids: Record<Tool, { first?: string; latest?: string }> = { bosun: {}, restic: {} };

      const backup = async (tool: Tool, op: 'full' | 'second'): Promise<void> => {
        const where = tool === 'bosun' ? bosunPrefix : resticPrefix;
        const before = await prefixBytes(client, env.s3.bucket, where);
        await measure(['sync']);
        const m: Run =
          tool === 'bosun'
            ? await measure([process.execPath, ...nodeFlags, cliJs, 'backup', 'job'], {
                env: { ...process.env, BOSUN_STATE_DIR: stateDir },
                input: JSON.stringify(job),
              })
            : await measure([restic.path, '-r', repo, 'backup', src, '--json', '--host', HOST], { env: resticEnv });
        let id: string;
        if (tool === 'bosun') {
          const r = JSON.parse(m.stdout) as BackupJobResult; // io.data: the result, pretty-printed
          id = r.backupId;
          m.uploadedBytes = r.stats.uploadedBytes;
        } else {
          const summary = m.stdout
            .trim()
            .split('\n')
            .flatMap((l) => {
              try {
                return [JSON.parse(l) as { message_type?: string; snapshot_id?: string; data_added_packed?: number }];
              } catch {
                return [];
              }
            })
            .find((x) => x.message_type === 'summary');
          if (!summary?.snapshot_id) throw new Error(`restic backup printed no summary: ${m.stdout.slice(-1000)}`);
          id = summary.snapshot_id;
          m.uploadedBytes = summary.data_added_packed;
        }
        const after = await prefixBytes(client, env.s3.bucket, where);
        m.storeBytes = op === 'full' ? after : after - before;
        if (op === 'full') ids[tool].first = id;
        ids[tool].latest = id;
        runs[tool][op].push(m);
        line(tool, op === 'full' ? 'full backup' : 'second backup', round, m, op === 'full' ? bytesV1 : bytesV2, `  store +${formatBytes(after - before)}`);
      };

      const restore = async (tool: Tool, op: 'restoreLatest' | 'restoreFirst'): Promise<void> => {
        const dst = join(work, `restore-${tool}`);
        await rm(dst, { recursive: true, force: true });
        await measure(['sync']);
        const id = op === 'restoreLatest' ? ids[tool].latest! : ids[tool].first!;
        const m: Run =
          tool === 'bosun'
            ? await measure(
                [
                  process.execPath,
                  ...nodeFlags,
                  cliJs,
                  'restore',
                  dst,
                  '--bucket',
                  env.s3.bucket,
                  '--prefix',
                  bosunPrefix,
                  '--key-file',
                  keyFile,
                  '--backup',
                  id,
                  '--endpoint',
                  env.s3.endpoint,
                  '--region',
                  env.s3.region,
                ],
                { env: storeEnv },
              )
            : await measure([restic.path, '-r', repo, 'restore', id, '--target', dst], { env: resticEnv });
        // bosun's restore ends with its data on disk; restic's does not: the sync after it is timed apart.
        const t = performance.now();
        await measure(['sync', '-f', dst]);
        m.syncSeconds = (performance.now() - t) / 1000;
        runs[tool][op].push(m);
        const bytes = op === 'restoreLatest' ? bytesV2 : bytesV1;
        line(tool, op === 'restoreLatest' ? 'restore latest' : 'restore first', round, m, bytes, `  (+ sync ${m.syncSeconds.toFixed(2)} s)`);
        // restic restores the backed-up path under the target; bosun restores the tree as the target
        await checkTree(tool === 'bosun' ? dst : join(dst, src), op === 'restoreLatest' ? v2 : v1, `${tool} ${op} round ${round + 1}`);
        await rm(dst, { recursive: true, force: true });
      };

      for (const tool of order) await backup(tool, 'full');
      await applyChange(src, change);
      const v2: Expected = new Map(v1);
      for (const f of change.targets) v2.set(f.path, await hashFile(join(src, f.path)));
      for (const tool of order) await backup(tool, 'second');
      for (const op of ['restoreLatest', 'restoreFirst'] as const) for (const tool of order) await restore(tool, op);

      if (!o.keep) {
        await deletePrefix(client, env.s3.bucket, `${prefix}r${round}/`);
        await rm(stateDir, { recursive: true, force: true });
        await rm(join(work, 'restic-cache'), { recursive: true, force: true });
      }
      // back to the first version for the next round's full backups
      if (round + 1 < o.rounds) for (const f of change.targets) await writeSourceFile(src, f);
    }

    report(o, runs, { bytesV1, bytesV2, files: files.length, resticVersion, resticWarning: restic.warning });
  } finally {
    if (!o.keep) {
      await rm(work, { recursive: true, force: true });
      await deletePrefix(client, env.s3.bucket, prefix);
    }
    client.destroy();
  }
}

// ---------------------------------------------------------------- the report

const PEAK_RSS_LIMIT = 300e6;

function report(
  o: { rounds: number; seed: number },
  runs: Record<Tool, Record<Op, Run[]>>,
  d: { bytesV1: number; bytesV2: number; files: number; resticVersion: string; resticWarning: string | undefined },
): void {
  const med = (tool: Tool, op: Op, f: (r: Run) => number): number => median(runs[tool][op].map(f));
  const secs = (tool: Tool, op: Op): number => med(tool, op, (r) => r.seconds);
  const cpu = (tool: Tool, op: Op): number => med(tool, op, (r) => r.cpuSeconds);
  const bytesOf = (op: Op): number => (op === 'full' || op === 'restoreFirst' ? d.bytesV1 : d.bytesV2);
  const rate = (tool: Tool, op: Op): number => bytesOf(op) / secs(tool, op);
  const cpuPerGiB = (tool: Tool, op: Op): number => cpu(tool, op) / (bytesOf(op) / GiB);
  const maxRss = (tool: Tool, op: Op): number => Math.max(...runs[tool][op].map((r) => r.maxRssBytes));
  const minio = (tool: Tool, op: Op): string =>
    runs[tool][op].every((r) => r.minioCpu !== undefined) ? `${med(tool, op, (r) => r.minioCpu!).toFixed(1)} s` : 'n/a';
  const pct = (a: number, b: number): string => `${((100 * a) / b).toFixed(1)}%`;
  const mib = (n: number): string => formatBytes(n);
  const uploadedFirst = (tool: Tool): number => med(tool, 'full', (r) => r.uploadedBytes ?? r.storeBytes!);
  const names: Record<Op, string> = {
    full: 'full backup',
    second: 'second backup (1% changed)',
    restoreLatest: 'restore of the second',
    restoreFirst: 'restore of the first',
  };
  const [l1, l5] = loadavg();
  out('');
  if (d.resticWarning) out(d.resticWarning);
  out(
    `backup bench: bosun vs ${d.resticVersion}, ${formatBytes(d.bytesV1)} in ${d.files} files (seed ${o.seed}), medians of ${o.rounds} rounds, load average ${l1!.toFixed(1)} / ${l5!.toFixed(1)}`,
  );
  out('');
  out('| operation | figure | bosun | restic | bosun / restic |');
  out('| --- | --- | --- | --- | --- |');
  for (const op of OPS) {
    const sync = op.startsWith('restore') ? (tool: Tool): string => ` (+ sync ${med(tool, op, (r) => r.syncSeconds!).toFixed(2)} s)` : (): string => '';
    out(
      `| ${names[op]} | time, rate | ${secs('bosun', op).toFixed(2)} s, ${mib(rate('bosun', op))}/s${sync('bosun')} | ${secs('restic', op).toFixed(2)} s, ${mib(rate('restic', op))}/s${sync('restic')} | rate x${(rate('bosun', op) / rate('restic', op)).toFixed(2)} |`,
    );
    out(
      `| | CPU (user+sys) | ${cpu('bosun', op).toFixed(1)} s, ${cpuPerGiB('bosun', op).toFixed(2)} s/GiB | ${cpu('restic', op).toFixed(1)} s, ${cpuPerGiB('restic', op).toFixed(2)} s/GiB | x${(cpu('bosun', op) / cpu('restic', op)).toFixed(2)} |`,
    );
    out(`| | peak RSS (max) | ${mib(maxRss('bosun', op))} | ${mib(maxRss('restic', op))} | |`);
    out(`| | MinIO CPU | ${minio('bosun', op)} | ${minio('restic', op)} | |`);
    if (op === 'full')
      out(
        `| | stored in the bucket | ${mib(med('bosun', op, (r) => r.storeBytes!))} (${pct(
          med('bosun', op, (r) => r.storeBytes!),
          d.bytesV1,
        )}) | ${mib(med('restic', op, (r) => r.storeBytes!))} (${pct(
          med('restic', op, (r) => r.storeBytes!),
          d.bytesV1,
        )}) | x${(med('bosun', op, (r) => r.storeBytes!) / med('restic', op, (r) => r.storeBytes!)).toFixed(2)} |`,
      );
    if (op === 'second') {
      const up = (tool: Tool): number => med(tool, op, (r) => r.uploadedBytes ?? r.storeBytes!);
      const added = (tool: Tool): number => med(tool, op, (r) => r.storeBytes!);
      out(
        `| | uploaded (bosun: uploadedBytes; restic: bucket growth) | ${mib(up('bosun'))} (${pct(up('bosun'), uploadedFirst('bosun'))} of the first) | ${mib(added('restic'))} (${pct(
          added('restic'),
          med('restic', 'full', (r) => r.storeBytes!),
        )} of the first) | |`,
      );
      out(`| | bucket growth | ${mib(added('bosun'))} | ${mib(added('restic'))} | |`);
      out(`| | time / first's | ${pct(secs('bosun', op), secs('bosun', 'full'))} | ${pct(secs('restic', op), secs('restic', 'full'))} | |`);
    }
  }

  const bosunPeak = Math.max(...OPS.map((op) => maxRss('bosun', op)));
  const secondUpload = med('bosun', 'second', (r) => r.uploadedBytes ?? r.storeBytes!) / uploadedFirst('bosun');
  const targets: Array<{ target: string; value: number; met: boolean; text: string }> = [
    ((v) => ({ target: 'full backup rate >= 1.5x restic', value: v, met: v >= 1.5, text: `x${v.toFixed(2)}` }))(rate('bosun', 'full') / rate('restic', 'full')),
    ...(['restoreLatest', 'restoreFirst'] as const).map((op) =>
      ((v) => ({ target: `${names[op]} rate >= 1.2x restic`, value: v, met: v >= 1.2, text: `x${v.toFixed(2)}` }))(rate('bosun', op) / rate('restic', op)),
    ),
    ...OPS.map((op) =>
      ((v) => ({ target: `${names[op]}: CPU per byte <= restic's`, value: v, met: v <= 1, text: `x${v.toFixed(2)}` }))(
        cpuPerGiB('bosun', op) / cpuPerGiB('restic', op),
      ),
    ),
    { target: 'peak RSS < 300 MB', value: bosunPeak, met: bosunPeak < PEAK_RSS_LIMIT, text: `${(bosunPeak / 1e6).toFixed(0)} MB (${mib(bosunPeak)})` },
    { target: 'second backup uploads <= 3% of the first', value: secondUpload, met: secondUpload <= 0.03, text: `${(100 * secondUpload).toFixed(2)}%` },
    ((v) => ({ target: "second backup takes <= 25% of the first's time", value: v, met: v <= 0.25, text: `${(100 * v).toFixed(1)}%` }))(
      secs('bosun', 'second') / secs('bosun', 'full'),
    ),
    ((v) => ({ target: 'restore of the second at the rate of the first (>= 0.9x)', value: v, met: v >= 0.9, text: `x${v.toFixed(2)}` }))(
      rate('bosun', 'restoreLatest') / rate('bosun', 'restoreFirst'),
    ),
  ];
  out('');
  out('targets:');
  for (const t of targets) out(`  ${t.met ? 'met   ' : 'MISSED'} ${t.target}: ${t.text}`);
  const raw = (tool: Tool): object =>
    Object.fromEntries(
      OPS.map((op) => [
        op,
        {
          seconds: runs[tool][op].map((r) => r.seconds),
          cpuSeconds: runs[tool][op].map((r) => r.cpuSeconds),
          maxRssBytes: runs[tool][op].map((r) => r.maxRssBytes),
          minioCpuSeconds: runs[tool][op].map((r) => r.minioCpu ?? null),
          ...(op === 'full' || op === 'second'
            ? { storeBytes: runs[tool][op].map((r) => r.storeBytes), uploadedBytes: runs[tool][op].map((r) => r.uploadedBytes ?? null) }
            : {}),
          ...(op.startsWith('restore') ? { syncSeconds: runs[tool][op].map((r) => r.syncSeconds) } : {}),
        },
      ]),
    );
  out(
    JSON.stringify({
      bench: 'backup',
      bytes: d.bytesV1,
      bytesAfterChange: d.bytesV2,
      files: d.files,
      seed: o.seed,
      rounds: o.rounds,
      restic: d.resticVersion,
      resticFallback: d.resticWarning !== undefined,
      bosun: raw('bosun'),
      resticRuns: raw('restic'),
      targets: targets.map((t) => ({ target: t.target, value: t.value, met: t.met })),
      loadavg: [l1, l5],
    }),
  );
}

await main();
