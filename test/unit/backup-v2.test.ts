// Unit tests for version 2 of the backup format (src/backup/FORMAT.md): the
// set key's derived keys and chunk ids (test vectors another implementation
// must match), records shared by the backups of a set, the manifest with its
// packs in the header, pieces of any length with runs of zeros, the cutters
// and the file reader, the known chunks and the resume log.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile, appendFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { FixedCutter, DEFAULT_CHUNKER, cutterFor } from '../../src/backup/cutter.js';
import {
  ChunkOpenError,
  FORMAT_V2,
  chunkDigest,
  deriveManifestKey,
  deriveSetKeys,
  encodeManifest,
  keysOfBackup,
  openChunk,
  openManifestBody,
  parseManifest,
  sealChunk,
  setKeyId,
  sharedPackKey,
  writerOfPack,
  type ChunkScheme,
  type ManifestBody,
  type ManifestHeaderV2,
} from '../../src/backup/format.js';
import { ResumeLog, knownFromBody, knownFromResume, type StoredPack } from '../../src/backup/known-chunks.js';
import { indexChunks } from '../../src/backup/plan.js';
import { readBuffer, readPieces } from '../../src/backup/source-tree.js';
import { SlotRing } from '../../src/backup/workers/pool.js';

const SET_KEY = Buffer.alloc(32, 1);
const ID = '20250102T030405Z-1a2b3c4d';
const OTHER_ID = '20250103T030405Z-00000000';

function scheme(setKey = SET_KEY): ChunkScheme {
  return keysOfBackup({ format: FORMAT_V2, backupId: ID }, setKey).scheme;
}

function header(over: Partial<ManifestHeaderV2> = {}): ManifestHeaderV2 {
  return {
    format: FORMAT_V2,
    backupId: ID,
    createdAt: '2025-01-02T03:04:05.000Z',
    recipient: 'x25519:' + 'A'.repeat(43),
    sealedDataKey: 'bosun-sealed-v1.xyz',
    keyId: setKeyId(SET_KEY),
    chunker: { kind: 'gear', min: 1024, avg: 4096, max: 16384 },
    cipher: 'aes-256-gcm',
    compression: 'zstd',
    hash: 'hmac-sha256',
    packs: [{ key: sharedPackKey(OTHER_ID, 0), size: 300 }],
    stats: { files: 1, dirs: 1, symlinks: 0, hardlinks: 0, bytes: 9000, storedBytes: 300, chunks: 2, packs: 1, skipped: 0 },
    ...over,
  };
}

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

/** A file of 9000 bytes: a chunk of 3000, 2000 zero bytes, a chunk of 4000. */
function body(): ManifestBody {
  return {
    entries: [{ type: 'dir', path: '.', mode: 0o755, uid: 0, gid: 0, mtimeNs: '1' }, file('f', 9000, [0, -2000, 1])],
    chunks: [
      [0, 0, 100, 3000, 1, 'b'.repeat(64)],
      [0, 100, 200, 4000, 1, 'c'.repeat(64)],
    ],
    packs: header().packs,
  };
}

describe('version 2 keys (test vectors)', () => {
  it('derives the key id, the chunk key and the manifest key from a set key of 32 bytes of 0x01', () => {
    assert.equal(setKeyId(SET_KEY), '68d62d58727ff02a');
    assert.equal(deriveSetKeys(SET_KEY).chunk.toString('hex'), 'd9728c575a25c1555efed488ae055f70aa2f0485994d4d50d9e26969b4fbe785');
    assert.equal(deriveManifestKey(SET_KEY, ID).toString('hex'), '0198cbb8f5df46c609f63c0c2a5bf95de6dc2c61d25914fdc61f0ec31fc58772');
  });

  it('names a chunk by a keyed hash: the same bytes under another set key get another id', () => {
    const plain = Buffer.from('hello, bosun');
    assert.equal(chunkDigest(scheme(), plain), 'f9ba9f8a78e16acff9fd3157f7c58038abca4a7150fbf9e3acc9af20a417768b');
    assert.notEqual(chunkDigest(scheme(randomBytes(32)), plain), chunkDigest(scheme(), plain));
  });
});

