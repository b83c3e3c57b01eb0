// Deterministic database-like data for the benchmarks (chunking.bench.ts,
// backup.bench.ts): small decisions from a seeded xorshift, random bytes from
// an AES-CTR keystream, and heap-table-like 8 KiB pages.
import { createCipheriv, createHash } from 'node:crypto';

export const PAGE = 8 * 1024;

/** Marsaglia's xorshift32: small decisions (sizes, offsets, words) from a seed. */
export class Rng {
  private x: number;
  constructor(seed: number) {
    this.x = seed >>> 0 || 0x9e3779b9;
  }
  /** an integer in [0, n) */
  int(n: number): number {
    let x = this.x;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.x = x >>> 0;
    return Math.floor((this.x / 2 ** 32) * n);
  }
  /** an integer in [lo, hi] */
  between(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
}

/** Random bytes fast: an AES-256-CTR keystream keyed by the seed. */
export class KeyStream {
  private readonly cipher: ReturnType<typeof createCipheriv>;
  /** label: a name for the stream, so two benchmarks with one seed need not share their bytes */
  constructor(seed: number, label = 'chunking bench') {
    const key = createHash('sha256').update(`${label} keystream ${seed}`).digest();
    this.cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  }
  bytes(n: number): Buffer {
    return this.cipher.update(Buffer.alloc(n));
  }
}

const WORDS = (
  'alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa ' +
  'select insert update delete order invoice account balance customer pending shipped error warning info'
).split(' ');

/** Heap-table-like content: 8 KiB pages with a header, line pointers, rows packed from the end and free space (zeros) between. */
export class TableWriter {
  private row = 1;
  private lsn = 0x1000000;
  constructor(private readonly rng: Rng) {}

  bytes(n: number): Buffer {
    const buf = Buffer.alloc(Math.ceil(n / PAGE) * PAGE);
    for (let at = 0; at < buf.length; at += PAGE) this.page(buf, at);
    return buf.subarray(0, n);
  }

  private page(buf: Buffer, at: number): void {
    const rng = this.rng;
    this.lsn += rng.between(1, 65536);
    const keepFree = rng.int(PAGE / 4);
    let lower = at + 24;
    let upper = at + PAGE;
    for (;;) {
      const text = `${WORDS[rng.int(WORDS.length)]} ${WORDS[rng.int(WORDS.length)]} ${rng.int(1_000_000)}.${rng.int(100)}`;
      const len = (40 + text.length + 7) & ~7;
      if (upper - len - (lower + 4) < keepFree) break;
      upper -= len;
      buf.writeUInt32LE(this.row % 4_000_000_000, upper); // xmin-like
      buf.writeUInt16LE(3, upper + 18); // attribute count
      buf.writeUInt32LE(this.row++ % 4_000_000_000, upper + 24); // id
      buf.writeUInt32LE(1_700_000_000 + (this.row >>> 4), upper + 28); // a timestamp that grows slowly
      buf.writeUInt32LE(rng.int(1 << 30), upper + 32); // a random foreign key
      buf.write(text, upper + 40, 'latin1');
      buf.writeUInt32LE((upper - at) | (len << 16), lower);
      lower += 4;
    }
    buf.writeUInt32LE(Math.floor(this.lsn / 2 ** 32), at);
    buf.writeUInt32LE(this.lsn >>> 0, at + 4);
    buf.writeUInt16LE(rng.int(65536), at + 8); // checksum
    buf.writeUInt16LE(lower - at, at + 12);
    buf.writeUInt16LE(upper - at, at + 14);
    buf.writeUInt16LE(PAGE, at + 16);
    buf.writeUInt16LE(0x2004, at + 18); // page size and layout version
  }
}
