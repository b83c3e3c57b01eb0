import { createCipheriv, createDecipheriv, createHash, createPublicKey, hkdfSync, randomBytes, verify as edVerify } from 'node:crypto';
import { compress, decompress } from 'zstd-napi';
import zstdBinding from 'zstd-napi/binding.js';
import { z } from 'zod';
import { BackupError } from './errors.js';

/**
 * The bosun backup format, version 1 (see FORMAT.md beside this file for the
 * prose). Everything here is pure: bytes in, bytes out, no I/O, so the
 * format is pinned by unit tests and shared by create, restore and any
 * transport.
 */

export const FORMAT = 'bosun-backup-v1';
export const MANIFEST_MAGIC = Buffer.from('BSNMANI1', 'latin1');
export const NONCE_LEN = 12;
export const TAG_LEN = 16;
/** bytes a sealed chunk record adds to its payload: nonce and GCM tag */
export const RECORD_OVERHEAD = NONCE_LEN + TAG_LEN;
export const DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024;
export const DEFAULT_PACK_SIZE = 32 * 1024 * 1024;
/** a manifest larger than this is refused before it is read into memory */
export const MAX_MANIFEST_BYTES = 1024 * 1024 * 1024;

export const Codec = { none: 0, zstd: 1 } as const;
export type Codec = (typeof Codec)[keyof typeof Codec];

// ---------------------------------------------------------------- object names

export function manifestKey(backupId: string): string {
  return `backups/${backupId}/manifest`;
}
export function packKey(backupId: string, pack: number): string {
  return `backups/${backupId}/packs/${String(pack).padStart(6, '0')}.pack`;
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

export const LatestPointer = z.strictObject({ format: z.literal(FORMAT), backupId: z.string().regex(BACKUP_ID), createdAt: z.string() });
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
    chunk: Buffer.from(hkdfSync('sha256', dataKey, salt, `${FORMAT} chunk`, 32)),
    manifest: Buffer.from(hkdfSync('sha256', dataKey, salt, `${FORMAT} manifest`, 32)),
  };
}

// ---------------------------------------------------------------- chunk records

/** What the manifest knows about a chunk, which is also what its record is bound to. */
export interface ChunkIdentity {
  codec: Codec;
  plainLength: number;
  /** SHA-256 of the plaintext, hex */
  sha256: string;
}

function chunkAad(backupId: string, id: ChunkIdentity): Buffer {
  const head = Buffer.from(`${FORMAT} chunk\0${backupId}\0`, 'utf8');
  const tail = Buffer.alloc(5);
  tail.writeUInt8(id.codec, 0);
  tail.writeUInt32BE(id.plainLength, 1);
  return Buffer.concat([head, tail, Buffer.from(id.sha256, 'hex')]);
}

export function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

export interface SealedChunk {
  identity: ChunkIdentity;
  /** nonce || ciphertext || tag, exactly what goes into a pack */
  record: Buffer[];
  length: number;
}

/**
 * Compress (if that saves at least 1/32 of the size), then encrypt one chunk.
 * The record is bound by its AAD to the backup, the codec, the plaintext length
 * and the plaintext hash, so a record moved, swapped or replayed from another
 * backup fails authentication.
 */
