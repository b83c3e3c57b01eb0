// Benchmark: fixed-size slices against content-defined chunks (src/backup/chunker.ts)
// for incremental backups. Pure CPU, in memory, no store.
//
//   node dist/test/bench/chunking.bench.js [--size 1GiB] [--seed N]
//
// Builds a database-like tree (a few large files, some medium ones and WAL
// segments, many small files; half page-structured table data, half random),
// then a second version with 1% of its bytes changed: 64 KiB writes at
// unaligned offsets in a few files, and one 64 KiB block inserted in the
// middle of the largest file. For each chunker it counts the chunks of both
// versions and the "new bytes": the plain size of the distinct chunks of v2
// whose SHA-256 is not among v1's, which is what an incremental backup would
// upload. The acceptance bar is new bytes <= 3% of the tree. A second column
// ("+1 B") inserts one byte more: a 64 KiB shift keeps fixed 64 KiB slices
// aligned, which an insertion of any other size does not. It also times the
// chunker's own cut-point search (CPU time, median of 3 passes over the tree,
// one core) apart from SHA-256, which every chunker pays alike. Prints a table
// and one JSON line at the end.
import { createHash } from 'node:crypto';
import { Chunker, type ChunkParams } from '../../src/backup/chunker.js';
import { formatBytes } from '../../src/backup/progress.js';
import { median } from '../helpers.js';
import { KeyStream, Rng, TableWriter } from './db-data.js';
import { out, parseSize } from './print.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
/** what a reader hands the chunker at a time (the backup's read slots are 4 MiB) */
const READ_BLOCK = 4 * MiB;
const EDIT = 64 * KiB;
const WAL_SEGMENT = 16 * MiB;
/** an estimate of one chunk's entry in a manifest (hash, length, pack, offset, framing) */
const MANIFEST_BYTES_PER_CHUNK = 100;
const TIMED_PASSES = 3;

function args(): { size: number; seed: number } {
  const a = process.argv.slice(2);
  const get = (name: string): string | undefined => {
    const i = a.indexOf(`--${name}`);
    return i >= 0 ? a[i + 1] : undefined;
  };
  return { size: parseSize(get('size') ?? '1GiB'), seed: Number(get('seed') ?? 1) };
}

type Kind = 'table' | 'random' | 'wal';

interface TreeFile {
  path: string;
  kind: Kind;
  data: Buffer;
}

interface Content {
  rng: Rng;
  random: KeyStream;
  table: TableWriter;
}

function content(seed: number): Content {
  const rng = new Rng(seed);
  return { rng, random: new KeyStream(seed), table: new TableWriter(new Rng(seed ^ 0x5bd1e995)) };
}

/** n bytes of a kind: table pages, random bytes (compressed or encrypted files), or a WAL segment written up to some point and zero after. */
function fill(c: Content, kind: Kind, n: number): Buffer {
  if (kind === 'table') return c.table.bytes(n);
  if (kind === 'random') return c.random.bytes(n);
  const written = Math.floor(n * (0.2 + c.rng.int(81) / 100));
  return Buffer.concat([c.random.bytes(written), Buffer.alloc(n - written)]);
}

/** 10% of the bytes in small files (1-64 KiB), 30% in medium ones (1-16 MiB, every fourth a 16 MiB WAL segment), the rest in large files (64-256 MiB). */
function makeTree(c: Content, size: number): TreeFile[] {
  const files: TreeFile[] = [];
  const add = (path: string, kind: Kind, n: number): number => {
    files.push({ path, kind, data: fill(c, kind, n) });
    return n;
  };
  let budget = Math.round(size * 0.1);
  for (let i = 0; budget > 0; i++)
    budget -= add(`base/small/${Math.floor(i / 100)}/f${i % 100}`, i % 2 ? 'random' : 'table', Math.min(budget, c.rng.between(KiB, 64 * KiB)));
  budget = Math.round(size * 0.3);
  for (let i = 0; budget > 0; i++) {
    if (i % 4 === 3 && budget >= WAL_SEGMENT) budget -= add(`pg_wal/${String(i).padStart(24, '0')}`, 'wal', WAL_SEGMENT);
    else budget -= add(`base/medium/m${i}`, i % 2 ? 'random' : 'table', Math.min(budget, c.rng.between(MiB, 16 * MiB)));
  }
  budget = size - treeBytes(files);
  for (let i = 0; budget > 0; i++) budget -= add(`base/large/l${i}`, i % 2 ? 'random' : 'table', Math.min(budget, c.rng.between(64 * MiB, 256 * MiB)));
  return files;
}

// ---------------------------------------------------------------- the change

interface FileChange {
  path: string;
  kind: Kind;
  sizeBefore: number;
  writeOffsets: number[];
  insertAt?: number;
}

