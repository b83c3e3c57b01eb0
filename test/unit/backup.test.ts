// Unit tests for the pure parts of the backup format: chunk records, the
// manifest (encode, parse, authenticate, structural checks), range planning,
// the done-set of the restore journal, retry/backoff, throttle and progress.
import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { describe, it } from 'node:test';
import { BackupError } from '../../src/backup/errors.js';
import {
  Codec,
  ChunkOpenError,
  FORMAT_V1,
  LatestPointer,
  checkManifestSignature,
  checkManifestStructure,
  deriveKeys,
  encodeManifest,
  isAllZero,
  isBackupId,
  newBackupId,
  openChunk,
  openManifestBody,
  parseManifest,
  sealChunk,
  sha256,
  type ChunkScheme,
  type Manifest,
  type ManifestBody,
  type ManifestHeaderV1,
} from '../../src/backup/format.js';
import { DoneSet } from '../../src/backup/journal.js';
import { indexChunks, planRanges } from '../../src/backup/plan.js';
import { renderProgressLine, formatBytes, formatDuration, type Progress } from '../../src/backup/progress.js';
import { backoffDelay, withRetry } from '../../src/backup/retry.js';
import { Throttle } from '../../src/backup/throttle.js';
import { TransportError } from '../../src/backup/transport.js';
import { publicKeyString } from '../../src/identity/seal.js';

const ID = '20250102T030405Z-1a2b3c4d';
const MiB = 1024 * 1024;

function text(n: number): Buffer {
  const words = ['select', 'from', 'where', 'insert', 'update', 'the', 'quick', 'brown', 'fox'];
  let s = '';
  for (let i = 0; s.length < n; i++) s += `${words[i % words.length]} ${i % 97}\n`;
  return Buffer.from(s.slice(0, n));
}

function keys(): ReturnType<typeof deriveKeys> {
  return deriveKeys(randomBytes(32), ID);
}

/** Version 1's chunk scheme for this test's backup id (version 2 is pinned in backup-v2.test.ts). */
function v1(key: Buffer, backupId = ID): ChunkScheme {
  return { format: FORMAT_V1, key, backupId };
}

function header(over: Partial<ManifestHeaderV1> = {}): ManifestHeaderV1 {
  return {
    format: FORMAT_V1,
    backupId: ID,
    createdAt: '2025-01-02T03:04:05.000Z',
    recipient: 'x25519:' + 'A'.repeat(43),
    sealedDataKey: 'bosun-sealed-v1.xyz',
    chunkSize: 4096,
    cipher: 'aes-256-gcm',
    compression: 'zstd',
    hash: 'sha256',
    stats: { files: 1, dirs: 1, symlinks: 0, hardlinks: 0, bytes: 5000, storedBytes: 200, chunks: 2, packs: 1, skipped: 0 },
    ...over,
  };
}

const dir = (path: string) => ({ type: 'dir' as const, path, mode: 0o755, uid: 0, gid: 0, mtimeNs: '1700000000000000000' });
const file = (path: string, size: number, chunks: number[]) => ({
  type: 'file' as const,
  path,
  mode: 0o644,
  uid: 0,
  gid: 0,
  mtimeNs: '1700000000000000000',
  size,
  sha256: 'a'.repeat(64),
  sparse: false,
  chunks,
});

function body(): ManifestBody {
  return {
    entries: [
      dir('.'),
      dir('d'),
      file('d/f', 5000, [0, 1]),
      { type: 'symlink', path: 'l', target: '/nowhere', uid: 0, gid: 0, mtimeNs: '1' },
      { type: 'hardlink', path: 'h', target: 'd/f' },
    ],
    chunks: [
      [0, 0, 100, 4096, 1, 'b'.repeat(64)],
      [0, 100, 100, 904, 1, 'c'.repeat(64)],
    ],
    packs: [{ key: `backups/${ID}/packs/000000.pack`, size: 200 }],
  };
}

describe('backup ids and the latest pointer', () => {
  it('makes sortable ids and recognises them', () => {
    const a = newBackupId(new Date('2025-01-02T03:04:05.678Z'));
    assert.match(a, /^20250102T030405Z-[0-9a-f]{8}$/);
    assert.ok(isBackupId(a));
    assert.ok(!isBackupId('latest'));
    assert.ok(!isBackupId('../../etc'));
  });

  it('parses only a well-formed pointer', () => {
    assert.equal(LatestPointer.parse({ format: FORMAT_V1, backupId: ID, createdAt: 'x' }).backupId, ID);
    assert.throws(() => LatestPointer.parse({ format: FORMAT_V1, backupId: '../x', createdAt: 'x' }));
  });
});