export function sealChunk(key: Buffer, backupId: string, plain: Buffer, opts: { level: number; hash?: string }): SealedChunk {
  const hash = opts.hash ?? sha256(plain);
  let payload: Buffer = plain;
  let codec: Codec = Codec.none;
  if (opts.level > 0) {
    const z = compress(plain, { compressionLevel: opts.level });
    if (z.length < plain.length - (plain.length >> 5)) {
      payload = z;
      codec = Codec.zstd;
    }
  }
  const identity: ChunkIdentity = { codec, plainLength: plain.length, sha256: hash };
  const nonce = randomBytes(NONCE_LEN);
  const c = createCipheriv('aes-256-gcm', key, nonce);
  c.setAAD(chunkAad(backupId, identity));
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
export function openChunk(key: Buffer, backupId: string, record: Buffer, id: ChunkIdentity): Buffer {
  if (record.length < RECORD_OVERHEAD) throw new ChunkOpenError('length');
  const d = createDecipheriv('aes-256-gcm', key, record.subarray(0, NONCE_LEN));
  d.setAAD(chunkAad(backupId, id));
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
  if (sha256(plain) !== id.sha256) throw new ChunkOpenError('hash');
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
export function openChunkInto(key: Buffer, backupId: string, record: Buffer, id: ChunkIdentity, dst: Buffer, scratch: Buffer): number {
  if (record.length < RECORD_OVERHEAD) throw new ChunkOpenError('length');
  if (id.plainLength > dst.length) throw new ChunkOpenError('length');
  const d = createDecipheriv('aes-256-gcm', key, record.subarray(0, NONCE_LEN));
  d.setAAD(chunkAad(backupId, id));
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
  if (sha256(dst.subarray(0, n)) !== id.sha256) throw new ChunkOpenError('hash');
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
  /** one per chunkSize slice of the file: an index into `chunks`, or -1 for a slice that is all zeros */
  chunks: z.array(z.number().int().min(-1)),
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

/** [pack, offset, stored length, plain length, codec, sha256] — a tuple to keep big manifests small */
export const ChunkRef = z.tuple([Uint, Uint, Uint, Uint, z.union([z.literal(0), z.literal(1)]), Sha256Hex]);
export type ChunkRef = z.infer<typeof ChunkRef>;
export const PackRef = z.strictObject({ key: z.string().min(1), size: Uint });
export type PackRef = z.infer<typeof PackRef>;

export const ManifestBody = z.strictObject({
  entries: z.array(Entry),
  chunks: z.array(ChunkRef),
  packs: z.array(PackRef),
});
export type ManifestBody = z.infer<typeof ManifestBody>;

export const BackupStats = z.strictObject({
  files: Uint,
  dirs: Uint,
  symlinks: Uint,
  hardlinks: Uint,
  /** logical bytes of all regular files */
  bytes: Uint,
  /** bytes of all packs */
  storedBytes: Uint,
  chunks: Uint,
  packs: Uint,
  /** sockets, fifos and device nodes, which a backup does not carry */
  skipped: Uint,
});
export type BackupStats = z.infer<typeof BackupStats>;

export const ManifestHeader = z.strictObject({
  format: z.literal(FORMAT),
  backupId: z.string().regex(BACKUP_ID),
  createdAt: z.string(),
  /** free-form label of the creating host, for people */
  host: z.string().optional(),
  /** the X25519 key the data key is sealed to */
  recipient: z.string(),
  /** bosun-sealed-v1 value holding the 32-byte data key */
  sealedDataKey: z.string(),
  /** Ed25519 key that signed this manifest, if it is signed */
  signer: z.string().optional(),
  chunkSize: z
    .number()
    .int()
    .min(4096)
    .max(1 << 30),
  cipher: z.literal('aes-256-gcm'),
  compression: z.literal('zstd'),
  hash: z.literal('sha256'),
  stats: BackupStats,
});
export type ManifestHeader = z.infer<typeof ManifestHeader>;

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
  const ct = Buffer.concat([c.update(compress(Buffer.from(JSON.stringify(m.body), 'utf8'), { compressionLevel: 3 })), c.final()]);
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
  const parsed = ManifestBody.safeParse(raw);
  if (!parsed.success)
    throw formatError(
      `body: ${parsed.error.issues
        .slice(0, 3)
        .map((i) => `${i.path.join('.')}: ${i.message}`)
        .join('; ')}`,
    );
  checkManifestStructure(m.header, parsed.data);
  return parsed.data;
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
    if (e.type === 'file') {
      const expect = Math.ceil(e.size / header.chunkSize);
      if (e.chunks.length !== expect) bad(`file ${JSON.stringify(e.path)} has ${e.chunks.length} chunks for ${e.size} bytes`);
      e.chunks.forEach((c, k) => {
        if (c === -1) return;
        const ref = body.chunks[c];
        if (!ref) return bad(`file ${JSON.stringify(e.path)} names chunk ${c}, which does not exist`);
        const want = Math.min(header.chunkSize, e.size - k * header.chunkSize);
        if (ref[3] !== want) bad(`chunk ${c} holds ${ref[3]} bytes where ${JSON.stringify(e.path)} needs ${want}`);
      });
    }
    kinds.set(e.path, e.type);
  });
  if (body.entries.length === 0) bad('no root directory');
  body.chunks.forEach((c, i) => {
    const pack = body.packs[c[0]];
    if (!pack) return bad(`chunk ${i} is in pack ${c[0]}, which does not exist`);
    if (c[2] < RECORD_OVERHEAD || c[1] + c[2] > pack.size) bad(`chunk ${i} lies outside its pack`);
  });
}

/** True if every byte of `buf` is zero; `zero` is a zero-filled buffer of any length, compared a slice at a time. */
export function isAllZero(buf: Buffer, zero: Buffer): boolean {
  for (let off = 0; off < buf.length; off += zero.length) {
    const n = Math.min(zero.length, buf.length - off);
    if (buf.compare(zero, 0, n, off, off + n) !== 0) return false;
  }
  return true;
}
