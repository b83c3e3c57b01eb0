import type { OpenFailure } from '../format.js';

/**
 * Messages between the main thread and the backup worker threads. Chunk bytes
 * never travel in messages: they sit in slots of one SharedArrayBuffer that
 * both sides see (SlotRing), and a job names its slot. A worker reads the
 * record (or plaintext) from the slot and writes its answer back into it.
 */
export interface ChunkWorkerData {
  /** the chunk sub-key (not the data key); lives only in this process */
  key: Uint8Array;
  backupId: string;
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
  | { op: 'open'; id: number; slot: number; length: number; codec: number; plainLength: number; sha256: string; write?: SliceTarget }
  /** write the plaintext in `slot` (of `length` bytes) to another file that holds the same chunk */
  | { op: 'write'; id: number; slot: number; length: number; write: SliceTarget }
  /** hash, compress and encrypt the plaintext in `slot`; the record replaces it */
  | { op: 'seal'; id: number; slot: number; length: number; level: number };

/** a job as the caller gives it; the pool adds the id */
export type ChunkJobInput = ChunkJob extends infer J ? (J extends unknown ? Omit<J, 'id'> : never) : never;

export type ChunkReply =
  | { id: number; ok: true; op: 'open'; plainLength: number }
  | { id: number; ok: true; op: 'write' }
  /** the write failed (ENOSPC, EIO, ...): not a problem of the data, so not fetched again */
  | { id: number; ok: false; why: 'write'; code?: string; message: string }
  | { id: number; ok: true; op: 'seal'; zero: true }
  | { id: number; ok: true; op: 'seal'; zero: false; recordLength: number; codec: number; sha256: string }
  /** the record (or, sealing, the plaintext) failed a check: see OpenFailure */
  | { id: number; ok: false; why: OpenFailure };

export interface DigestFile {
  path: string;
  size: number;
  sha256: string;
  /** per chunkSize slice: true if it is a hole (hashes as zeros) */
  holes: boolean[];
}

export type DigestIn =
  | { type: 'init'; chunkSize: number; files: DigestFile[] }
  /** slices now on disk: pairs of [file, ordinal] */
  | { type: 'written'; slices: number[] }
  | { type: 'finish' };

export type DigestOut = { type: 'verdict'; file: number; ok: boolean; detail?: string } | { type: 'finished'; pending: number };
