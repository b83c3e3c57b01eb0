import type { FileEntry } from '../format.js';

/** What the session tells as slices land, and hears back per file: the digest worker (DigestChecker), or WrittenTracker. */
export interface FileTracker {
  written(file: number, ordinal: number): void;
  finish(): Promise<number>;
  close(): Promise<void>;
}

/**
 * Without read-back verification: a file is done when every stored slice of it
 * is written. Each slice is reported once per run (resumed ones at the start,
 * the others as they are written), so a count per file is enough.
 */
export class WrittenTracker implements FileTracker {
  readonly #left: Uint32Array;

  constructor(
    files: FileEntry[],
    readonly onDone: (file: number, ok: boolean, detail: string | undefined) => void,
  ) {
    this.#left = Uint32Array.from(files, (file) => file.chunks.reduce((stored, chunk) => (chunk < 0 ? stored : stored + 1), 0));
    // Files with nothing stored (empty, or all holes) are done from the start.
    queueMicrotask(() => this.#left.forEach((left, file) => left === 0 && this.onDone(file, true, undefined)));
  }

  written(file: number): void {
    if (this.#left[file]! > 0 && --this.#left[file]! === 0) this.onDone(file, true, undefined);
  }

  finish(): Promise<number> {
    return Promise.resolve(this.#left.filter((left) => left > 0).length);
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
