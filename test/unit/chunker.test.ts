// The keyed content-defined chunker (src/backup/chunker.ts): pinned cut
// points, size limits, block-by-block feeding, resynchronisation after an
// insertion, the key's effect, and refused parameters.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Chunker, cutPoints, gearTable, type ChunkParams } from '../../src/backup/chunker.js';

const KEY = Buffer.from('000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f', 'hex');
const OTHER_KEY = Buffer.alloc(32, 0xa5);
const SMALL: ChunkParams = { min: 1024, avg: 4096, max: 16384 };

/** A step of Marsaglia's xorshift32: deterministic, good enough for test data. */
function xorshift32(x: number): number {
  x ^= x << 13;
  x ^= x >>> 17;
  x ^= x << 5;
  return x >>> 0;
}

/** n pseudo-random bytes, the same for the same seed. */
function seededBytes(seed: number, n: number): Buffer {
  const out = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    if (i % 4 === 0) x = xorshift32(x);
    out[i] = (x >>> ((i % 4) * 8)) & 0xff;
  }
  return out;
}

/** Chunk lengths from end offsets. */
function lengths(cuts: number[]): number[] {
  return cuts.map((end, k) => end - (k === 0 ? 0 : cuts[k - 1]!));
}

/** Cut points found by feeding data through one chunker in blocks of the sizes `blockSize` picks. */
function cutPointsInBlocks(data: Uint8Array, params: ChunkParams, blockSize: () => number): number[] {
  const chunker = new Chunker(params, KEY);
  const cuts: number[] = [];
  for (let blockStart = 0; blockStart < data.length;) {
    const blockEnd = Math.min(data.length, blockStart + blockSize());
    const block = data.subarray(blockStart, blockEnd);
    for (let at = chunker.next(block, 0, block.length); at >= 0; at = chunker.next(block, at, block.length)) cuts.push(blockStart + at);
    blockStart = blockEnd;
  }
  if (chunker.pending > 0) cuts.push(data.length);
  return cuts;
}

test('the gear table is HKDF-SHA256 of the key read as big-endian u32, pinned for a fixed key', () => {
  // the first values checked with: openssl kdf -keylen 16 -kdfopt digest:SHA256 -kdfopt hexkey:0001…1f -kdfopt hexsalt: -kdfopt 'info:bosun-backup-v2 gear' HKDF
  const gear = gearTable(KEY);
  assert.equal(gear.length, 256);
  assert.deepEqual([...gear.subarray(0, 4)], [0x2dcd1f6a, 0x718f5401, 0x8def37b0, 0x1f5dd4ba]);
  assert.deepEqual([...gear.subarray(252)], [0x8ce2c2af, 0x408cfc68, 0x378a19cc, 0x5c84e190]);
});

test('the first cut points of a seeded buffer under a fixed key are pinned', () => {
  const cuts = cutPoints(seededBytes(42, 1 << 20), SMALL, KEY);
  assert.deepEqual(cuts.slice(0, 12), [4339, 8910, 13918, 19876, 26751, 29439, 34415, 38872, 43778, 45445, 47006, 49731]);
  assert.equal(cuts.length, 233);
});

test('every chunk is between min and max bytes except the last, and the chunks cover the input', () => {
  const data = seededBytes(7, 3 << 20);
  const cuts = cutPoints(data, SMALL, KEY);
  const sizes = lengths(cuts);
  assert.equal(cuts.at(-1), data.length);
  for (const size of sizes.slice(0, -1)) assert.ok(size >= SMALL.min && size <= SMALL.max, `a chunk of ${size} bytes`);
  assert.ok(sizes.at(-1)! > 0 && sizes.at(-1)! <= SMALL.max);
  const mean = data.length / cuts.length;
  assert.ok(mean > SMALL.avg * 0.8 && mean < SMALL.avg * 1.5, `mean chunk ${mean} bytes for avg ${SMALL.avg}`);
});

test('feeding the bytes in random-sized blocks gives the same cut points as one block', () => {
  const data = seededBytes(11, 1 << 20);
  const whole = cutPoints(data, SMALL, KEY);
  let x = 99;
  const randomSize = (limit: number) => (): number => (x = xorshift32(x)) % limit;
  assert.deepEqual(cutPointsInBlocks(data, SMALL, randomSize(40_000)), whole, 'blocks up to 40 KB, some empty');
  assert.deepEqual(cutPointsInBlocks(data, SMALL, randomSize(300)), whole, 'blocks shorter than min');
  assert.deepEqual(
    cutPointsInBlocks(data, SMALL, () => 1),
    whole,
    'one byte at a time',
  );
});

