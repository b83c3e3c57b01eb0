import { Chunker } from './chunker.js';
import type { Chunker as ChunkerSpec } from './format.js';

/**
 * Where a backup cuts files into chunks, fed block by block (the interface of
 * chunker.ts's Chunker): next(buf, start, end) is the index just past the end
 * of the current chunk if it ends in buf[start, end), else -1; the end of a
 * file ends its last chunk (`pending` bytes); reset() starts a new file.
 */
export interface Cutter {
  next(buf: Uint8Array, start: number, end: number): number;
  readonly pending: number;
  reset(): void;
}

/** Fixed slices of `size` bytes (version 1's layout; version 2's `fixed` chunker). */
export class FixedCutter implements Cutter {
  #length = 0;

  constructor(readonly size: number) {}

  get pending(): number {
    return this.#length;
  }

  reset(): void {
    this.#length = 0;
  }

  next(_buf: Uint8Array, start: number, end: number): number {
    const cut = start + this.size - this.#length;
    if (cut <= end) {
      this.#length = 0;
      return cut;
    }
    this.#length += end - start;
    return -1;
  }
}

/** The default of version 2: content-defined chunks of 16 KiB to 256 KiB, 64 KiB on average (measured: docs/performance.md). */
export const DEFAULT_CHUNKER: ChunkerSpec = { kind: 'gear', min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024 };

/** A cutter for a header's chunker; the gear chunker's boundaries are keyed by the set's gear key. */
export function cutterFor(spec: ChunkerSpec, gearKey: Uint8Array): Cutter {
  return spec.kind === 'fixed' ? new FixedCutter(spec.size) : new Chunker(spec, gearKey);
}

/** The longest chunk a chunker makes. */
export function longestChunk(spec: ChunkerSpec): number {
  return spec.kind === 'fixed' ? spec.size : spec.max;
}
