import type { Logger } from '../../log.js';
import { BackupError } from '../errors.js';
import type { ManifestBody } from '../format.js';
import type { WorkRange } from '../plan.js';
import type { ProgressTracker } from '../progress.js';
import { withRetry, type RetryPolicy } from '../retry.js';
import type { Throttle } from '../throttle.js';
import { TransportError, storeError, type Transport } from '../transport.js';
import type { SlotRing } from '../workers/pool.js';

/** Opens, verifies and writes the whole record in `slot` (of chunk `chunk`), and releases the slot. */
export type RecordHandler = (chunk: number, slot: number) => Promise<void>;

export interface DownloadsContext {
  transport: Transport;
  body: ManifestBody;
  ring: SlotRing;
  progress: ProgressTracker;
  retry: RetryPolicy;
  signal: AbortSignal;
  throttle: Throttle | undefined;
  log: Logger | undefined;
  onRecord: RecordHandler;
}

/**
 * A restore's reads from the store: ranged GETs streamed into slots of the
 * ring, one record at a time, each record handed on as soon as it is whole;
 * single records fetched again; and the count of bytes fetched.
 */
export class Downloads {
  /** bytes fetched from the store */
  transferred = 0;
  readonly #transport: Transport;
  readonly #body: ManifestBody;
  readonly #ring: SlotRing;
  readonly #progress: ProgressTracker;
  readonly #retry: RetryPolicy;
  readonly #signal: AbortSignal;
  readonly #throttle: Throttle | undefined;
  readonly #log: Logger | undefined;
  readonly #onRecord: RecordHandler;

  constructor(context: DownloadsContext) {
    this.#transport = context.transport;
    this.#body = context.body;
    this.#ring = context.ring;
    this.#progress = context.progress;
    this.#retry = context.retry;
    this.#signal = context.signal;
    this.#throttle = context.throttle;
    this.#log = context.log;
    this.#onRecord = context.onRecord;
  }

  /** Every record of `range`, resumed from the byte reached when a transient failure cuts the download. */
  async fetchRange(range: WorkRange): Promise<void> {
    const transport = this.#transport;
    const chunks = this.#body.chunks;
    const pack = this.#body.packs[range.pack]!;
    const ring = this.#ring;
    const throttle = this.#throttle;
    let pos = range.start;
    let next = 0;
    let record: Buffer | undefined;
    let recordSlot = -1;
    let filled = 0;
    // Up to two records of this range are being opened and written while the next one downloads.
    const inflight: Array<Promise<void>> = [];
    const settle = async (keep: number): Promise<void> => {
      while (inflight.length > keep) await inflight.shift();
    };
    try {
      await withRetry(
        this.#retry,
        async (_attempt, progressed) => {
          // A failed request stays a TransportError here so that a 5xx or a
          // refused connection is retried; the catch below names the object.
          const response = await transport.get(pack.key, { start: pos, end: range.end }, this.#signal);
          if (response.objectSize !== undefined && response.objectSize !== pack.size) {
            throw new BackupError(
              'truncated',
              `${transport.describe(pack.key)} is ${response.objectSize} bytes but the manifest says ${pack.size}: truncated or replaced`,
              { object: transport.describe(pack.key) },
            );
          }
          for await (const piece of response.body) {
            if (throttle) await throttle.take(piece.length);
            this.transferred += piece.length;
            this.#progress.transferredBytes += piece.length;
            let offset = 0;
            while (offset < piece.length && next < range.chunks.length) {
              const chunk = range.chunks[next]!;
              const length = chunks[chunk]![2];
              if (record === undefined) {
                recordSlot = await ring.acquire();
                record = ring.view(recordSlot, length);
              }
              const take = Math.min(length - filled, piece.length - offset);
              record.set(piece.subarray(offset, offset + take), filled);
              filled += take;
              offset += take;
              pos += take;
              progressed();
              if (filled === length) {
                const full = recordSlot;
                record = undefined;
                recordSlot = -1;
                filled = 0;
                next++;
                const handled = this.#onRecord(chunk, full);
                handled.catch(() => undefined);
                inflight.push(handled);
                await settle(1);
              }
            }
            if (next >= range.chunks.length) break;
          }
          if (next < range.chunks.length)
            throw new TransportError('transient', `${transport.describe(pack.key)}: download ended early at byte ${pos} of ${range.end + 1}`);
        },
        {
          signal: this.#signal,
          onRetry: (e, failures, ms) =>
            this.#log?.warn(
              { object: transport.describe(pack.key), resumeAt: pos, failures, delayMs: ms, err: e instanceof Error ? e.message : String(e) },
              'restore: download failed, resuming',
            ),
        },
      );
      await settle(0);
    } catch (e) {
      await Promise.allSettled(inflight);
      throw storeError(transport, pack.key, e);
    } finally {
      if (recordSlot >= 0) ring.release(recordSlot);
    }
  }

  /** Fetch the record of `chunk` once more, on its own, into `slot`. */
  async refetch(chunk: number, slot: number): Promise<void> {
    const ref = this.#body.chunks[chunk]!;
    const pack = this.#body.packs[ref[0]]!;
    await this.#fetchExact(pack.key, ref[1], pack.size, this.#ring.view(slot, ref[2]));
    this.transferred += ref[2];
  }

  /** Fetch exactly one record again, into `into`. */
  async #fetchExact(key: string, offset: number, packSize: number, into: Buffer): Promise<void> {
    const transport = this.#transport;
    const length = into.length;
    try {
      await withRetry(
        this.#retry,
        async () => {
          const response = await transport.get(key, { start: offset, end: offset + length - 1 }, this.#signal);
          if (response.objectSize !== undefined && response.objectSize !== packSize)
            throw new BackupError(
              'truncated',
              `${transport.describe(key)} is ${response.objectSize} bytes but the manifest says ${packSize}: truncated or replaced`,
              { object: transport.describe(key) },
            );
          let received = 0;
          for await (const piece of response.body) {
            if (this.#throttle) await this.#throttle.take(piece.length);
            const take = Math.min(piece.length, length - received);
            into.set(piece.subarray(0, take), received);
            received += take;
          }
          if (received < length) throw new TransportError('transient', `${transport.describe(key)}: got ${received} of ${length} bytes`);
        },
        { signal: this.#signal },
      );
    } catch (e) {
      throw storeError(transport, key, e);
    }
  }
}
