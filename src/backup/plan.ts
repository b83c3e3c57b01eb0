import { FORMAT_V1, type ChunkRef, type FileEntry, type ManifestBody, type ManifestHeader } from './format.js';

/** A regular file of the manifest with its place in the list of files. */
export interface FileSlot {
  /** index into RestoreIndex.files */
  file: number;
  /** which chunkSize slice of the file */
  ordinal: number;
}

/** One ranged GET: consecutive records of one pack, in pack order. */
export interface WorkRange {
  pack: number;
  /** first byte, inclusive */
  start: number;
  /** last byte, inclusive */
  end: number;
  /** chunk indexes, in the order their records lie in the range */
  chunks: number[];
}

export interface RestoreIndex {
  files: FileEntry[];
  /** for each chunk index, every file slice it fills (more than one when identical content was stored once) */
  targets: ChunkTargets;
  /** where each slice of each file lies */
  pieces: PieceLayout;
}

/**
 * Where the pieces of every file lie: piece k of file f (the k-th item of its
 * chunk list, a chunk or a run of zeros) covers [start(f, k), end(f, k)). In
 * version 1 every piece but a file's last is chunkSize long; in version 2 a
 * piece is as long as its chunk or its zero run. One typed array for all files:
 * an array per file would cost ~80 bytes of heap per file.
 */
export class PieceLayout {
  /** per file, where its pieces' bounds begin in #bounds */
  readonly #first: Float64Array;
  /** per file, the start of each piece, then the file's size */
  readonly #bounds: Float64Array;

  constructor(header: ManifestHeader, body: Pick<ManifestBody, 'chunks'>, files: readonly FileEntry[]) {
    this.#first = new Float64Array(files.length);
    this.#bounds = new Float64Array(files.reduce((n, f) => n + f.chunks.length + 1, 0));
    let at = 0;
    files.forEach((file, index) => {
      this.#first[index] = at;
      let pos = 0;
      file.chunks.forEach((item, k) => {
        this.#bounds[at++] = pos;
        pos += pieceLength(header, body, file, item, k);
      });
      this.#bounds[at++] = pos;
    });
  }

  start(file: number, ordinal: number): number {
    return this.#bounds[this.#first[file]! + ordinal]!;
  }

  length(file: number, ordinal: number): number {
    const at = this.#first[file]! + ordinal;
    return this.#bounds[at + 1]! - this.#bounds[at]!;
  }

  /** the start of every piece of a file, then its size */
  bounds(file: number, pieces: number): number[] {
    const from = this.#first[file]!;
    return Array.from(this.#bounds.subarray(from, from + pieces + 1));
  }
}

/** The length of a file's k-th piece: its chunk's, or its zero run's. */
export function pieceLength(header: ManifestHeader, body: Pick<ManifestBody, 'chunks'>, file: FileEntry, item: number, k: number): number {
  if (item >= 0) return body.chunks[item]![3];
  return header.format === FORMAT_V1 ? Math.min(header.chunkSize, file.size - k * header.chunkSize) : -item;
}

/**
 * Which file slices each chunk fills, in two typed arrays (the first slice of
 * every chunk) and a map for the rare second and later ones (deduplicated
 * content). An array of objects per chunk cost ~240 bytes per chunk of the
 * restoring process's live heap, which V8 lets grow to ~2.7 times its live size.
 */
export class ChunkTargets {
  readonly #file: Int32Array;
  readonly #ordinal: Int32Array;
  readonly #more = new Map<number, FileSlot[]>();

  constructor(readonly chunks: number) {
    this.#file = new Int32Array(chunks).fill(-1);
    this.#ordinal = new Int32Array(chunks);
  }

  add(chunk: number, slot: FileSlot): void {
    if (this.#file[chunk] === -1) {
      this.#file[chunk] = slot.file;
      this.#ordinal[chunk] = slot.ordinal;
    } else {
      const more = this.#more.get(chunk);
      if (more) more.push(slot);
      else this.#more.set(chunk, [slot]);
    }
  }

  /** Does any file use this chunk? */
  used(chunk: number): boolean {
    return this.#file[chunk] !== -1;
  }

  /** The slices this chunk fills, in manifest order (a new array each call). */
  of(chunk: number): FileSlot[] {
    const file = this.#file[chunk];
    if (file === undefined || file === -1) return [];
    return [{ file, ordinal: this.#ordinal[chunk]! }, ...(this.#more.get(chunk) ?? [])];
  }
}

/** Which file slices each stored chunk fills, and where every slice lies. Pure; pinned by unit tests. */
export function indexChunks(header: ManifestHeader, body: ManifestBody): RestoreIndex {
  const files = body.entries.filter((e): e is FileEntry => e.type === 'file');
  const targets = new ChunkTargets(body.chunks.length);
  files.forEach((f, file) => f.chunks.forEach((c, ordinal) => c >= 0 && targets.add(c, { file, ordinal })));
  return { files, targets, pieces: new PieceLayout(header, body, files) };
}

/**
 * The ranged GETs that fetch every chunk not yet done: records that lie back
 * to back in a pack share one GET, up to maxRangeBytes, so a restore makes a
 * few large requests, not one per chunk, and a chunk already restored (after a
 * resume) is not fetched again. Chunks no file uses are skipped.
 */
export function planRanges(
  chunks: readonly ChunkRef[],
  isUsed: (chunk: number) => boolean,
  isDone: (chunk: number) => boolean,
  maxRangeBytes: number,
): WorkRange[] {
  const order = chunks.map((_, i) => i).filter((i) => !isDone(i) && isUsed(i));
  order.sort((a, b) => chunks[a]![0] - chunks[b]![0] || chunks[a]![1] - chunks[b]![1]);
  const out: WorkRange[] = [];
  let cur: WorkRange | undefined;
  for (const i of order) {
    const [pack, offset, length] = chunks[i]!;
    const end = offset + length - 1;
    if (cur && cur.pack === pack && cur.end + 1 === offset && end - cur.start + 1 <= maxRangeBytes) {
      cur.end = end;
      cur.chunks.push(i);
    } else {
      cur = { pack, start: offset, end, chunks: [i] };
      out.push(cur);
    }
  }
  return out;
}
