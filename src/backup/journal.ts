import { readFile, unlink } from 'node:fs/promises';
import { z } from 'zod';
import { writeFileAtomic } from '../host/files.js';
import { errnoOf } from './errors.js';

/**
 * The restore's progress journal: which backup (and exactly which manifest)
 * is being restored, which chunks are already written, and whether the
 * restore has reached its commit. Small (one bit per chunk), rewritten
 * atomically every few seconds; a restore that finds one for the same
 * manifest continues where it stopped. The data it lists is not synced at
 * each checkpoint (that would force writeback every few seconds): a resumed
 * restore reads every chunk it lists back and checks its SHA-256, so a chunk
 * lost in a power cut is simply fetched again.
 */
export const JOURNAL_FORMAT = 'bosun-restore-journal-v1';

const JournalFile = z.strictObject({
  format: z.literal(JOURNAL_FORMAT),
  backupId: z.string(),
  manifestDigest: z.string(),
  chunks: z.number().int().min(0),
  /** base64 bitmap, bit i = chunk i was written (checked again on resume) */
  done: z.string(),
  state: z.enum(['fetching', 'committing']),
  updatedAt: z.string(),
});
export type JournalFile = z.infer<typeof JournalFile>;

export class DoneSet {
  readonly bits: Uint8Array;
  #count = 0;

  constructor(
    readonly size: number,
    bits?: Uint8Array,
  ) {
    this.bits = new Uint8Array(Math.ceil(size / 8));
    if (bits && bits.length === this.bits.length) {
      this.bits.set(bits);
      for (let i = 0; i < size; i++) if (this.has(i)) this.#count++;
    }
  }

  has(i: number): boolean {
    return (this.bits[i >> 3]! & (1 << (i & 7))) !== 0;
  }

  add(i: number): void {
    if (this.has(i)) return;
    this.bits[i >> 3]! |= 1 << (i & 7);
    this.#count++;
  }

  delete(i: number): void {
    if (!this.has(i)) return;
    this.bits[i >> 3]! &= ~(1 << (i & 7));
    this.#count--;
  }

  get count(): number {
    return this.#count;
  }

  encode(): string {
    return Buffer.from(this.bits).toString('base64');
  }

  static decode(size: number, b64: string): DoneSet {
    return new DoneSet(size, Buffer.from(b64, 'base64'));
  }
}

export async function readJournal(path: string): Promise<JournalFile | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if (errnoOf(e) === 'ENOENT') return undefined;
    throw e;
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return undefined;
  }
  const parsed = JournalFile.safeParse(raw);
  // An unreadable journal only costs a fresh start, never a wrong restore.
  return parsed.success ? parsed.data : undefined;
}

export async function writeJournal(path: string, j: Omit<JournalFile, 'format' | 'updatedAt'>): Promise<void> {
  const full: JournalFile = { format: JOURNAL_FORMAT, ...j, updatedAt: new Date().toISOString() };
  await writeFileAtomic(path, JSON.stringify(full) + '\n', { mode: 0o600 });
}

export async function removeJournal(path: string): Promise<void> {
  await unlink(path).catch((e: unknown) => {
    if (errnoOf(e) !== 'ENOENT') throw e;
  });
}