describe('version 2 chunk records', () => {
  it('open in any backup of the set, not under another set key, and not relabelled as another chunk', () => {
    const plain = Buffer.from('select * from t where id = 42;\n'.repeat(500));
    const sealed = sealChunk(scheme(), plain, { level: 1 });
    const record = Buffer.concat(sealed.record);
    const later = keysOfBackup({ format: FORMAT_V2, backupId: OTHER_ID }, SET_KEY).scheme;
    assert.ok(openChunk(later, record, sealed.identity).equals(plain), 'a record is not bound to the backup that wrote it');
    const why = (f: () => unknown): string => {
      try {
        f();
        return 'opened';
      } catch (e) {
        assert.ok(e instanceof ChunkOpenError);
        return e.why;
      }
    };
    assert.equal(
      why(() => openChunk(scheme(randomBytes(32)), record, sealed.identity)),
      'auth',
    );
    assert.equal(
      why(() => openChunk(scheme(), record, { ...sealed.identity, digest: 'e'.repeat(64) })),
      'auth',
    );
    assert.equal(
      why(() => openChunk(scheme(), record, { ...sealed.identity, plainLength: plain.length + 1 })),
      'auth',
    );
  });
});

describe('version 2 manifest', () => {
  const manifestKey = deriveManifestKey(SET_KEY, ID);

  it('keeps the packs in the readable header and gives them back in the opened body', () => {
    const bytes = encodeManifest({ header: header(), body: body() }, manifestKey);
    const sealed = parseManifest(bytes);
    assert.equal(sealed.header.format, FORMAT_V2);
    assert.deepEqual(sealed.header.format === FORMAT_V2 && sealed.header.packs, header().packs);
    assert.deepEqual(openManifestBody(sealed, manifestKey), body());
  });

  it('refuses a file whose pieces do not add up to its size, or a piece longer than the chunker makes', () => {
    const short = body();
    short.entries[1] = file('f', 9001, [0, -2000, 1]);
    assert.throws(
      () => openManifestBody(parseManifest(encodeManifest({ header: header(), body: short }, manifestKey)), manifestKey),
      /add up to 9000 bytes, not its 9001/,
    );
    const long = body();
    long.entries[1] = file('f', 3000 + 20000, [0, -20000]);
    assert.throws(() => openManifestBody(parseManifest(encodeManifest({ header: header(), body: long }, manifestKey)), manifestKey), /a piece of 20000 bytes/);
  });

  it('lays out pieces of any length, zero runs included', () => {
    const index = indexChunks(header(), body());
    assert.deepEqual(index.pieces.bounds(0, 3), [0, 3000, 5000, 9000]);
    assert.equal(index.pieces.start(0, 2), 5000);
    assert.equal(index.pieces.length(0, 1), 2000);
    assert.deepEqual(index.targets.of(1), [{ file: 0, ordinal: 2 }]);
  });

  it('names shared packs after the backup that wrote them', () => {
    assert.equal(sharedPackKey(ID, 7), `packs/${ID}-000007.pack`);
    assert.equal(writerOfPack(sharedPackKey(ID, 7)), ID);
    assert.equal(writerOfPack(`backups/${ID}/packs/000000.pack`), undefined);
  });
});

