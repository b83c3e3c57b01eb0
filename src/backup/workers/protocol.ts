import type { FORMAT_V1, FORMAT_V2, OpenFailure } from '../format.js';

/**
 * Messages between the main thread and the backup worker threads. Chunk bytes
 * never travel in messages: they sit in slots of one SharedArrayBuffer that
 * both sides see (SlotRing), and a job names its slot. A worker reads the
 * record (or plaintext) from the slot and writes its answer back into it.
 */
export interface ChunkWorkerData {
  /**
   * the backup's ChunkScheme: the chunk sub-key (not the data or set key) and, by version, the backup's id or
   * the chunk-id key; they live only in this process
   */
  scheme: { format: typeof FORMAT_V1; key: Uint8Array; backupId: string } | { format: typeof FORMAT_V2; key: Uint8Array; idKey: Uint8Array };
  slots: SharedArrayBuffer;
  slotSize: number;
}

/** Where a slice goes: a descriptor the main thread holds open while the job runs, and the offset in that file. */
export interface SliceTarget {
  fd: number;
  pos: number;
  /** leave all-zero 4 KiB blocks as holes */
  sparse: boolean;
}

export type ChunkJob =
  /**
   * decrypt, decompress and verify the record in `slot`; the plaintext
   * replaces it, and is written to `write` if given (only once it verified)
   */
  | { op: 'open'; id: number; slot: number; length: number; codec: number; plainLength: number; digest: string; write?: SliceTarget }
  /** write the plaintext in `slot` (of `length` bytes) to another file that holds the same chunk */
  | { op: 'write'; id: number; slot: number; length: number; write: SliceTarget }
  /** the digest of the plaintext in `slot` (ChunkIdentity.digest), or that it is all zeros; the slot is left as it is */
  | { op: 'digest'; id: number; slot: number; length: number }
  /** compress and encrypt the plaintext in `slot`, whose digest is given; the record replaces it */
  | { op: 'seal'; id: number; slot: number; length: number; level: number; digest: string };

/** a job as the caller gives it; the pool adds the id */
export type ChunkJobInput = ChunkJob extends infer J ? (J extends unknown ? Omit<J, 'id'> : never) : never;

export type ChunkReply =
  | { id: number; ok: true; op: 'open'; plainLength: number }
  | { id: number; ok: true; op: 'write' }
  /** the write failed (ENOSPC, EIO, ...): not a problem of the data, so not fetched again */
  | { id: number; ok: false; why: 'write'; code?: string; message: string }
  | { id: number; ok: true; op: 'digest'; zero: true }
  | { id: number; ok: true; op: 'digest'; zero: false; digest: string }
  | { id: number; ok: true; op: 'seal'; recordLength: number; codec: number }
  /** the record (or, sealing, the plaintext) failed a check: see OpenFailure */
  | { id: number; ok: false; why: OpenFailure };

export interface DigestFile {
  path: string;
  size: number;
  sha256: string;
  /** per piece of the file: true if it is a run of zeros (a hole, or zeros written at the end) */
  holes: boolean[];
  /** the start of each piece, then the file's size */
  bounds: number[];
}

export type DigestIn =
  | { type: 'init'; maxPiece: number; files: DigestFile[] }
  /** slices now on disk: pairs of [file, ordinal] */
  | { type: 'written'; slices: number[] }
  | { type: 'finish' };

export type DigestOut = { type: 'verdict'; file: number; ok: boolean; detail?: string } | { type: 'finished'; pending: number };