/**
 * v2 of the tree: 1% of its bytes changed, as writes of 64 KiB at random
 * (unaligned) offsets spread over the largest file and three others of at
 * least 1 MiB, then one 64 KiB block inserted in the middle of the largest.
 * A shift by 64 KiB leaves fixed slices of 64 KiB (or any divisor) aligned
 * after the insertion, so `v2odd` is the same change with one more byte
 * inserted: the shift of an insertion of any other size. Unchanged files
 * share their buffer with v1.
 */
function changeTree(c: Content, v1: TreeFile[]): { v2: TreeFile[]; v2odd: TreeFile[]; changes: FileChange[] } {
  const total = treeBytes(v1);
  const largest = v1.reduce((a, b) => (b.data.length > a.data.length ? b : a));
  const others = v1.filter((f) => f !== largest && f.data.length >= MiB);
  const targets = [largest];
  while (targets.length < 4 && others.length > 0) targets.push(others.splice(c.rng.int(others.length), 1)[0]!);
  const writes = Math.max(0, Math.floor((total * 0.01 - EDIT) / EDIT));
  const changes: FileChange[] = targets.map((f) => ({ path: f.path, kind: f.kind, sizeBefore: f.data.length, writeOffsets: [] }));
  const edited = new Map(targets.map((f) => [f, Buffer.from(f.data)]));
  for (let w = 0; w < writes; w++) {
    const k = w % targets.length;
    const data = edited.get(targets[k]!)!;
    const at = c.rng.int(data.length - EDIT + 1);
    fill(c, targets[k]!.kind, EDIT).copy(data, at);
    changes[k]!.writeOffsets.push(at);
  }
  const middle = Math.floor(largest.data.length / 2);
  const big = edited.get(largest)!;
  const block = fill(c, largest.kind, EDIT + 1);
  const inserted = (n: number): Buffer => Buffer.concat([big.subarray(0, middle), block.subarray(0, n), big.subarray(middle)]);
  changes[0]!.insertAt = middle;
  const version = (largestData: Buffer): TreeFile[] => v1.map((f) => ({ ...f, data: f === largest ? largestData : (edited.get(f) ?? f.data) }));
  return { v2: version(inserted(EDIT)), v2odd: version(inserted(EDIT + 1)), changes };
}

function printChanges(changes: FileChange[], total: number): void {
  const writes = changes.reduce((sum, ch) => sum + ch.writeOffsets.length, 0);
  out(`changed: ${writes} writes of 64 KiB and 1 insertion of 64 KiB = ${formatBytes((writes + 1) * EDIT)} (${pct((writes + 1) * EDIT, total)} of the tree):`);
  for (const ch of changes) {
    out(
      `  ${ch.path} (${ch.kind}, ${ch.sizeBefore} bytes): ${ch.writeOffsets.length} writes at offsets ${[...ch.writeOffsets].sort((a, b) => a - b).join(' ')}`,
    );
    if (ch.insertAt !== undefined) out(`  ${ch.path}: 65536 bytes (65537 in the "+1 B" variant) inserted at offset ${ch.insertAt}, after the writes`);
  }
}

// ---------------------------------------------------------------- chunkers

interface ChunkerSpec {
  name: string;
  /** calls each(start, end) for every chunk of a file, in order */
  cut: (file: Buffer, each: (start: number, end: number) => void) => void;
  cdc: boolean;
}

function fixedSpec(size: number): ChunkerSpec {
  return {
    name: `fixed ${formatBytes(size)}`,
    cdc: false,
    cut: (file, each) => {
      for (let at = 0; at < file.length; at += size) each(at, Math.min(file.length, at + size));
    },
  };
}

/** CDC fed as a reader would: READ_BLOCK bytes at a time, the chunk carried across blocks. */
function cdcSpec(avg: number, key: Uint8Array): ChunkerSpec {
  const params: ChunkParams = { min: avg / 4, avg, max: avg * 4 };
  const chunker = new Chunker(params, key);
  return {
    name: `CDC avg ${formatBytes(avg)}`,
    cdc: true,
    cut: (file, each) => {
      chunker.reset();
      let chunkStart = 0;
      for (let blockStart = 0; blockStart < file.length; blockStart += READ_BLOCK) {
        const blockEnd = Math.min(file.length, blockStart + READ_BLOCK);
        for (let at = chunker.next(file, blockStart, blockEnd); at >= 0; at = chunker.next(file, at, blockEnd)) {
          each(chunkStart, at);
          chunkStart = at;
        }
      }
      if (chunkStart < file.length) each(chunkStart, file.length);
    },
  };
}

interface FileChunks {
  hashes: string[];
  sizes: number[];
}