test('a reset chunker cuts a second file as a fresh one would', () => {
  const first = seededBytes(1, 50_000);
  const second = seededBytes(2, 80_000);
  const chunker = new Chunker(SMALL, KEY);
  for (let at = chunker.next(first, 0, first.length); at >= 0; at = chunker.next(first, at, first.length));
  assert.ok(chunker.pending > 0, 'the first file ends inside a chunk');
  chunker.reset();
  const cuts: number[] = [];
  for (let at = chunker.next(second, 0, second.length); at >= 0; at = chunker.next(second, at, second.length)) cuts.push(at);
  if (chunker.pending > 0) cuts.push(second.length);
  assert.deepEqual(cuts, cutPoints(second, SMALL, KEY));
});

test('inserting 100 bytes in the middle changes only the one or two chunks around it, and the chunks after resynchronise', () => {
  const data = seededBytes(5, 2 << 20);
  const middle = data.length >> 1;
  const edited = Buffer.concat([data.subarray(0, middle), seededBytes(6, 100), data.subarray(middle)]);
  const before = cutPoints(data, SMALL, KEY);
  const after = cutPoints(edited, SMALL, KEY);
  const kept = new Set(before.map((end, k) => `${k === 0 ? 0 : before[k - 1]}:${end}`));
  const shifted = new Set(before.map((end, k) => `${(k === 0 ? 0 : before[k - 1]!) + 100}:${end + 100}`));
  const changed = after.filter((end, k) => {
    const start = k === 0 ? 0 : after[k - 1]!;
    return start <= middle ? !kept.has(`${start}:${end}`) : !shifted.has(`${start}:${end}`);
  });
  assert.ok(changed.length >= 1 && changed.length <= 2, `${changed.length} chunks changed`);
  for (const end of changed)
    assert.ok(end > middle && end <= middle + 100 + 2 * SMALL.max, `a changed chunk ending at ${end}, far from the insertion at ${middle}`);
  assert.ok(Math.abs(after.length - before.length) <= 1);
});

test('a different key gives different cut points for the same bytes', () => {
  const data = seededBytes(3, 1 << 20);
  const mine = cutPoints(data, SMALL, KEY);
  const theirs = cutPoints(data, SMALL, OTHER_KEY);
  assert.notDeepEqual(theirs, mine);
  const common = theirs.filter((end) => mine.includes(end)).length;
  assert.ok(common < mine.length / 4, `${common} of ${mine.length} cut points in common`);
  assert.deepEqual(cutPoints(data, SMALL, Buffer.from(KEY)), mine, 'the same key again gives the same cuts');
});

test('all-zero input is cut into max-size chunks', () => {
  const cuts = cutPoints(new Uint8Array(10 * SMALL.max + 123), SMALL, KEY);
  assert.deepEqual(lengths(cuts), [...Array<number>(10).fill(SMALL.max), 123]);
});

test('empty input has no chunks, and input no longer than min is one chunk', () => {
  assert.deepEqual(cutPoints(new Uint8Array(0), SMALL, KEY), []);
  assert.deepEqual(cutPoints(seededBytes(4, SMALL.min), SMALL, KEY), [SMALL.min]);
  assert.deepEqual(cutPoints(seededBytes(4, 10), SMALL, KEY), [10]);
});

test('bad parameters, a key of the wrong length and a bad range are refused with a message naming the problem', () => {
  const refused = (params: ChunkParams, message: RegExp): void => assert.throws(() => new Chunker(params, KEY), { name: 'RangeError', message });
  refused({ min: 4096, avg: 4096, max: 16384 }, /min < avg < max/);
  refused({ min: 1024, avg: 4096, max: 4096 }, /min < avg < max/);
  refused({ min: 1024, avg: 5000, max: 16384 }, /avg must be a power of two/);
  refused({ min: 0, avg: 4096, max: 16384 }, /min must be a positive integer/);
  refused({ min: 1024.5, avg: 4096, max: 16384 }, /min must be a positive integer/);
  refused({ min: 32, avg: 4096, max: 16384 }, /min must be at least 64/);
  refused({ min: 1024, avg: 2 ** 30, max: 2 ** 31 }, /avg must be between/);
  assert.throws(() => new Chunker(SMALL, new Uint8Array(16)), /gear key must be 32 bytes, got 16/);
  assert.throws(() => new Chunker(SMALL, KEY).next(new Uint8Array(10), 5, 11), /bad range \[5, 11\) of a 10-byte buffer/);
});