describe('chunk records', () => {
  const k = keys();

  it('round-trips, compressing what compresses and storing the rest raw', () => {
    const t = text(MiB);
    const sealedText = sealChunk(v1(k.chunk), t, { level: 1 });
    assert.equal(sealedText.identity.codec, Codec.zstd);
    assert.ok(sealedText.length < t.length / 2);
    const r = randomBytes(MiB);
    const sealedRandom = sealChunk(v1(k.chunk), r, { level: 1 });
    assert.equal(sealedRandom.identity.codec, Codec.none);
    assert.equal(sealedRandom.length, r.length + 28);
    for (const [plain, s] of [
      [t, sealedText],
      [r, sealedRandom],
    ] as const) {
      const out = openChunk(v1(k.chunk), Buffer.concat(s.record), s.identity);
      assert.ok(out.equals(plain));
      assert.equal(s.identity.digest, sha256(plain));
    }
  });

  it('fails authentication on a flipped byte, another backup, another identity or another key', () => {
    const plain = text(10_000);
    const s = sealChunk(v1(k.chunk), plain, { level: 3 });
    const rec = Buffer.concat(s.record);
    const why = (f: () => unknown): string => {
      try {
        f();
      } catch (e) {
        assert.ok(e instanceof ChunkOpenError);
        return e.why;
      }
      return 'opened';
    };
    const flipped = Buffer.from(rec);
    flipped[40]! ^= 1;
    assert.equal(
      why(() => openChunk(v1(k.chunk), flipped, s.identity)),
      'auth',
    );
    assert.equal(
      why(() => openChunk(v1(k.chunk, '20250102T030405Z-00000000'), rec, s.identity)),
      'auth',
    );
    assert.equal(
      why(() => openChunk(v1(k.chunk), rec, { ...s.identity, digest: 'f'.repeat(64) })),
      'auth',
    );
    assert.equal(
      why(() => openChunk(v1(keys().chunk), rec, s.identity)),
      'auth',
    );
    assert.equal(
      why(() => openChunk(v1(k.chunk), rec.subarray(0, 20), s.identity)),
      'length',
    );
    assert.equal(
      why(() => openChunk(v1(k.chunk), rec, s.identity)),
      'opened',
    );
  });

  it('derives distinct sub-keys per backup and per use', () => {
    const dk = randomBytes(32);
    const a = deriveKeys(dk, ID);
    const b = deriveKeys(dk, '20250102T030405Z-ffffffff');
    assert.ok(!a.chunk.equals(a.manifest));
    assert.ok(!a.chunk.equals(b.chunk));
    assert.throws(() => deriveKeys(randomBytes(16), ID), BackupError);
  });

  it('recognises all-zero buffers of any length', () => {
    const zero = Buffer.alloc(4096);
    assert.ok(isAllZero(Buffer.alloc(10_000), zero));
    const b = Buffer.alloc(10_000);
    b[9999] = 1;
    assert.ok(!isAllZero(b, zero));
    assert.ok(isAllZero(Buffer.alloc(0), zero));
  });
});

