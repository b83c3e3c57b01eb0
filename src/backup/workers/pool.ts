import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { ChunkJob, ChunkJobInput, ChunkReply, ChunkWorkerData, DigestFile, DigestIn, DigestOut } from './protocol.js';

/**
 * Buffers for chunk records, reused: a record is read from the network into
 * one, transferred to a worker and handed back with the worker's reply. Keeps
 * the main thread from allocating (and the garbage collector from chasing)
 * a fresh multi-megabyte buffer per chunk.
 */
export class RecordBuffers {
  readonly #free: ArrayBuffer[] = [];

  constructor(
    readonly capacity: number,
    readonly keep = 16,
  ) {}

  take(length: number): Buffer {
    if (length > this.capacity) return Buffer.from(new ArrayBuffer(length));
    const ab = this.#free.pop() ?? new ArrayBuffer(this.capacity);
    return Buffer.from(ab, 0, length);
  }

  give(ab: ArrayBuffer): void {
    if (ab.byteLength === this.capacity && this.#free.length < this.keep) this.#free.push(ab);
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
      slot.w.postMessage(msg, [job.buffer]);
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

  constructor(chunkSize: number, files: DigestFile[], onVerdict: (file: number, ok: boolean, detail: string | undefined) => void, onError: (e: Error) => void) {
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
    this.#w.postMessage({ type: 'init', chunkSize, files } satisfies DigestIn);
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
