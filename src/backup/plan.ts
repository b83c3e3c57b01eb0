import type { ChunkRef, FileEntry, ManifestBody } from './format.js';

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

/** Which file slices each stored chunk fills. Pure; pinned by unit tests. */
export function indexChunks(body: ManifestBody): RestoreIndex {
  const files = body.entries.filter((e): e is FileEntry => e.type === 'file');
  const targets = new ChunkTargets(body.chunks.length);
  files.forEach((f, file) => f.chunks.forEach((c, ordinal) => c >= 0 && targets.add(c, { file, ordinal })));
  return { files, targets };
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