function chunkAndHash(spec: ChunkerSpec, file: Buffer): FileChunks {
  const hashes: string[] = [];
  const sizes: number[] = [];
  spec.cut(file, (start, end) => {
    hashes.push(createHash('sha256').update(file.subarray(start, end)).digest('base64'));
    sizes.push(end - start);
  });
  return { hashes, sizes };
}

interface Result {
  chunker: string;
  chunksV1: number;
  chunksV2: number;
  meanChunk: number;
  /** v2 with the 64 KiB insertion */
  newChunks: number;
  newBytes: number;
  newPercent: number;
  /** v2 with the insertion one byte longer */
  newBytesOdd: number;
  newPercentOdd: number;
  chunksPerGiB: number;
  manifestBytesPerGiB: number;
  /** the cut-point search alone, MB/s of CPU time (null for fixed sizes: nothing to search) */
  cutMBps: number | null;
}

function treeBytes(tree: TreeFile[]): number {
  return tree.reduce((sum, f) => sum + f.data.length, 0);
}

/** The distinct chunks of a version whose hash is not in `known`: their count and plain bytes. */
function newChunks(version: FileChunks[], known: Set<string>): { chunks: number; bytes: number } {
  const fresh = new Map<string, number>();
  for (const file of version)
    file.hashes.forEach((h, k) => {
      if (!known.has(h)) fresh.set(h, file.sizes[k]!);
    });
  let bytes = 0;
  for (const size of fresh.values()) bytes += size;
  return { chunks: fresh.size, bytes };
}

/** v1 and both v2s chunked and hashed; a v2 file with v1's bytes reuses v1's chunks (same bytes, same chunker, same result). */
function measureDedup(spec: ChunkerSpec, v1: TreeFile[], v2: TreeFile[], v2odd: TreeFile[]): Omit<Result, 'cutMBps'> {
  const total = treeBytes(v1);
  const before = v1.map((f) => chunkAndHash(spec, f.data));
  const afterV2 = v2.map((f, i) => (f.data === v1[i]!.data ? before[i]! : chunkAndHash(spec, f.data)));
  const afterOdd = v2odd.map((f, i) => (f.data === v2[i]!.data ? afterV2[i]! : chunkAndHash(spec, f.data)));
  const chunksOf = (version: FileChunks[]): number => version.reduce((sum, f) => sum + f.hashes.length, 0);
  const known = new Set(before.flatMap((f) => f.hashes));
  const fresh = newChunks(afterV2, known);
  const freshOdd = newChunks(afterOdd, known);
  const chunksV1 = chunksOf(before);
  const chunksPerGiB = Math.round((chunksV1 * GiB) / total);
  return {
    chunker: spec.name,
    chunksV1,
    chunksV2: chunksOf(afterV2),
    meanChunk: Math.round(total / chunksV1),
    newChunks: fresh.chunks,
    newBytes: fresh.bytes,
    newPercent: (100 * fresh.bytes) / total,
    newBytesOdd: freshOdd.bytes,
    newPercentOdd: (100 * freshOdd.bytes) / total,
    chunksPerGiB,
    manifestBytesPerGiB: chunksPerGiB * MANIFEST_BYTES_PER_CHUNK,
  };
}

/** Seconds of this process's CPU time that fn takes (less disturbed than wall time on a shared machine). */
function cpuSeconds(fn: () => void): number {
  const t0 = process.cpuUsage();
  fn();
  const used = process.cpuUsage(t0);
  return (used.user + used.system) / 1e6;
}

/**
 * MB/s of finding the cut points of the whole tree, no hashing, per chunker:
 * the median of TIMED_PASSES passes, the chunkers taking turns pass by pass so
 * that a busy moment of the machine does not fall on one of them only.
 */
function cutThroughputs(specs: ChunkerSpec[], tree: TreeFile[]): Map<ChunkerSpec, number> {
  const total = treeBytes(tree);
  const rates = new Map(specs.map((spec) => [spec, [] as number[]]));
  for (let pass = 0; pass < TIMED_PASSES; pass++)
    for (const spec of specs) {
      let chunks = 0;
      const seconds = cpuSeconds(() => {
        for (const f of tree) spec.cut(f.data, () => chunks++);
      });
      if (chunks === 0 && total > 0) throw new Error(`${spec.name}: no chunks`);
      rates.get(spec)!.push(total / 1e6 / seconds);
    }
  return new Map(specs.map((spec) => [spec, median(rates.get(spec)!)]));
}

