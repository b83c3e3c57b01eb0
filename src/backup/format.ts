import { createCipheriv, createDecipheriv, createHash, createHmac, createPublicKey, hkdfSync, randomBytes, verify as edVerify } from 'node:crypto';
import { compress, decompress } from 'zstd-napi';
import zstdBinding from 'zstd-napi/binding.js';
import { z } from 'zod';
import { BackupError } from './errors.js';

/**
 * The bosun backup format, versions 1 and 2 (see FORMAT.md beside this file
 * for the prose). Everything here is pure: bytes in, bytes out, no I/O, so the
 * format is pinned by unit tests and shared by create, restore and any
 * transport. Backups are written in version 2; both are read.
 */

export const FORMAT_V1 = 'bosun-backup-v1';
export const FORMAT_V2 = 'bosun-backup-v2';
/** the version new backups are written in */
export const FORMAT = FORMAT_V2;
export type BackupFormat = typeof FORMAT_V1 | typeof FORMAT_V2;
export const MANIFEST_MAGIC = Buffer.from('BSNMANI1', 'latin1');
export const NONCE_LEN = 12;
export const TAG_LEN = 16;
/** bytes a sealed chunk record adds to its payload: nonce and GCM tag */
export const RECORD_OVERHEAD = NONCE_LEN + TAG_LEN;
export const DEFAULT_PACK_SIZE = 32 * 1024 * 1024;
/** a manifest larger than this is refused before it is read into memory */
export const MAX_MANIFEST_BYTES = 1024 * 1024 * 1024;

export const Codec = { none: 0, zstd: 1 } as const;
export type Codec = (typeof Codec)[keyof typeof Codec];

// ---------------------------------------------------------------- object names

export function manifestKey(backupId: string): string {
  return `backups/${backupId}/manifest`;
}
/** Version 2: packs are shared by the backups of a set; each is named after the backup that wrote it. */
export const PACK_DIR = 'packs/';
export function sharedPackKey(backupId: string, pack: number): string {
  return `${PACK_DIR}${backupId}-${String(pack).padStart(6, '0')}.pack`;
}
/** The backup that wrote a version 2 pack, from its key; undefined for any other key. */
export function writerOfPack(key: string): string | undefined {
  const match = /^packs\/([0-9]{8}T[0-9]{6}Z-[0-9a-f]{8})-[0-9]{6}\.pack$/.exec(key);
  return match?.[1];
}
export const LATEST_KEY = 'latest.json';

const BACKUP_ID = /^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$/;
export function isBackupId(s: string): boolean {
  return BACKUP_ID.test(s);
}
/** Sortable by time: 20250102T030405Z-1a2b3c4d */
export function newBackupId(now = new Date()): string {
  const t = now
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d+Z$/, 'Z');
  return `${t}-${randomBytes(4).toString('hex')}`;
}

export const LatestPointer = z.strictObject({ format: z.enum([FORMAT_V1, FORMAT_V2]), backupId: z.string().regex(BACKUP_ID), createdAt: z.string() });
export type LatestPointer = z.infer<typeof LatestPointer>;

// ---------------------------------------------------------------- keys

export interface BackupKeys {
  chunk: Buffer;
  manifest: Buffer;
}

/**
 * One random 256-bit data key per backup; sub-keys for chunks and for the
 * manifest are derived from it so the two uses never share a key.
 */
export function deriveKeys(dataKey: Buffer, backupId: string): BackupKeys {
  if (dataKey.length !== 32) throw new BackupError('key', 'the backup data key has the wrong length');
  const salt = Buffer.from(backupId, 'utf8');
  return {
    chunk: Buffer.from(hkdfSync('sha256', dataKey, salt, `${FORMAT_V1} chunk`, 32)),
    manifest: Buffer.from(hkdfSync('sha256', dataKey, salt, `${FORMAT_V1} manifest`, 32)),
  };
}

