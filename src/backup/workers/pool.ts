import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { ChunkJob, ChunkJobInput, ChunkReply, ChunkWorkerData, DigestFile, DigestIn, DigestOut } from './protocol.js';

/**
 * Fixed slots of one SharedArrayBuffer that hold chunk bytes while they are
 * read from the network (or a file), worked on by a chunk worker, and written
 * out. Allocated once: the memory a restore uses is slots x slot size, known
 * up front, and no multi-megabyte buffer is created (or garbage-collected)
 * per chunk.
 */
export class SlotRing {
  readonly sab: SharedArrayBuffer;
  readonly #free: number[];
  readonly #waiters: Array<(slot: number) => void> = [];

  constructor(
    readonly count: number,
    readonly slotSize: number,
  ) {
    this.sab = new SharedArrayBuffer(count * slotSize);
    this.#free = Array.from({ length: count }, (_, i) => count - 1 - i);
  }

  acquire(): Promise<number> {
    const slot = this.#free.pop();
    if (slot !== undefined) return Promise.resolve(slot);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  release(slot: number): void {
    const next = this.#waiters.shift();
    if (next) next(slot);
    else this.#free.push(slot);
  }

  view(slot: number, length: number): Buffer {
    if (length > this.slotSize) throw new RangeError(`${length} bytes do not fit a ${this.slotSize}-byte slot`);
    return Buffer.from(this.sab, slot * this.slotSize, length);
  }
}

/** How many chunk workers: all cores but one (the main thread moves the bytes), at least one, at most four. */
export function defaultWorkerCount(): number {
  return Math.max(1, Math.min(4, availableParallelism() - 1));
}

type Pending = { resolve: (r: ChunkReply) => void; reject: (e: Error) => void };

export class ChunkWorkers {
  readonly #workers: Array<{ w: Worker; busy: number }> = [];
  readonly #pending = new Map<number, Pending>();
  #next = 1;
  #failed: Error | undefined;

  constructor(count: number, data: ChunkWorkerData) {
    for (let i = 0; i < count; i++) {
      const w = new Worker(new URL('./chunk-worker.js', import.meta.url), { workerData: data });
      const slot = { w, busy: 0 };
      w.on('message', (r: ChunkReply) => {
        slot.busy--;
        const p = this.#pending.get(r.id);
        this.#pending.delete(r.id);
        p?.resolve(r);
      });
      w.on('error', (e) => this.#fail(e));
      w.on('exit', (code) => {
        if (code !== 0) this.#fail(new Error(`chunk worker exited with code ${code}`));
      });
      this.#workers.push(slot);
    }
  }

  #fail(e: Error): void {
    this.#failed ??= e;
    for (const p of this.#pending.values()) p.reject(e);
    this.#pending.clear();
  }

  run(job: ChunkJobInput): Promise<ChunkReply> {
    if (this.#failed) return Promise.reject(this.#failed);
    const id = this.#next++;
    const slot = this.#workers.reduce((a, b) => (b.busy < a.busy ? b : a));
    slot.busy++;
    return new Promise<ChunkReply>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      const msg: ChunkJob = { ...job, id };
      slot.w.postMessage(msg);
    });
  }

  async close(): Promise<void> {
    await Promise.all(this.#workers.map((s) => s.w.terminate()));
  }
}

/**
 * The main thread's side of the digest worker: tell it which file slices are
 * on disk (batched per tick), hear its verdicts.
 */
export class DigestChecker {
  readonly #w: Worker;
  #batch: number[] = [];
  #scheduled = false;
  #finished: ((pending: number) => void) | undefined;
  #error: Error | undefined;

  constructor(maxPiece: number, files: DigestFile[], onVerdict: (file: number, ok: boolean, detail: string | undefined) => void, onError: (e: Error) => void) {
    this.#w = new Worker(new URL('./digest-worker.js', import.meta.url));
    this.#w.on('message', (m: DigestOut) => {
      if (m.type === 'verdict') onVerdict(m.file, m.ok, m.detail);
      else this.#finished?.(m.pending);
    });
    this.#w.on('error', (e) => {
      this.#error ??= e;
      onError(e);
      this.#finished?.(-1);
    });
    this.#w.postMessage({ type: 'init', maxPiece, files } satisfies DigestIn);
  }

  written(file: number, ordinal: number): void {
    this.#batch.push(file, ordinal);
    if (this.#scheduled) return;
    this.#scheduled = true;
    // A few milliseconds of batching: one message for many slices.
    setTimeout(() => this.#flush(), 5);
  }

  #flush(): void {
    this.#scheduled = false;
    if (this.#batch.length === 0) return;
    this.#w.postMessage({ type: 'written', slices: this.#batch } satisfies DigestIn);
    this.#batch = [];
  }

  /** Resolves with the number of files still without a verdict once the worker has caught up. */
  finish(): Promise<number> {
    this.#flush();
    if (this.#error) return Promise.reject(this.#error);
    return new Promise((resolve) => {
      this.#finished = resolve;
      this.#w.postMessage({ type: 'finish' } satisfies DigestIn);
    });
  }

  async close(): Promise<void> {
    await this.#w.terminate();
  }
}