describe('manifest', () => {
  const k = keys();
  const m: Manifest = { header: header(), body: body() };

  it('encodes, parses and opens', () => {
    const bytes = encodeManifest(m, k.manifest);
    const p = parseManifest(bytes);
    assert.deepEqual(p.header, m.header);
    assert.equal(checkManifestSignature(p), false);
    assert.deepEqual(openManifestBody(p, k.manifest), m.body);
    assert.equal(p.digest, createHash('sha256').update(bytes).digest('hex'));
  });

  it('detects any change to the header or the body, and a wrong key', () => {
    const bytes = encodeManifest(m, k.manifest);
    const hdrAt = bytes.indexOf(Buffer.from('"chunkSize":4096'));
    const alteredHeader = Buffer.from(bytes);
    alteredHeader.write('"chunkSize":8192', hdrAt);
    assert.throws(
      () => openManifestBody(parseManifest(alteredHeader), k.manifest),
      (e: unknown) => e instanceof BackupError && e.reason === 'integrity',
    );
    const alteredBody = Buffer.from(bytes);
    alteredBody[bytes.length - 30]! ^= 0x40;
    assert.throws(
      () => openManifestBody(parseManifest(alteredBody), k.manifest),
      (e: unknown) => e instanceof BackupError && e.reason === 'integrity',
    );
    assert.throws(
      () => openManifestBody(parseManifest(bytes), keys().manifest),
      (e: unknown) => e instanceof BackupError && e.reason === 'integrity',
    );
  });

  it('refuses what is not a manifest, or is truncated', () => {
    const bytes = encodeManifest(m, k.manifest);
    assert.throws(() => parseManifest(Buffer.from('hello world, not a manifest')), /not a bosun backup manifest/);
    assert.throws(() => parseManifest(bytes.subarray(0, bytes.length - 5)), /truncated/);
    const future = encodeManifest({ ...m, header: { ...m.header, format: 'bosun-backup-v9' } as unknown as ManifestHeaderV1 }, k.manifest);
    assert.throws(() => parseManifest(future), /unknown format version/);
  });

  it('verifies an Ed25519 signature over the whole manifest', () => {
    const ed = generateKeyPairSync('ed25519');
    const signer = publicKeyString('ed25519', ed.publicKey);
    const signed = encodeManifest({ ...m, header: { ...m.header, signer } }, k.manifest, (d) => sign(null, d, ed.privateKey));
    assert.equal(checkManifestSignature(parseManifest(signed)), true);
    const tampered = Buffer.from(signed);
    tampered[tampered.length - 100]! ^= 1;
    assert.throws(() => checkManifestSignature(parseManifest(tampered)), /signature does not verify/);
    // A signature by another key than the one the header names fails too.
    const other = generateKeyPairSync('ed25519');
    const forged = encodeManifest({ ...m, header: { ...m.header, signer } }, k.manifest, (d) => sign(null, d, other.privateKey));
    assert.throws(() => checkManifestSignature(parseManifest(forged)), /signature does not verify/);
  });

  it('enforces the structural rules restore relies on', () => {
    const h = header();
    const ok = body();
    assert.doesNotThrow(() => checkManifestStructure(h, ok));
    const bad = (mutate: (b: ManifestBody) => void, re: RegExp): void => {
      const b = structuredClone(ok);
      mutate(b);
      assert.throws(() => checkManifestStructure(h, b), re);
    };
    bad((b) => b.entries.splice(1, 1), /parent of "d\/f" is not a directory/);
    bad((b) => b.entries.push(file('l/escape', 0, [])), /parent of "l\/escape" is not a directory/);
    bad((b) => b.entries.push(dir('d')), /appears twice/);
    bad((b) => (b.entries[4] = { type: 'hardlink', path: 'h', target: 'l' }), /hard link "h"/);
    bad((b) => ((b.entries[2] as ReturnType<typeof file>).chunks = [0]), /has 1 chunks for 5000 bytes/);
    bad((b) => ((b.entries[2] as ReturnType<typeof file>).chunks = [0, 7]), /chunk 7, which does not exist/);
    bad((b) => (b.chunks[1]![3] = 4096), /chunk 1 holds 4096 bytes/);
    bad((b) => (b.chunks[1]![1] = 150), /lies outside its pack/);
    bad((b) => b.entries.shift(), /first entry must be the root/);
  });

  it('rejects paths that could escape the target', async () => {
    const { EntryPath } = await import('../../src/backup/format.js');
    for (const p of ['../x', 'a/../../x', '/etc/passwd', 'a//b', 'a/./b', '', 'a\0b']) assert.equal(EntryPath.safeParse(p).success, false, p);
    for (const p of ['.', 'a', 'a/b c/d', '.hidden', '..dots']) assert.equal(EntryPath.safeParse(p).success, true, p);
  });
});

describe('restore planning', () => {
  const chunks: ManifestBody['chunks'] = [
    [0, 0, 10, 5, 0, 'a'.repeat(64)],
    [0, 10, 10, 5, 0, 'b'.repeat(64)],
    [0, 20, 10, 5, 0, 'c'.repeat(64)],
    [1, 0, 10, 5, 0, 'd'.repeat(64)],
    [0, 30, 10, 5, 0, 'e'.repeat(64)],
  ];
  const used = (): boolean => true;

  it('coalesces neighbouring records of a pack into one ranged GET', () => {
    const r = planRanges(chunks, used, () => false, 1000);
    assert.deepEqual(r, [
      { pack: 0, start: 0, end: 39, chunks: [0, 1, 2, 4] },
      { pack: 1, start: 0, end: 9, chunks: [3] },
    ]);
  });

  it('splits at the range limit and around chunks already done or unused', () => {
    assert.deepEqual(
      planRanges(chunks, used, () => false, 20).map((r) => [r.start, r.end]),
      [
        [0, 19],
        [20, 39],
        [0, 9],
      ],
    );
    const r = planRanges(chunks, used, (c) => c === 1, 1000);
    assert.deepEqual(
      r.map((x) => x.chunks),
      [[0], [2, 4], [3]],
    );
    const unused = (i: number): boolean => i !== 2;
    assert.deepEqual(
      planRanges(chunks, unused, () => false, 1000).map((x) => x.chunks),
      [[0, 1], [4], [3]],
    );
  });

  it('maps a chunk stored once to every file slice that holds it', () => {
    const b = body();
    b.entries.push(file('g', 4096, [0]));
    const idx = indexChunks(header(), b);
    assert.equal(idx.files.length, 2);
    assert.deepEqual(idx.targets.of(0), [
      { file: 0, ordinal: 0 },
      { file: 1, ordinal: 0 },
    ]);
    assert.deepEqual(idx.targets.of(1), [{ file: 0, ordinal: 1 }]);
    assert.equal(idx.targets.used(1), true);
    assert.deepEqual(
      indexChunks(header(), { ...b, entries: b.entries.filter((e) => e.type !== 'file') }).targets.of(0),
      [],
      'a chunk no file uses has no slices',
    );
  });
});