/** Version 2: the keys of a set key, which every backup of one epoch of a set shares (so chunks can be shared). */
export interface SetKeys {
  /** encrypts chunk records */
  chunk: Buffer;
  /** names chunks: a chunk's id is HMAC-SHA256(chunkId, plaintext), so ids say nothing of the content without it */
  chunkId: Buffer;
  /** keys the content-defined chunker's boundaries */
  gear: Buffer;
}

function checkSetKey(setKey: Buffer): void {
  if (setKey.length !== 32) throw new BackupError('key', 'the backup set key has the wrong length');
}

export function deriveSetKeys(setKey: Buffer): SetKeys {
  checkSetKey(setKey);
  const derive = (use: string): Buffer => Buffer.from(hkdfSync('sha256', setKey, Buffer.alloc(0), `${FORMAT_V2} ${use}`, 32));
  return { chunk: derive('chunk'), chunkId: derive('chunk id'), gear: derive('gear') };
}

/** Version 2: the key of one backup's manifest (salted with its id, as in version 1). */
export function deriveManifestKey(setKey: Buffer, backupId: string): Buffer {
  checkSetKey(setKey);
  return Buffer.from(hkdfSync('sha256', setKey, Buffer.from(backupId, 'utf8'), `${FORMAT_V2} manifest`, 32));
}

/**
 * The keys a backup is read with, from the key its header seals (version 1: the
 * backup's data key; version 2: the set key): the manifest's key and the chunks' scheme.
 */
export function keysOfBackup(header: Pick<ManifestHeader, 'format' | 'backupId'>, key: Buffer): { manifest: Buffer; scheme: ChunkScheme } {
  if (header.format === FORMAT_V1) {
    const keys = deriveKeys(key, header.backupId);
    return { manifest: keys.manifest, scheme: { format: FORMAT_V1, key: keys.chunk, backupId: header.backupId } };
  }
  const keys = deriveSetKeys(key);
  keys.gear.fill(0);
  return { manifest: deriveManifestKey(key, header.backupId), scheme: { format: FORMAT_V2, key: keys.chunk, idKey: keys.chunkId } };
}

/** Overwrite a scheme's keys once they are no longer needed. */
export function wipeScheme(scheme: ChunkScheme): void {
  scheme.key.fill(0);
  if (scheme.format === FORMAT_V2) scheme.idKey.fill(0);
}

/** Names a set key without revealing it (16 hex digits): backups with the same key id can share chunks. */
export function setKeyId(setKey: Buffer): string {
  checkSetKey(setKey);
  return Buffer.from(hkdfSync('sha256', setKey, Buffer.alloc(0), `${FORMAT_V2} key id`, 8)).toString('hex');
}

// ---------------------------------------------------------------- chunk records

/** What the manifest knows about a chunk, which is also what its record is bound to. */
export interface ChunkIdentity {
  codec: Codec;
  plainLength: number;
  /** hex: version 1 the SHA-256 of the plaintext, version 2 its HMAC-SHA256 under the set's chunk-id key (the chunk's id) */
  digest: string;
}

/**
 * How a backup's chunks are sealed and named. Version 1: a key per backup, the
 * record bound to the backup's id, named by SHA-256. Version 2: the set key's
 * chunk key, the record bound to the chunk's id alone (so any backup of the
 * epoch can reference it), named by a keyed hash.
 */
export type ChunkScheme = { format: typeof FORMAT_V1; key: Buffer; backupId: string } | { format: typeof FORMAT_V2; key: Buffer; idKey: Buffer };

function chunkAad(scheme: ChunkScheme, id: ChunkIdentity): Buffer {
  const head = Buffer.from(scheme.format === FORMAT_V1 ? `${FORMAT_V1} chunk\0${scheme.backupId}\0` : `${FORMAT_V2} chunk\0`, 'utf8');
  const tail = Buffer.alloc(5);
  tail.writeUInt8(id.codec, 0);
  tail.writeUInt32BE(id.plainLength, 1);
  return Buffer.concat([head, tail, Buffer.from(id.digest, 'hex')]);
}

