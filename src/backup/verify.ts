import { randomInt } from 'node:crypto';
import { ChunkOpenError, openChunk, wipeScheme, type ChunkRef } from './format.js';
import { indexChunks } from './plan.js';
import { DEFAULT_RETRY, type RetryPolicy } from './retry.js';
import { getWhole, openManifest } from './restore/manifest.js';
import type { RestoreOptions } from './restore/options.js';
import { TransportError, type Transport } from './transport.js';

/*
 * `bosun backup verify`: re-read the chunks of one backup from the store and
 * check each as a restore would (GCM tag under the backup's chunk key, codec,
 * plain length, SHA-256 against the manifest), without writing anything. Every
 * problem is named by object, byte range and the files it belongs to; the
 * verify goes on past a bad chunk so that one run finds them all.
 */

export type VerifyFailure = 'missing' | 'size' | 'auth' | 'decompress' | 'length' | 'hash' | 'transport';

export interface VerifyProblem {
  /** s3://bucket/prefix/key */
  object: string;
  /** the chunk's byte range in the object, inclusive; absent for a problem of the whole object */
  range?: [number, number];
  failure: VerifyFailure;
  /** paths of the files whose content the problem touches (at most 10 named) */
  files: string[];
}

export interface VerifyReport {
  backupId: string;
  createdAt: string;
  /** chunks in the backup, and how many were read and checked */
  chunks: number;
  chunksChecked: number;
  bytesChecked: number;
  packs: number;
  problems: VerifyProblem[];
}

export interface VerifyOptions {
  transport: Transport;
  backupId: string;
  openDataKey: RestoreOptions['openDataKey'];
  verifyManifest?: RestoreOptions['verifyManifest'];
  /** the share of chunks to check, chosen at random, in (0, 1]; default 1 (all) */
  sample?: number;
  retry?: RetryPolicy;
  signal?: AbortSignal;
}

/** Which chunks to check: all of them, or `share` of them at random (at least one). */
function chosenChunks(count: number, share: number): number[] {
  const all = Array.from({ length: count }, (_, i) => i);
  if (share >= 1 || count === 0) return all;
  const want = Math.max(1, Math.round(count * share));
  for (let i = 0; i < want; i++) {
    const j = i + randomInt(count - i);
    [all[i], all[j]] = [all[j]!, all[i]!];
  }
  return all.slice(0, want).sort((a, b) => a - b);
}

export async function verifyBackup(options: VerifyOptions): Promise<VerifyReport> {
  const { transport, backupId } = options;
  const retry = options.retry ?? DEFAULT_RETRY;
  const opened = await openManifest(transport, backupId, options.openDataKey, {
    retry,
    ...(options.verifyManifest ? { verifyManifest: options.verifyManifest } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
  });
  const { body } = opened;
  const { files, targets } = indexChunks(opened.header, body);
  const problems: VerifyProblem[] = [];
  const problem = (object: string, failure: VerifyFailure, chunks: number[], range?: [number, number]): void => {
    const touched = [...new Set(chunks.flatMap((c) => targets.of(c).map((slot) => files[slot.file]!.path)))];
    problems.push({ object, failure, files: touched.slice(0, 10), ...(range ? { range } : {}) });
  };
  const chosen = chosenChunks(body.chunks.length, options.sample ?? 1);
  const byPack = new Map<number, number[]>();
  for (const c of chosen) byPack.set(body.chunks[c]![0], [...(byPack.get(body.chunks[c]![0]) ?? []), c]);
  let chunksChecked = 0;
  let bytesChecked = 0;
  for (const [pack, chunks] of [...byPack].sort((a, b) => a[0] - b[0])) {
    const ref = body.packs[pack]!;
    const object = transport.describe(ref.key);
    let bytes: Buffer;
    try {
      bytes = await getWhole(transport, ref.key, ref.size + 1, retry, options.signal);
    } catch (e) {
      problem(object, e instanceof TransportError && e.kind === 'not-found' ? 'missing' : e instanceof TransportError ? 'transport' : 'size', chunks);
      continue;
    }
    if (bytes.length !== ref.size) problem(object, 'size', chunks);
    for (const c of chunks) {
      const [, offset, stored, plainLength, codec, digest] = body.chunks[c] as ChunkRef;
      const range: [number, number] = [offset, offset + stored - 1];
      if (offset + stored > bytes.length) {
        problem(object, 'size', [c], range);
        continue;
      }
      try {
        openChunk(opened.scheme, bytes.subarray(offset, offset + stored), { codec, plainLength, digest });
        chunksChecked += 1;
        bytesChecked += plainLength;
      } catch (e) {
        problem(object, e instanceof ChunkOpenError ? e.why : 'auth', [c], range);
      }
    }
  }
  wipeScheme(opened.scheme);
  return { backupId, createdAt: opened.header.createdAt, chunks: body.chunks.length, chunksChecked, bytesChecked, packs: body.packs.length, problems };
}
