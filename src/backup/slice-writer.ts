// Writing a restored slice (one chunk's plaintext at its place in a file).
// Runs in the chunk worker, right after the chunk is opened and verified, with
// synchronous writes on a descriptor the main thread opened: no promise and no
// thread-pool round trip per write.
import { writeSync } from 'node:fs';

/**
 * Bytes per write(2) at most. The kernel sizes page-cache folios by the write,
 * and a large folio needs a large free block: on a VM that hands free memory
 * back to its host (virtio-balloon free page reporting, as on the test
 * machine), such blocks are mostly memory the host must fault in again, page
 * by page. Measured there (dd of 1 GiB into a file after freeing 1 GiB):
 * bs=4M 4-6 s of system time, bs=1M 0.2-2 s, bs=64K 0.3 s every time; a 1 GiB
 * restore with 1 MiB pieces still spent up to half its CPU copying into the
 * page cache. Small writes take the small free blocks the guest still has.
 */
export const WRITE_PIECE = 64 * 1024;

/** Sparse files skip zero blocks of this size. */
export const SPARSE_BLOCK = 4096;

export type WriteFn = (fd: number, buf: Buffer, offset: number, length: number, position: number) => number;

/** pwrite all of buf[from, to) at pos + from, at most WRITE_PIECE bytes per call. */
function writeRange(fd: number, buf: Buffer, from: number, to: number, pos: number, write: WriteFn): void {
  let n = from;
  while (n < to) n += write(fd, buf, n, Math.min(WRITE_PIECE, to - n), pos + n);
}

/**
 * Write `buf` at `pos` of the file open on `fd`; for a sparse file, 4 KiB
 * blocks that are all zero are left as holes (`zero` is a zero buffer of at
 * least SPARSE_BLOCK bytes).
 */
export function writeSlice(fd: number, buf: Buffer, pos: number, sparse: boolean, zero: Buffer, write: WriteFn = writeSync): void {
  if (!sparse) return writeRange(fd, buf, 0, buf.length, pos, write);
  let runStart = -1;
  for (let off = 0; off < buf.length; off += SPARSE_BLOCK) {
    const end = Math.min(buf.length, off + SPARSE_BLOCK);
    const isZero = buf.compare(zero, 0, end - off, off, end) === 0;
    if (!isZero && runStart < 0) runStart = off;
    if (isZero && runStart >= 0) {
      writeRange(fd, buf, runStart, off, pos, write);
      runStart = -1;
    }
  }
  if (runStart >= 0) writeRange(fd, buf, runStart, buf.length, pos, write);
  // The slice ended in skipped zero blocks: write its last byte (a zero) so the
  // file reaches the slice's end. Otherwise, until a later slice is written (or
  // for good, if this is the file's last stored slice), the file would be
  // shorter than its content: a read-back check would hit end-of-file inside a
  // written slice, and the restored file could end up too short.
  else if (buf.length > 0) write(fd, zero, 0, 1, pos + buf.length - 1);
}