export function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** The digest a chunk is named and checked by (ChunkIdentity.digest). */
export function chunkDigest(scheme: ChunkScheme, plain: Uint8Array): string {
  return scheme.format === FORMAT_V1 ? sha256(plain) : createHmac('sha256', scheme.idKey).update(plain).digest('hex');
}

export interface SealedChunk {
  identity: ChunkIdentity;
  /** nonce || ciphertext || tag, exactly what goes into a pack */
  record: Buffer[];
  length: number;
}

/**
 * Compress (if that saves at least 1/32 of the size), then encrypt one chunk.
 * The record is bound by its AAD to the codec, the plaintext length and the
 * chunk's digest (and in version 1 to the backup), so a record moved, swapped
 * or relabelled fails authentication.
 */
export function sealChunk(scheme: ChunkScheme, plain: Buffer, opts: { level: number; digest?: string }): SealedChunk {
  const digest = opts.digest ?? chunkDigest(scheme, plain);
  let payload: Buffer = plain;
  let codec: Codec = Codec.none;
  if (opts.level > 0) {
    const z = compress(plain, { compressionLevel: opts.level });
    if (z.length < plain.length - (plain.length >> 5)) {
      payload = z;
      codec = Codec.zstd;
    }
  }
  const identity: ChunkIdentity = { codec, plainLength: plain.length, digest };
  const nonce = randomBytes(NONCE_LEN);
  const c = createCipheriv('aes-256-gcm', scheme.key, nonce);
  c.setAAD(chunkAad(scheme, identity));
  const ct = c.update(payload);
  const fin = c.final();
  const tag = c.getAuthTag();
  const record = fin.length > 0 ? [nonce, ct, fin, tag] : [nonce, ct, tag];
  return { identity, record, length: NONCE_LEN + ct.length + fin.length + TAG_LEN };
}

/** Why a record could not be opened: told apart so the caller can re-fetch or report. */
export type OpenFailure = 'auth' | 'decompress' | 'hash' | 'length';

export class ChunkOpenError extends Error {
  constructor(readonly why: OpenFailure) {
    super(`chunk ${why} check failed`);
  }
}

/** Decrypt, decompress and verify one record; throws ChunkOpenError. */
export function openChunk(scheme: ChunkScheme, record: Buffer, id: ChunkIdentity): Buffer {
  if (record.length < RECORD_OVERHEAD) throw new ChunkOpenError('length');
  const d = createDecipheriv('aes-256-gcm', scheme.key, record.subarray(0, NONCE_LEN));
  d.setAAD(chunkAad(scheme, id));
  d.setAuthTag(record.subarray(record.length - TAG_LEN));
  let payload: Buffer;
  try {
    const a = d.update(record.subarray(NONCE_LEN, record.length - TAG_LEN));
    const b = d.final();
    payload = b.length > 0 ? Buffer.concat([a, b]) : a;
  } catch {
    throw new ChunkOpenError('auth');
  }
  let plain: Buffer;
  if (id.codec === Codec.zstd) {
    try {
      plain = decompress(payload);
    } catch {
      throw new ChunkOpenError('decompress');
    }
  } else {
    plain = payload;
  }
  if (plain.length !== id.plainLength) throw new ChunkOpenError('length');
  if (chunkDigest(scheme, plain) !== id.digest) throw new ChunkOpenError('hash');
  return plain;
}

let dctx: InstanceType<typeof zstdBinding.DCtx> | undefined;
const DECRYPT_PIECE = 64 * 1024;

/**
 * openChunk for the restore's hot path: the plaintext lands in `dst`, which may
 * be the very memory the record is in, and `scratch` (at least the record's
 * size) holds a compressed payload; no chunk-sized buffer is allocated per
 * chunk. Returns the plaintext's length; throws ChunkOpenError.
 */
