// Content-defined chunking for incremental backups: where to cut a file so
// that an edit moves only the chunk boundaries near it. Pure, no I/O.
//
// A gear hash rolls over the bytes of the current chunk: per byte,
// h = (h << 1) + gear[byte] (mod 2^32), so h depends on the last 32 bytes only
// (older ones are shifted out). A chunk ends after a byte whose h has its top
// `bits` bits all zero. The decision at a position is therefore a function of
// the 32 bytes ending there and of the chunk's length so far:
//   - length < min:           no cut (the hash starts 32 bytes before min);
//   - min <= length < avg:    cut if the top log2(avg)+2 bits are zero (rare);
//   - avg <= length < max:    cut if the top log2(avg)-2 bits are zero (likely);
//   - length == max:          cut.
// The two masks ("normalized chunking", level 2) keep sizes close to avg.
// The gear table comes from a secret key, so the boundaries, and with them the
// chunk sizes an observer of the store sees, say nothing about the content to
// someone who knows this algorithm but not the key.
import { hkdfSync } from 'node:crypto';

/** Chunk size limits in bytes: no chunk but a file's last is shorter than min or longer than max. */
export interface ChunkParams {
  min: number;
  /** the target size, a power of two */
  avg: number;
  max: number;
}

/** bytes the gear hash covers: a position's hash depends on these last bytes only */
export const GEAR_WINDOW = 32;
/** mask bits added before avg and taken away after it */
const NORMALIZATION = 2;
export const GEAR_KEY_LENGTH = 32;
const GEAR_INFO = 'bosun-backup-v2 gear';

/** The 256 gear values for a key: HKDF-SHA256(key, salt "", info "bosun-backup-v2 gear"), 1024 bytes read as u32 big-endian. */
export function gearTable(key: Uint8Array): Uint32Array {
  if (key.length !== GEAR_KEY_LENGTH) throw new RangeError(`chunker: the gear key must be ${GEAR_KEY_LENGTH} bytes, got ${key.length}`);
  const bytes = new DataView(hkdfSync('sha256', key, new Uint8Array(0), GEAR_INFO, 1024));
  const gear = new Uint32Array(256);
  for (let i = 0; i < 256; i++) gear[i] = bytes.getUint32(i * 4, false);
  return gear;
}

/** Refuses limits the chunker cannot honour; returns the number of mask bits for avg. */
export function checkChunkParams(p: ChunkParams): number {
  for (const name of ['min', 'avg', 'max'] as const)
    if (!Number.isSafeInteger(p[name]) || p[name] <= 0) throw new RangeError(`chunker: ${name} must be a positive integer, got ${p[name]}`);
  if (!(p.min < p.avg && p.avg < p.max)) throw new RangeError(`chunker: need min < avg < max, got ${p.min}, ${p.avg}, ${p.max}`);
  if ((p.avg & (p.avg - 1)) !== 0) throw new RangeError(`chunker: avg must be a power of two, got ${p.avg}`);
  if (p.min < 2 * GEAR_WINDOW) throw new RangeError(`chunker: min must be at least ${2 * GEAR_WINDOW} bytes, got ${p.min}`);
  const bits = Math.log2(p.avg);
  if (bits - NORMALIZATION < 1 || bits + NORMALIZATION > 31)
    throw new RangeError(`chunker: avg must be between 2^${1 + NORMALIZATION} and 2^${31 - NORMALIZATION}, got ${p.avg}`);
  return bits;
}

/** A mask of the top `bits` bits of a 32-bit word, as an int32. */
function topBits(bits: number): number {
  return ~(2 ** (32 - bits) - 1) | 0;
}

/**
 * Finds cut points in a stream of bytes fed block by block, never copying
 * them. `next(buf, start, end)` scans buf[start, end): it returns the index
 * just past the last byte of the current chunk (the chunk ends there and a new
 * one starts), or -1 if no chunk ends before end, in which case the bytes
 * scanned belong to a chunk the next block continues. After a cut the caller
 * calls next again from the returned index. The end of a file always ends a
 * chunk (the `pending` bytes since the last cut); call reset() before the next
 * file.
 */
export class Chunker {
  private readonly gear: Int32Array;
  private readonly min: number;
  private readonly avg: number;
  private readonly max: number;
  private readonly strictMask: number;
  private readonly looseMask: number;
  /** bytes of the current chunk already scanned */
  private length = 0;
  /** the gear hash at the last byte scanned */
  private hash = 0;

  constructor(params: ChunkParams, key: Uint8Array) {
    const bits = checkChunkParams(params);
    this.gear = new Int32Array(gearTable(key).buffer);
    this.min = params.min;
    this.avg = params.avg;
    this.max = params.max;
    this.strictMask = topBits(bits + NORMALIZATION);
    this.looseMask = topBits(bits - NORMALIZATION);
  }

  /** Bytes scanned since the last cut: at the end of a file, the length of its last chunk. */
  get pending(): number {
    return this.length;
  }

  /** Forget the current chunk: the next byte fed starts a new one (a new file). */
  reset(): void {
    this.length = 0;
    this.hash = 0;
  }

  /** The index in buf where the current chunk ends, if it ends in buf[start, end); else -1. */
  next(buf: Uint8Array, start: number, end: number): number {
    if (start < 0 || end > buf.length || start > end) throw new RangeError(`chunker: bad range [${start}, ${end}) of a ${buf.length}-byte buffer`);
    const gear = this.gear;
    // buf index of the current chunk's first byte (negative when it started in an earlier block)
    const base = start - this.length;
    let h = this.hash;
    let i = Math.max(start, base + this.min - GEAR_WINDOW);
    // Three phases, each ending where the chunk reaches its next length limit or where the block ends:
    // hash only (lengths below min), strict mask (below avg), loose mask (up to max, then a forced cut).
    for (const stop = Math.min(end, base + this.min - 1); i < stop; i++) h = ((h << 1) + gear[buf[i]!]!) | 0;
    const strict = this.strictMask;
    for (const stop = Math.min(end, base + this.avg - 1); i < stop; i++) {
      h = ((h << 1) + gear[buf[i]!]!) | 0;
      if ((h & strict) === 0) return this.cut(i + 1);
    }
    const loose = this.looseMask;
    for (const stop = Math.min(end, base + this.max); i < stop; i++) {
      h = ((h << 1) + gear[buf[i]!]!) | 0;
      if ((h & loose) === 0) return this.cut(i + 1);
    }
    if (i === base + this.max) return this.cut(i);
    this.length = end - base;
    this.hash = h;
    return -1;
  }

  private cut(at: number): number {
    this.reset();
    return at;
  }
}

/** The end offset of every chunk of data (the last is data.length; none for empty data). */
export function cutPoints(data: Uint8Array, params: ChunkParams, key: Uint8Array): number[] {
  const chunker = new Chunker(params, key);
  const cuts: number[] = [];
  for (let at = chunker.next(data, 0, data.length); at >= 0; at = chunker.next(data, at, data.length)) cuts.push(at);
  if (chunker.pending > 0) cuts.push(data.length);
  return cuts;
}
