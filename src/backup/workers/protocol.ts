/** Messages between the main thread and the backup worker threads. */
export interface ChunkWorkerData {
  /** the chunk sub-key (not the data key); lives only in this process */
  key: Uint8Array;
  backupId: string;
}

export type ChunkJob =
  | { op: 'open'; id: number; buffer: ArrayBuffer; length: number; codec: number; plainLength: number; sha256: string }
  | { op: 'seal'; id: number; buffer: ArrayBuffer; length: number; level: number };

/** a job as the caller gives it; the pool adds the id */
export type ChunkJobInput = ChunkJob extends infer J ? (J extends unknown ? Omit<J, 'id'> : never) : never;

export type ChunkReply =
  | { id: number; ok: true; plain: ArrayBuffer; plainLength: number; buffer: ArrayBuffer }
  | { id: number; ok: true; zero: true; buffer: ArrayBuffer }
  | { id: number; ok: true; sealed: { record: ArrayBuffer; codec: number; sha256: string }; buffer: ArrayBuffer }
  | { id: number; ok: false; why: string; buffer: ArrayBuffer };

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

export type DigestOut =
  | { type: 'verdict'; file: number; ok: boolean; detail?: string }
  | { type: 'finished'; pending: number };