export function openChunkInto(scheme: ChunkScheme, record: Buffer, id: ChunkIdentity, dst: Buffer, scratch: Buffer): number {
  if (record.length < RECORD_OVERHEAD) throw new ChunkOpenError('length');
  if (id.plainLength > dst.length) throw new ChunkOpenError('length');
  const d = createDecipheriv('aes-256-gcm', scheme.key, record.subarray(0, NONCE_LEN));
  d.setAAD(chunkAad(scheme, id));
  d.setAuthTag(record.subarray(record.length - TAG_LEN));
  // Decrypt in small pieces into `scratch` (or straight into `dst` for a stored-raw
  // chunk: plaintext byte i lands before ciphertext byte i is read, never after),
  // so no chunk-sized buffer is allocated per chunk.
  const ctLen = record.length - RECORD_OVERHEAD;
  const raw = id.codec !== Codec.zstd;
  const out = raw ? dst : scratch;
  if (ctLen > out.length) throw new ChunkOpenError('length');
  try {
    let w = 0;
    for (let off = NONCE_LEN; off < NONCE_LEN + ctLen; off += DECRYPT_PIECE) {
      const piece = d.update(record.subarray(off, Math.min(off + DECRYPT_PIECE, NONCE_LEN + ctLen)));
      out.set(piece, w);
      w += piece.length;
    }
    const fin = d.final();
    out.set(fin, w);
  } catch {
    throw new ChunkOpenError('auth');
  }
  let n: number;
  if (!raw) {
    try {
      dctx ??= new zstdBinding.DCtx();
      n = dctx.decompress(dst.subarray(0, id.plainLength), scratch.subarray(0, ctLen));
    } catch {
      throw new ChunkOpenError('decompress');
    }
  } else {
    n = ctLen;
  }
  if (n !== id.plainLength) throw new ChunkOpenError('length');
  if (chunkDigest(scheme, dst.subarray(0, n)) !== id.digest) throw new ChunkOpenError('hash');
  return n;
}

// ---------------------------------------------------------------- manifest

const Sha256Hex = z.string().regex(/^[0-9a-f]{64}$/);
const Uint = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
const Id = z
  .number()
  .int()
  .min(0)
  .max(2 ** 32);
const MtimeNs = z.string().regex(/^-?[0-9]{1,20}$/);
const Mode = z.number().int().min(0).max(0o7777);

/**
 * A path inside the backup: relative, '/'-separated, no '.', '..' or empty
 * segments (the root itself is '.'). Checked again on restore so a manifest
 * can never name a file outside the target.
 */
export const EntryPath = z
  .string()
  .refine(
    (p) => p === '.' || (p.length > 0 && !p.includes('\0') && p.split('/').every((s) => s !== '' && s !== '.' && s !== '..')),
    'expected a relative path without ., .. or empty segments',
  );

export const DirEntry = z.strictObject({ type: z.literal('dir'), path: EntryPath, mode: Mode, uid: Id, gid: Id, mtimeNs: MtimeNs });
export const FileEntry = z.strictObject({
  type: z.literal('file'),
  path: EntryPath,
  mode: Mode,
  uid: Id,
  gid: Id,
  mtimeNs: MtimeNs,
  size: Uint,
  /** SHA-256 of the whole content, hex */
  sha256: Sha256Hex,
  /** the source had holes: restore leaves zero regions as holes */
  sparse: z.boolean(),
  /**
   * the file's content piece by piece: an index into `chunks`, or a run of zero bytes (version 1: -1, a
   * chunkSize slice of zeros; version 2: -n, n zero bytes). Version 1 pieces are chunkSize slices.
   */
  chunks: z.array(
    z
      .number()
      .int()
      .min(-(2 ** 40)),
  ),
});
export const SymlinkEntry = z.strictObject({ type: z.literal('symlink'), path: EntryPath, target: z.string().min(1), uid: Id, gid: Id, mtimeNs: MtimeNs });
/** another name for a file entry earlier in the list (same inode) */
export const HardlinkEntry = z.strictObject({ type: z.literal('hardlink'), path: EntryPath, target: EntryPath });
export const Entry = z.discriminatedUnion('type', [DirEntry, FileEntry, SymlinkEntry, HardlinkEntry]);
export type Entry = z.infer<typeof Entry>;
export type DirEntry = z.infer<typeof DirEntry>;
export type FileEntry = z.infer<typeof FileEntry>;
export type SymlinkEntry = z.infer<typeof SymlinkEntry>;
export type HardlinkEntry = z.infer<typeof HardlinkEntry>;