describe('restore journal done-set', () => {
  it('round-trips through base64 and counts', () => {
    const d = new DoneSet(1000);
    for (const i of [0, 7, 8, 999, 500, 500]) d.add(i);
    assert.equal(d.count, 5);
    const e = DoneSet.decode(1000, d.encode());
    assert.equal(e.count, 5);
    assert.ok(e.has(999) && e.has(8) && !e.has(9));
    // A bitmap of the wrong size (another manifest) starts empty.
    assert.equal(DoneSet.decode(2000, d.encode()).count, 0);
  });
});

describe('retry', () => {
  const policy = { attempts: 3, baseDelayMs: 1, maxDelayMs: 4 };

  it('backs off exponentially with jitter, capped', () => {
    assert.equal(
      backoffDelay({ attempts: 9, baseDelayMs: 100, maxDelayMs: 1000 }, 1, () => 1),
      100,
    );
    assert.equal(
      backoffDelay({ attempts: 9, baseDelayMs: 100, maxDelayMs: 1000 }, 3, () => 1),
      400,
    );
    assert.equal(
      backoffDelay({ attempts: 9, baseDelayMs: 100, maxDelayMs: 1000 }, 10, () => 1),
      1000,
    );
    assert.equal(
      backoffDelay({ attempts: 9, baseDelayMs: 100, maxDelayMs: 1000 }, 3, () => 0),
      200,
    );
  });

  it('retries transient errors, never fatal ones, and keeps going while there is progress', async () => {
    let n = 0;
    assert.equal(
      await withRetry(policy, () => {
        if (++n < 3) throw new TransportError('transient', 'reset');
        return Promise.resolve('ok');
      }),
      'ok',
    );
    n = 0;
    await assert.rejects(
      withRetry(policy, () => {
        n++;
        throw new TransportError('transient', 'reset');
      }),
      /reset/,
    );
    assert.equal(n, 3);
    n = 0;
    await assert.rejects(
      withRetry(policy, () => {
        n++;
        throw new BackupError('integrity', 'bad');
      }),
      /bad/,
    );
    assert.equal(n, 1);
    n = 0;
    const r = await withRetry(policy, (_a, progressed) => {
      progressed();
      if (++n < 10) throw new TransportError('transient', 'cut');
      return Promise.resolve(n);
    });
    assert.equal(r, 10);
  });
});

describe('throttle', () => {
  it('holds a download to the limit', async () => {
    const t = new Throttle(4 * MiB);
    const start = performance.now();
    for (let i = 0; i < 20; i++) await t.take(64 * 1024);
    // 1.25 MiB at 4 MiB/s with a 1 MiB burst: at least ~60 ms.
    assert.ok(performance.now() - start >= 50, `took ${performance.now() - start} ms`);
  });
});

describe('progress line', () => {
  const p: Progress = {
    operation: 'restore',
    phase: 'transferring',
    bytesDone: 430 * MiB,
    bytesTotal: 1024 * MiB,
    transferredBytes: 0,
    filesTotal: 3,
    rate: 312 * MiB,
    etaSeconds: 1.9,
    elapsedSeconds: 1.4,
  };

  it('shows percent, bar, bytes, rate and ETA within the width', () => {
    const line = renderProgressLine(p, 80);
    assert.ok(line.length <= 80, line);
    assert.match(line, /^restore {2}41% \[#+\.+\] 430 MiB \/ 1.0 GiB {2}312 MiB\/s {2}ETA 0:02$/);
    assert.ok(renderProgressLine(p, 30).length <= 30);
    assert.match(renderProgressLine({ ...p, phase: 'done', bytesDone: p.bytesTotal }, 80), /100% .* {2}in 0:01$/);
    assert.match(renderProgressLine({ ...p, etaSeconds: undefined }, 80), /ETA --:--$/);
  });

  it('formats sizes and durations', () => {
    assert.equal(formatBytes(0), '0 B');
    assert.equal(formatBytes(1536), '1.5 KiB');
    assert.equal(formatBytes(8 * 1024 ** 3), '8.0 GiB');
    assert.equal(formatDuration(3725), '1:02:05');
    assert.equal(formatDuration(65), '1:05');
  });
});
