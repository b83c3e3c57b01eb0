/** The upload side of a backup: records packed into fixed buffers, each full pack uploaded with retries. */
import type { Logger } from '../log.js';
import type { PackRef } from './format.js';
import { withRetry, type RetryPolicy } from './retry.js';
import type { Throttle } from './throttle.js';
import { storeError, type Transport } from './transport.js';

export interface PackWriterOptions {
  transport: Transport;
  /** the object key of the n-th pack */
  keyOf: (pack: number) => string;
  packSize: number;
  /** packs uploading at once */
  concurrency: number;
  retry: RetryPolicy;
  log: Logger | undefined;
  signal: AbortSignal | undefined;
  /** the largest record add() is given (a pack may pass packSize by less than one record) */
  maxRecord: number;
  /** uploads wait for it: the backup's bandwidth limit */
  throttle?: Throttle;
}

/** A pack the store acknowledged, with the tags its records were added with. */
export interface PackStored {
  key: string;
  size: number;
  tags: number[];
}

/**
 * Copies records into the current pack and uploads each full pack, a few at a
 * time. The packs are a fixed set of buffers (one filling, `concurrency`
 * uploading), reused once their upload is done: memory stays flat however
 * large the backup, and no 32 MiB buffer is left for the GC per pack.
 */
export class PackWriter {
  readonly #free: Buffer[] = [];
  readonly #waiting: Array<(b: Buffer | undefined) => void> = [];
  #buffers = 0;
  #current: Buffer | undefined;
  #size = 0;
  #index = 0;
  #tags: number[] = [];
  /** bytes of the packs uploaded */
  uploadedBytes = 0;
  /** called (and awaited before finish resolves) once the store acknowledged a pack */
  onStored: ((pack: PackStored) => Promise<void>) | undefined;
  /** add() calls run one after another: a pack's offsets are handed out in the order records land. */
  #queue: Promise<unknown> = Promise.resolve();
  readonly #refs: PackRef[] = [];
  readonly #inflight = new Set<Promise<void>>();
  #failure: Error | undefined;

  constructor(readonly options: PackWriterOptions) {}

  /** Copies `record` into the current pack; resolves with where it sits once it is there. `tag` comes back in onStored. */
  add(record: Buffer, tag = -1): Promise<{ pack: number; offset: number }> {
    const run = this.#queue.then(() => this.#add(record, tag));
    this.#queue = run.catch(() => undefined);
    return run;
  }

  async #add(record: Buffer, tag: number): Promise<{ pack: number; offset: number }> {
    if (this.#failure !== undefined) throw this.#failure;
    const { maxRecord, packSize } = this.options;
    if (record.length > maxRecord) throw new Error(`a record of ${record.length} bytes is larger than a pack slot of ${maxRecord}`);
    this.#current ??= await this.#buffer();
    // A failed upload wakes the waiters with no buffer.
    if (this.#failure !== undefined || this.#current === undefined) throw this.#failure ?? new Error('no pack buffer');
    const at = { pack: this.#index, offset: this.#size };
    record.copy(this.#current, this.#size);
    this.#size += record.length;
    this.#tags.push(tag);
    if (this.#size >= packSize) await this.#flush();
    return at;
  }

  /** A free pack buffer: a new one while fewer than concurrency + 1 exist, else the next one an upload gives back. */
  #buffer(): Promise<Buffer | undefined> {
    const b = this.#free.pop();
    if (b) return Promise.resolve(b);
    if (this.#buffers < this.options.concurrency + 1) {
      this.#buffers++;
      return Promise.resolve(Buffer.allocUnsafe(this.options.packSize + this.options.maxRecord));
    }
    return new Promise((resolve) => this.#waiting.push(resolve));
  }

  #giveBack(b: Buffer): void {
    const next = this.#waiting.shift();
    if (next) next(b);
    else this.#free.push(b);
  }

  async #flush(): Promise<void> {
    const buf = this.#current;
    if (buf === undefined || this.#size === 0) return;
    const body = buf.subarray(0, this.#size);
    const { transport, retry, signal, log } = this.options;
    const key = this.options.keyOf(this.#index);
    const stored: PackStored = { key, size: body.length, tags: this.#tags };
    this.#refs.push({ key, size: body.length });
    this.#current = undefined;
    this.#size = 0;
    this.#tags = [];
    this.#index++;
    while (this.#inflight.size >= this.options.concurrency) await Promise.race(this.#inflight);
    if (this.#failure !== undefined) throw this.#failure;
    await this.options.throttle?.take(body.length);
    const p: Promise<void> = putRetrying(transport, key, body, retry, signal, log)
      .then(
        // Only a finished upload gives its buffer back: a failed one may still be read by the transport.
        async () => {
          this.uploadedBytes += body.length;
          this.#giveBack(buf);
          await this.onStored?.(stored);
        },
        (e: unknown) => {
          this.#failure ??= e instanceof Error ? e : new Error(String(e));
          for (const w of this.#waiting.splice(0)) w(undefined);
        },
      )
      .finally(() => this.#inflight.delete(p));
    this.#inflight.add(p);
  }

  async finish(): Promise<PackRef[]> {
    await this.#queue;
    await this.#flush();
    await Promise.all(this.#inflight);
    if (this.#failure !== undefined) throw this.#failure;
    return this.#refs;
  }

  async abandon(): Promise<void> {
    await Promise.allSettled(this.#inflight);
  }
}

/** Upload one object, retrying transient failures; a failure for good is a BackupError naming the object. */
export async function putRetrying(t: Transport, key: string, body: Buffer, retry: RetryPolicy, signal: AbortSignal | undefined, log?: Logger): Promise<void> {
  try {
    await withRetry(retry, () => t.put(key, body, signal), {
      ...(signal ? { signal } : {}),
      onRetry: (e, n, ms) =>
        log?.warn({ object: t.describe(key), failures: n, delayMs: ms, err: e instanceof Error ? e.message : String(e) }, 'backup: upload failed, retrying'),
    });
  } catch (e) {
    throw storeError(t, key, e);
  }
}