/** [pack, offset, stored length, plain length, codec, digest] — a tuple to keep big manifests small (digest: ChunkIdentity) */
export const ChunkRef = z.tuple([Uint, Uint, Uint, Uint, z.union([z.literal(0), z.literal(1)]), Sha256Hex]);
export type ChunkRef = z.infer<typeof ChunkRef>;
export const PackRef = z.strictObject({ key: z.string().min(1), size: Uint });
export type PackRef = z.infer<typeof PackRef>;

/** The body as held in memory: version 2 keeps `packs` in the header, and they are copied here when it is opened. */
export const ManifestBody = z.strictObject({
  entries: z.array(Entry),
  chunks: z.array(ChunkRef),
  packs: z.array(PackRef),
});
export type ManifestBody = z.infer<typeof ManifestBody>;
const ManifestBodyV2 = ManifestBody.omit({ packs: true });

export const BackupStats = z.strictObject({
  files: Uint,
  dirs: Uint,
  symlinks: Uint,
  hardlinks: Uint,
  /** logical bytes of all regular files */
  bytes: Uint,
  /** bytes of all packs the backup needs (version 2: also those earlier backups wrote) */
  storedBytes: Uint,
  chunks: Uint,
  packs: Uint,
  /** sockets, fifos and device nodes, which a backup does not carry */
  skipped: Uint,
  /** version 2: chunks and their plain bytes the store already held (not uploaded again) */
  reusedChunks: Uint.optional(),
  reusedBytes: Uint.optional(),
  /** version 2: bytes of the packs this backup uploaded */
  uploadedBytes: Uint.optional(),
});
export type BackupStats = z.infer<typeof BackupStats>;

const HeaderCommon = {
  backupId: z.string().regex(BACKUP_ID),
  createdAt: z.string(),
  /** free-form label of the creating host, for people */
  host: z.string().optional(),
  /** the X25519 key the data key (version 2: the set key) is sealed to */
  recipient: z.string(),
  /** bosun-sealed-v1 value holding the 32-byte data key (version 2: the set key) */
  sealedDataKey: z.string(),
  /** Ed25519 key that signed this manifest, if it is signed */
  signer: z.string().optional(),
  cipher: z.literal('aes-256-gcm'),
  compression: z.literal('zstd'),
  stats: BackupStats,
};

export const ManifestHeaderV1 = z.strictObject({
  format: z.literal(FORMAT_V1),
  ...HeaderCommon,
  chunkSize: z
    .number()
    .int()
    .min(4096)
    .max(1 << 30),
  hash: z.literal('sha256'),
});

/** How version 2 cut files into chunks: fixed slices, or content-defined (keyed gear hash, src/backup/chunker.ts). */
export const Chunker = z.discriminatedUnion('kind', [
  z.strictObject({
    kind: z.literal('fixed'),
    size: z
      .number()
      .int()
      .min(4096)
      .max(64 << 20),
  }),
  z.strictObject({
    kind: z.literal('gear'),
    min: z.number().int().min(64),
    avg: z.number().int().min(256),
    max: z
      .number()
      .int()
      .max(64 << 20),
  }),
]);
export type Chunker = z.infer<typeof Chunker>;

