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
  targets: FileSlot[][];
}

/** Which file slices each stored chunk fills. Pure; pinned by unit tests. */
export function indexChunks(body: ManifestBody): RestoreIndex {
  const files = body.entries.filter((e): e is FileEntry => e.type === 'file');
  const targets: FileSlot[][] = body.chunks.map(() => []);
  files.forEach((f, file) => f.chunks.forEach((c, ordinal) => c >= 0 && targets[c]!.push({ file, ordinal })));
  return { files, targets };
}

/**
 * The ranged GETs that fetch every chunk not yet done: records that lie back
 * to back in a pack share one GET, up to maxRangeBytes, so a restore makes a
 * few large requests, not one per chunk, and a chunk already restored (after a
 * resume) is not fetched again. Chunks no file uses are skipped.
 */
export function planRanges(chunks: readonly ChunkRef[], targets: readonly FileSlot[][], isDone: (chunk: number) => boolean, maxRangeBytes: number): WorkRange[] {
  const order = chunks.map((_, i) => i).filter((i) => !isDone(i) && (targets[i]?.length ?? 0) > 0);
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
