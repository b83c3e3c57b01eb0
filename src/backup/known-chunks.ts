import { appendFile, readFile, rm } from 'node:fs/promises';
import { z } from 'zod';
import { errnoOf } from './errors.js';
import type { Codec, ManifestBody, PackRef } from './format.js';

/*
 * What a version 2 backup may reference instead of uploading: the chunks the
 * store already holds under the same set key, by digest. They come from the
 * newest backup of the epoch (its manifest) and from a run that was killed
 * before its manifest (the resume log below).
 */

/** A chunk the store holds: where its record lies and what it is. */
export interface KnownChunk {
  pack: PackRef;
  offset: number;
  storedLength: number;
  plainLength: number;
  codec: Codec;
}

/** by digest (ChunkIdentity.digest) */
export type KnownChunks = Map<string, KnownChunk>;

/** A pack a backup stored, with its chunks: [digest, offset, stored length, plain length, codec]. */
export interface StoredPack {
  key: string;
  size: number;
  chunks: Array<[string, number, number, number, 0 | 1]>;
}

/** Every chunk of an opened manifest. */
export function knownFromBody(body: ManifestBody, into: KnownChunks = new Map()): KnownChunks {
  for (const [pack, offset, storedLength, plainLength, codec, digest] of body.chunks)
    into.set(digest, { pack: body.packs[pack]!, offset, storedLength, plainLength, codec });
  return into;
}

const StoredPackLine = z.strictObject({
  key: z.string().regex(/^packs\/[0-9A-Za-z_.-]+\.pack$/),
  size: z.number().int().min(0),
  chunks: z.array(
    z.tuple([
      z.string().regex(/^[0-9a-f]{64}$/),
      z.number().int().min(0),
      z.number().int().min(1),
      z.number().int().min(1),
      z.union([z.literal(0), z.literal(1)]),
    ]),
  ),
});

export const RESUME_FORMAT = 'bosun-backup-resume-v1';
const ResumeHead = z.strictObject({ format: z.literal(RESUME_FORMAT), keyId: z.string(), backupId: z.string() });

/**
 * The resume log of a scheduled backup (`<stateDir>/backup/resume-<set>.jsonl`,
 * 0600): a head line `{"format":"bosun-backup-resume-v1","keyId","backupId"}`,
 * then one StoredPack per line, appended once the store acknowledged the pack.
 * Removed when a backup completes. The next run under the same key reads it
 * back and references those chunks instead of uploading them again (their
 * packs are checked to exist first: a prune removes unleased packs without a
 * manifest once they are a day old).
 */
export class ResumeLog {
  constructor(readonly path: string) {}

  async start(keyId: string, backupId: string): Promise<void> {
    await appendFile(this.path, JSON.stringify({ format: RESUME_FORMAT, keyId, backupId }) + '\n', { mode: 0o600 });
  }

  async append(pack: StoredPack): Promise<void> {
    await appendFile(this.path, JSON.stringify(pack) + '\n', { mode: 0o600 });
  }

  /** What killed runs under `keyId` stored: their backup ids and packs. A torn last line (a power cut) is skipped. */
  async read(keyId: string): Promise<{ backupIds: string[]; packs: StoredPack[] }> {
    let text: string;
    try {
      text = await readFile(this.path, 'utf8');
    } catch (e) {
      if (errnoOf(e) === 'ENOENT') return { backupIds: [], packs: [] };
      throw e;
    }
    const backupIds: string[] = [];
    const packs: StoredPack[] = [];
    let current: string | undefined;
    for (const line of text.split('\n')) {
      let value: unknown;
      try {
        value = JSON.parse(line);
      } catch {
        continue;
      }
      const head = ResumeHead.safeParse(value);
      if (head.success) {
        current = head.data.keyId === keyId ? head.data.backupId : undefined;
        if (current !== undefined) backupIds.push(current);
        continue;
      }
      const pack = StoredPackLine.safeParse(value);
      if (pack.success && current !== undefined) packs.push(pack.data);
    }
    return { backupIds, packs };
  }

  async clear(): Promise<void> {
    await rm(this.path, { force: true });
  }
}

/** Add a killed run's packs to the known chunks: only those the store still lists, at the size logged. */
export function knownFromResume(packs: readonly StoredPack[], listed: ReadonlyMap<string, number>, into: KnownChunks): number {
  let added = 0;
  for (const pack of packs) {
    if (listed.get(pack.key) !== pack.size) continue;
    const ref: PackRef = { key: pack.key, size: pack.size };
    for (const [digest, offset, storedLength, plainLength, codec] of pack.chunks) {
      if (into.has(digest)) continue;
      into.set(digest, { pack: ref, offset, storedLength, plainLength, codec });
      added += 1;
    }
  }
  return added;
}