export const ManifestHeaderV2 = z.strictObject({
  format: z.literal(FORMAT_V2),
  ...HeaderCommon,
  /** names the set key (setKeyId): backups with the same one share chunks */
  keyId: z.string().regex(/^[0-9a-f]{16}$/),
  chunker: Chunker,
  hash: z.literal('hmac-sha256'),
  /** how the data was made consistent (the spec's backup.consistency), for people */
  consistency: z.enum(['hooks', 'snapshot', 'crash-consistent']).optional(),
  /** every pack a chunk of this backup lies in; in the header so a prune needs no key to know what a backup uses */
  packs: z.array(PackRef),
});

export const ManifestHeader = z.discriminatedUnion('format', [ManifestHeaderV1, ManifestHeaderV2]);
export type ManifestHeader = z.infer<typeof ManifestHeader>;
export type ManifestHeaderV1 = z.infer<typeof ManifestHeaderV1>;
export type ManifestHeaderV2 = z.infer<typeof ManifestHeaderV2>;

/** The longest piece a file of this backup is cut into: what a slot must hold. */
export function maxChunkLength(header: ManifestHeader): number {
  if (header.format === FORMAT_V1) return header.chunkSize;
  return header.chunker.kind === 'fixed' ? header.chunker.size : header.chunker.max;
}

export interface Manifest {
  header: ManifestHeader;
  body: ManifestBody;
}

/**
 * Serialise and seal a manifest:
 *
 *   "BSNMANI1" | u32 H | header JSON | u32 B | nonce | GCM(zstd(body JSON)) | tag | u16 S | signature
 *
 * The header stays readable (a restorer needs the sealed data key before it
 * can open anything); it is the AAD of the body's encryption, so neither can
 * be changed without the data key. The signature covers every byte before it.
 */
export function encodeManifest(m: Manifest, manifestKeyBytes: Buffer, sign?: (data: Buffer) => Buffer): Buffer {
  const header = Buffer.from(JSON.stringify(m.header), 'utf8');
  const hlen = Buffer.alloc(4);
  hlen.writeUInt32BE(header.length);
  const aad = Buffer.concat([MANIFEST_MAGIC, hlen, header]);
  const nonce = randomBytes(NONCE_LEN);
  const c = createCipheriv('aes-256-gcm', manifestKeyBytes, nonce);
  c.setAAD(aad);
  const body = m.header.format === FORMAT_V1 ? m.body : { entries: m.body.entries, chunks: m.body.chunks };
  const ct = Buffer.concat([c.update(compress(Buffer.from(JSON.stringify(body), 'utf8'), { compressionLevel: 3 })), c.final()]);
  const blen = Buffer.alloc(4);
  blen.writeUInt32BE(NONCE_LEN + ct.length + TAG_LEN);
  const unsigned = Buffer.concat([aad, blen, nonce, ct, c.getAuthTag()]);
  const sig = sign ? sign(unsigned) : Buffer.alloc(0);
  if (sign && !m.header.signer) throw new Error('a signed manifest must name its signer');
  const slen = Buffer.alloc(2);
  slen.writeUInt16BE(sig.length);
  return Buffer.concat([unsigned, slen, sig]);
}

export interface SealedManifest {
  header: ManifestHeader;
  /** bytes covered by the signature */
  signed: Buffer;
  signature: Buffer | undefined;
  aad: Buffer;
  sealedBody: Buffer;
  /** SHA-256 of the whole manifest object: names this exact manifest in the restore journal */
  digest: string;
}

function formatError(what: string): BackupError {
  return new BackupError('format', `not a bosun backup manifest (${what})`);
}