/** MB/s (CPU time) of SHA-256 over the tree in pieces of `piece` bytes: the median of TIMED_PASSES passes. */
function sha256Throughput(tree: TreeFile[], piece: number): number {
  const rates: number[] = [];
  for (let pass = 0; pass < TIMED_PASSES; pass++) {
    const seconds = cpuSeconds(() => {
      for (const f of tree)
        for (let at = 0; at < f.data.length; at += piece)
          createHash('sha256')
            .update(f.data.subarray(at, at + piece))
            .digest();
    });
    rates.push(treeBytes(tree) / 1e6 / seconds);
  }
  return median(rates);
}

function pct(part: number, whole: number): string {
  return `${((100 * part) / whole).toFixed(2)}%`;
}

function printTable(results: Result[]): void {
  const head = [
    'chunker',
    'chunks v1',
    'chunks v2',
    'mean chunk',
    'new chunks',
    'new bytes',
    'new %',
    '<=3%',
    'new % (+1 B)',
    'chunks/GiB',
    'manifest/GiB',
    'cut MB/s',
  ];
  const rows = results.map((r) => [
    r.chunker,
    String(r.chunksV1),
    String(r.chunksV2),
    formatBytes(r.meanChunk),
    String(r.newChunks),
    formatBytes(r.newBytes),
    `${r.newPercent.toFixed(2)}%`,
    r.newPercent <= 3 ? 'yes' : 'no',
    `${r.newPercentOdd.toFixed(2)}%`,
    String(r.chunksPerGiB),
    formatBytes(r.manifestBytesPerGiB),
    r.cutMBps === null ? '-' : r.cutMBps.toFixed(0),
  ]);
  const widths = head.map((h, k) => Math.max(h.length, ...rows.map((row) => row[k]!.length)));
  const line = (cells: string[]): string => cells.map((cell, k) => (k === 0 ? cell.padEnd(widths[k]!) : cell.padStart(widths[k]!))).join('  ');
  out(line(head));
  for (const row of rows) out(line(row));
}

function main(): void {
  const { size, seed } = args();
  const c = content(seed);
  const t0 = performance.now();
  const v1 = makeTree(c, size);
  const total = treeBytes(v1);
  const byKind = (kind: Kind): string => formatBytes(treeBytes(v1.filter((f) => f.kind === kind)));
  const made = ((performance.now() - t0) / 1000).toFixed(1);
  out(
    `tree: ${v1.length} files, ${formatBytes(total)} (table ${byKind('table')}, random ${byKind('random')}, wal ${byKind('wal')}), seed ${seed}, made in ${made} s`,
  );
  const largest = [...v1].sort((a, b) => b.data.length - a.data.length).slice(0, 3);
  out(`largest files: ${largest.map((f) => `${f.path} ${formatBytes(f.data.length)} ${f.kind}`).join(', ')}`);
  const { v2, v2odd, changes } = changeTree(c, v1);
  printChanges(changes, total);
  const key = createHash('sha256').update(`chunking bench gear key ${seed}`).digest();
  const specs = [...[4 * MiB, MiB, 256 * KiB, 64 * KiB].map(fixedSpec), ...[MiB, 256 * KiB, 128 * KiB, 64 * KiB].map((avg) => cdcSpec(avg, key))];
  const dedup = specs.map((spec) => {
    const t = performance.now();
    const d = measureDedup(spec, v1, v2, v2odd);
    out(`  ${spec.name}: chunked and hashed in ${((performance.now() - t) / 1000).toFixed(1)} s`);
    return d;
  });
  const cutMBps = cutThroughputs(
    specs.filter((spec) => spec.cdc),
    v1,
  );
  const results: Result[] = specs.map((spec, k) => ({ ...dedup[k]!, cutMBps: cutMBps.get(spec) ?? null }));
  const sha256MBps = { piece64KiB: sha256Throughput(v1, 64 * KiB), piece4MiB: sha256Throughput(v1, 4 * MiB) };
  out();
  out(
    `new bytes: distinct v2 chunks whose SHA-256 is not among v1's, as % of the tree (${formatBytes(total)}); new % (+1 B): the same with a 65537-byte insertion`,
  );
  out(`manifest at ~${MANIFEST_BYTES_PER_CHUNK} B per chunk; CDC: min avg/4, max avg*4, fed ${formatBytes(READ_BLOCK)} at a time`);
  out(`cut MB/s: finding the cut points only (no hashing), CPU time, median of ${TIMED_PASSES} passes, one core`);
  printTable(results);
  out(
    `SHA-256 (the same for every chunker): ${sha256MBps.piece64KiB.toFixed(0)} MB/s in 64 KiB pieces, ${sha256MBps.piece4MiB.toFixed(0)} MB/s in 4 MiB pieces`,
  );
  const writes = changes.reduce((sum, ch) => sum + ch.writeOffsets.length, 0);
  out(JSON.stringify({ bench: 'chunking', size: total, seed, files: v1.length, changedBytes: (writes + 1) * EDIT, changes, results, sha256MBps }));
}

main();