describe('cutting files into chunks', () => {
  const dir = mkdtemp(join(tmpdir(), 'bosun-v2-'));
  after(async () => rm(await dir, { recursive: true, force: true }));

  /** The chunks readPieces makes of `data`, as lengths, and their bytes joined again. */
  async function piecesOf(data: Buffer, spec = DEFAULT_CHUNKER): Promise<{ lengths: number[]; joined: Buffer }> {
    const path = join(await dir, `f-${randomBytes(4).toString('hex')}`);
    await writeFile(path, data);
    const ring = new SlotRing(2, 256 * 1024);
    const parts: Buffer[] = [];
    await readPieces(path, cutterFor(spec, Buffer.alloc(32, 7)), readBuffer(spec.kind === 'fixed' ? spec.size : spec.max), ring, (slot, plain) => {
      parts.push(Buffer.from(plain));
      ring.release(slot);
      return Promise.resolve();
    });
    return { lengths: parts.map((p) => p.length), joined: Buffer.concat(parts) };
  }

  it('cuts fixed slices, the last one shorter', async () => {
    const cutter = new FixedCutter(10);
    assert.equal(cutter.next(Buffer.alloc(4), 0, 4), -1);
    assert.equal(cutter.next(Buffer.alloc(20), 0, 20), 6);
    const { lengths } = await piecesOf(randomBytes(25_000), { kind: 'fixed', size: 10_000 });
    assert.deepEqual(lengths, [10_000, 10_000, 5000]);
  });

  it('reads a file of several read blocks into content-defined chunks that join back to the file', async () => {
    const data = randomBytes(9 * 1024 * 1024 + 12_345);
    const { lengths, joined } = await piecesOf(data);
    assert.ok(joined.equals(data));
    assert.ok(lengths.slice(0, -1).every((n) => n >= 16 * 1024 && n <= 256 * 1024));
    const mean = data.length / lengths.length;
    assert.ok(mean > 40 * 1024 && mean < 110 * 1024, `mean chunk ${mean}`);
  });

  it('after a block inserted in the middle, all but the chunks around it are the same', async () => {
    const data = randomBytes(4 * 1024 * 1024);
    const edited = Buffer.concat([data.subarray(0, 2_000_000), randomBytes(5000), data.subarray(2_000_000)]);
    const chunksOf = async (d: Buffer): Promise<Set<string>> => {
      const { lengths } = await piecesOf(d);
      const out = new Set<string>();
      let at = 0;
      for (const n of lengths) {
        out.add(d.subarray(at, at + n).toString('base64'));
        at += n;
      }
      return out;
    };
    const before = await chunksOf(data);
    const afterEdit = await chunksOf(edited);
    const fresh = [...afterEdit].filter((c) => !before.has(c));
    assert.ok(fresh.length <= 3, `${fresh.length} new chunks`);
  });
});

describe('known chunks and the resume log', () => {
  const dir = mkdtemp(join(tmpdir(), 'bosun-resume-'));
  after(async () => rm(await dir, { recursive: true, force: true }));
  const pack = (key: string, digest: string): StoredPack => ({ key, size: 500, chunks: [[digest, 0, 500, 4000, 1]] });

  it('knows every chunk of an opened manifest by its digest, with its pack', () => {
    const known = knownFromBody(body());
    assert.deepEqual(known.get('c'.repeat(64)), { pack: header().packs[0], offset: 100, storedLength: 200, plainLength: 4000, codec: 1 });
  });

  it('gives back what killed runs under this key stored, skipping a torn last line and other keys', async () => {
    const log = new ResumeLog(join(await dir, 'resume.jsonl'));
    await log.start('k1', ID);
    await log.append(pack(sharedPackKey(ID, 0), 'd'.repeat(64)));
    await log.start('k2', OTHER_ID);
    await log.append(pack(sharedPackKey(OTHER_ID, 0), 'e'.repeat(64)));
    await log.start('k1', OTHER_ID);
    await log.append(pack(sharedPackKey(OTHER_ID, 1), 'f'.repeat(64)));
    await appendFile(log.path, '{"key":"packs/torn');
    const read = await log.read('k1');
    assert.deepEqual(read.backupIds, [ID, OTHER_ID]);
    assert.deepEqual(
      read.packs.map((p) => p.key),
      [sharedPackKey(ID, 0), sharedPackKey(OTHER_ID, 1)],
    );
    await log.clear();
    assert.deepEqual(await log.read('k1'), { backupIds: [], packs: [] });
  });

  it('adds a killed run’s chunks only for packs the store still lists at the logged size', () => {
    const known = knownFromResume(
      [pack(sharedPackKey(ID, 0), 'd'.repeat(64)), pack(sharedPackKey(ID, 1), 'e'.repeat(64)), pack(sharedPackKey(ID, 2), 'f'.repeat(64))],
      new Map([
        [sharedPackKey(ID, 0), 500],
        [sharedPackKey(ID, 1), 499],
      ]),
      new Map(),
    );
    assert.equal(known, 1);
  });
});