/** Split a manifest object and check its header; nothing secret is needed yet. */
export function parseManifest(bytes: Buffer): SealedManifest {
  if (bytes.length < 8 + 4 + 4 + 2 || !bytes.subarray(0, 8).equals(MANIFEST_MAGIC)) throw formatError('bad magic');
  const hlen = bytes.readUInt32BE(8);
  let pos = 12 + hlen;
  if (pos + 4 > bytes.length) throw formatError('truncated header');
  let header: ManifestHeader;
  try {
    header = ManifestHeader.parse(JSON.parse(bytes.subarray(12, pos).toString('utf8')));
  } catch (e) {
    if (e instanceof z.ZodError) {
      // The first three issues, as for the body: a header with every field wrong must not make a page-long message.
      const more = e.issues.length > 3 ? `; and ${e.issues.length - 3} more` : '';
      const fmt = e.issues.find((i) => i.path[0] === 'format')
        ? 'unknown format version'
        : e.issues
            .slice(0, 3)
            .map((i) => `${i.path.join('.')}: ${i.message}`)
            .join('; ') + more;
      throw formatError(`header: ${fmt}`);
    }
    throw formatError('header is not JSON');
  }
  const aad = bytes.subarray(0, pos);
  const blen = bytes.readUInt32BE(pos);
  pos += 4;
  if (blen < RECORD_OVERHEAD || pos + blen + 2 > bytes.length) throw formatError('truncated body');
  const sealedBody = bytes.subarray(pos, pos + blen);
  pos += blen;
  const signed = bytes.subarray(0, pos);
  const slen = bytes.readUInt16BE(pos);
  pos += 2;
  if (pos + slen !== bytes.length) throw formatError('truncated or trailing bytes after the signature');
  const signature = slen > 0 ? bytes.subarray(pos, pos + slen) : undefined;
  return { header, signed, signature, aad, sealedBody, digest: sha256(bytes) };
}

/** Verify the manifest's own signature against the signer key it names. A missing signature is not an error here; policy decides. */
export function checkManifestSignature(m: SealedManifest): boolean {
  if (!m.signature) return false;
  if (!m.header.signer) throw new BackupError('integrity', 'manifest carries a signature but names no signer');
  const match = /^ed25519:([A-Za-z0-9_-]{43})$/.exec(m.header.signer);
  if (!match) throw new BackupError('integrity', 'manifest signer is not an ed25519 key');
  const key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: match[1]! }, format: 'jwk' });
  if (!edVerify(null, m.signed, key, m.signature))
    throw new BackupError('integrity', `manifest signature does not verify against its signer ${m.header.signer}: the manifest was altered`);
  return true;
}

/** Decrypt and validate the body. Every structural rule restore relies on is checked here. */
export function openManifestBody(m: SealedManifest, manifestKeyBytes: Buffer): ManifestBody {
  const d = createDecipheriv('aes-256-gcm', manifestKeyBytes, m.sealedBody.subarray(0, NONCE_LEN));
  d.setAAD(m.aad);
  d.setAuthTag(m.sealedBody.subarray(m.sealedBody.length - TAG_LEN));
  let plain: Buffer;
  try {
    plain = Buffer.concat([d.update(m.sealedBody.subarray(NONCE_LEN, m.sealedBody.length - TAG_LEN)), d.final()]);
  } catch {
    throw new BackupError(
      'integrity',
      `manifest of backup ${m.header.backupId} fails authentication: it was altered, or its header does not belong to its body`,
    );
  }
  let raw: unknown;
  try {
    raw = JSON.parse(decompress(plain).toString('utf8'));
  } catch {
    throw formatError('body does not decode');
  }
  const parsed = m.header.format === FORMAT_V1 ? ManifestBody.safeParse(raw) : ManifestBodyV2.safeParse(raw);
  if (!parsed.success)
    throw formatError(
      `body: ${parsed.error.issues
        .slice(0, 3)
        .map((i) => `${i.path.join('.')}: ${i.message}`)
        .join('; ')}`,
    );
  const body: ManifestBody = m.header.format === FORMAT_V1 ? (parsed.data as ManifestBody) : { ...parsed.data, packs: m.header.packs };
  checkManifestStructure(m.header, body);
  return body;
}

/**
 * Rules the schema cannot express: every entry's parent is a directory listed
 * before it (so nothing is ever written through a symlink), paths are unique,
 * hard links point at earlier regular files, chunk references are in range and
 * chunk lengths add up to the file size, and chunks lie inside their packs.
 */
export function checkManifestStructure(header: ManifestHeader, body: ManifestBody): void {
  const bad = (why: string): never => {
    throw formatError(why);
  };
  const kinds = new Map<string, Entry['type']>();
  body.entries.forEach((e, i) => {
    if (i === 0 && (e.path !== '.' || e.type !== 'dir')) bad('the first entry must be the root directory "."');
    if (i > 0 && e.path === '.') bad('"." appears twice');
    if (kinds.has(e.path)) bad(`path ${JSON.stringify(e.path)} appears twice`);
    if (i > 0) {
      const slash = e.path.lastIndexOf('/');
      const parent = slash < 0 ? '.' : e.path.slice(0, slash);
      if (kinds.get(parent) !== 'dir') bad(`the parent of ${JSON.stringify(e.path)} is not a directory listed before it`);
    }
    if (e.type === 'hardlink' && kinds.get(e.target) !== 'file') bad(`hard link ${JSON.stringify(e.path)} does not point at an earlier regular file`);
    if (e.type === 'file') checkFilePieces(header, body, e, bad);
    kinds.set(e.path, e.type);
  });
  if (body.entries.length === 0) bad('no root directory');
  body.chunks.forEach((c, i) => {
    const pack = body.packs[c[0]];
    if (!pack) return bad(`chunk ${i} is in pack ${c[0]}, which does not exist`);
    if (c[2] < RECORD_OVERHEAD || c[1] + c[2] > pack.size) bad(`chunk ${i} lies outside its pack`);
  });
}

/** A file's pieces cover exactly its size; each chunk it names exists and is as long as its place needs. */
function checkFilePieces(header: ManifestHeader, body: ManifestBody, e: FileEntry, bad: (why: string) => never): void {
  const name = JSON.stringify(e.path);
  if (header.format === FORMAT_V1) {
    const expect = Math.ceil(e.size / header.chunkSize);
    if (e.chunks.length !== expect) bad(`file ${name} has ${e.chunks.length} chunks for ${e.size} bytes`);
    e.chunks.forEach((c, k) => {
      if (c === -1) return;
      if (c < 0) bad(`file ${name} has a zero run of ${-c} bytes, which version 1 does not have`);
      const ref = body.chunks[c];
      if (!ref) return bad(`file ${name} names chunk ${c}, which does not exist`);
      const want = Math.min(header.chunkSize, e.size - k * header.chunkSize);
      if (ref[3] !== want) bad(`chunk ${c} holds ${ref[3]} bytes where ${name} needs ${want}`);
    });
    return;
  }
  const longest = maxChunkLength(header);
  let covered = 0;
  for (const c of e.chunks) {
    if (c >= 0 && !body.chunks[c]) bad(`file ${name} names chunk ${c}, which does not exist`);
    const length = c >= 0 ? body.chunks[c]![3] : -c;
    if (length === 0 || length > longest) bad(`file ${name} has a piece of ${length} bytes (1 to ${longest} allowed)`);
    covered += length;
  }
  if (covered !== e.size) bad(`the pieces of file ${name} add up to ${covered} bytes, not its ${e.size}`);
}

/** True if every byte of `buf` is zero; `zero` is a zero-filled buffer of any length, compared a slice at a time. */
export function isAllZero(buf: Buffer, zero: Buffer): boolean {
  for (let off = 0; off < buf.length; off += zero.length) {
    const n = Math.min(zero.length, buf.length - off);
    if (buf.compare(zero, 0, n, off, off + n) !== 0) return false;
  }
  return true;
}
