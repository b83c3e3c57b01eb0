import type { BackupRetention } from '../spec/backup-spec.js';
import { FORMAT_V2, MAX_MANIFEST_BYTES, PACK_DIR, isBackupId, manifestKey, parseManifest, writerOfPack } from './format.js';
import { readLeases, takeLease } from './leases.js';
import { getWhole, resolveBackupId } from './restore/manifest.js';
import { DEFAULT_RETRY } from './retry.js';
import { planRetention, type BackupRef, type KeepReason } from './retention.js';
import type { ListedObject, ManagedTransport } from './transport.js';

/*
 * Prune: apply a retention policy to a backup set and delete what it drops.
 * Works from object names alone (no key needed): a backup is the objects
 * under backups/<id>/, complete once its manifest exists, created at the time
 * its id names. Never deleted: the backup latest.json names, and every backup
 * a live lease names (a backup being made, a restore reading one; leases.ts).
 * A dropped backup loses its manifest first, so it is never half visible; a
 * backup without a manifest (a run that was killed) is removed once it is a
 * day old and no lease names it. Dry run unless `apply`.
 */

/** What a run that was killed leaves (packs, no manifest) is removed once its newest object is this old. */
const INCOMPLETE_GRACE_MS = 24 * 3600 * 1000;

export interface PruneOptions {
  transport: ManagedTransport;
  policy: BackupRetention;
  /** who prunes, for the lease */
  host: string;
  /** delete (default false: only say what would go) */
  apply?: boolean;
  now?: number;
  signal?: AbortSignal;
}

export interface PrunedBackup {
  backupId: string;
  createdAt: string;
  objects: number;
  bytes: number;
}

export interface PruneReport {
  applied: boolean;
  kept: Array<PrunedBackup & { reasons: Array<KeepReason | 'latest' | 'lease'> }>;
  dropped: PrunedBackup[];
  /** backups without a manifest that were (or would be) removed */
  incomplete: PrunedBackup[];
  /** expired leases removed */
  staleLeases: number;
  /** shared packs (version 2) that no kept backup references, removed (or to be) */
  packsRemoved: number;
  bytesFreed: number;
}

/** "20261207T030405Z-1a2b3c4d" -> "2026-12-07T03:04:05.000Z" */
export function createdAtOfId(backupId: string): string {
  const t = backupId.slice(0, 16);
  return new Date(`${t.slice(0, 4)}-${t.slice(4, 6)}-${t.slice(6, 8)}T${t.slice(9, 11)}:${t.slice(11, 13)}:${t.slice(13, 15)}Z`).toISOString();
}

interface SetEntry extends PrunedBackup {
  complete: boolean;
  keys: string[];
  newest: number;
}

/** The backups of the set, by id, from a listing of backups/. */
export function backupsInListing(objects: readonly ListedObject[]): Map<string, SetEntry> {
  const backups = new Map<string, SetEntry>();
  for (const object of objects) {
    const backupId = object.key.split('/')[1] ?? '';
    if (!isBackupId(backupId)) continue;
    const entry = backups.get(backupId) ?? { backupId, createdAt: createdAtOfId(backupId), objects: 0, bytes: 0, complete: false, keys: [], newest: 0 };
    entry.objects += 1;
    entry.bytes += object.size;
    entry.keys.push(object.key);
    entry.newest = Math.max(entry.newest, object.lastModified.getTime());
    if (object.key === manifestKey(backupId)) entry.complete = true;
    backups.set(backupId, entry);
  }
  return backups;
}

const summary = ({ backupId, createdAt, objects, bytes }: SetEntry): PrunedBackup => ({ backupId, createdAt, objects, bytes });

export async function pruneBackups(options: PruneOptions): Promise<PruneReport> {
  const { transport } = options;
  const now = options.now ?? Date.now();
  const lease = options.apply
    ? await takeLease(transport, { kind: 'prune', host: options.host, backupIds: [], ...(options.signal ? { signal: options.signal } : {}) })
    : undefined;
  try {
    // Leases are read after ours is written: a backup or restore that starts from now on sees ours and waits.
    const { live, stale } = await readLeases(transport, now);
    const leased = new Set(live.filter((l) => l.kind !== 'prune').flatMap((l) => l.backupIds));
    const backups = backupsInListing(await transport.list('backups/', options.signal));
    const latest = await resolveBackupId(transport, 'latest').catch(() => undefined);
    const complete = [...backups.values()].filter((b) => b.complete);
    const plan = planRetention(
      complete.map((b): BackupRef => ({ backupId: b.backupId, createdAt: b.createdAt })),
      options.policy,
    );
    const reasons = new Map<string, Array<KeepReason | 'latest' | 'lease'>>(plan.keep.map((k) => [k.backupId, [...k.reasons]]));
    for (const b of complete) {
      if (b.backupId === latest) reasons.set(b.backupId, [...(reasons.get(b.backupId) ?? []), 'latest']);
      if (leased.has(b.backupId)) reasons.set(b.backupId, [...(reasons.get(b.backupId) ?? []), 'lease']);
    }
    const dropped = complete.filter((b) => !reasons.has(b.backupId)).sort((x, y) => y.createdAt.localeCompare(x.createdAt));
    const incomplete = [...backups.values()].filter((b) => !b.complete && !leased.has(b.backupId) && now - b.newest > INCOMPLETE_GRACE_MS);
    const kept = complete.filter((b) => reasons.has(b.backupId));
    const unusedPacks = await packsNoOneNeeds(transport, {
      kept: kept.map((b) => b.backupId),
      dropped: new Set(dropped.map((b) => b.backupId)),
      leased,
      now,
      ...(options.signal ? { signal: options.signal } : {}),
    });
    if (options.apply) {
      for (const b of dropped) {
        await transport.delete([manifestKey(b.backupId)], options.signal);
        await transport.delete(
          b.keys.filter((k) => k !== manifestKey(b.backupId)),
          options.signal,
        );
      }
      for (const b of incomplete) await transport.delete(b.keys, options.signal);
      // Packs last: every manifest that referenced them is gone by now.
      if (unusedPacks.length > 0)
        await transport.delete(
          unusedPacks.map((o) => o.key),
          options.signal,
        );
      if (stale.length > 0) await transport.delete(stale, options.signal);
    }
    return {
      applied: options.apply === true,
      kept: complete
        .filter((b) => reasons.has(b.backupId))
        .sort((a, b) => b.createdAt.localeCompare(a.createdAt))
        .map((b) => ({ ...summary(b), reasons: reasons.get(b.backupId)! })),
      dropped: dropped.map(summary),
      incomplete: incomplete.map(summary),
      staleLeases: stale.length,
      packsRemoved: unusedPacks.length,
      bytesFreed: [...dropped, ...incomplete].reduce((n, b) => n + b.bytes, 0) + unusedPacks.reduce((n, o) => n + o.size, 0),
    };
  } finally {
    await lease?.release();
  }
}

/**
 * The shared packs (version 2, under packs/) that may go: no kept backup's
 * header lists them, and the backup that wrote them is not leased (a backup
 * being made, or a killed run a new one resumes) and is either dropped now or
 * has been gone for a day (a killed run that nobody resumed).
 */
async function packsNoOneNeeds(
  transport: ManagedTransport,
  set: { kept: readonly string[]; dropped: ReadonlySet<string>; leased: ReadonlySet<string>; now: number; signal?: AbortSignal },
): Promise<ListedObject[]> {
  const packs = await transport.list(PACK_DIR, set.signal);
  if (packs.length === 0) return [];
  const needed = new Set<string>();
  for (const backupId of set.kept) {
    const sealed = parseManifest(await getWhole(transport, manifestKey(backupId), MAX_MANIFEST_BYTES, DEFAULT_RETRY, set.signal));
    if (sealed.header.format === FORMAT_V2) for (const pack of sealed.header.packs) needed.add(pack.key);
  }
  const kept = new Set(set.kept);
  return packs.filter((object) => {
    const writer = writerOfPack(object.key);
    if (writer === undefined || needed.has(object.key) || set.leased.has(writer) || kept.has(writer)) return false;
    return set.dropped.has(writer) || set.now - object.lastModified.getTime() > INCOMPLETE_GRACE_MS;
  });
}

/** The backups of a set for `bosun backup list`: newest first, with what latest.json names. */
export async function listBackups(transport: ManagedTransport): Promise<{ latest?: string; backups: Array<PrunedBackup & { complete: boolean }> }> {
  const backups = backupsInListing(await transport.list('backups/'));
  const latest = await resolveBackupId(transport, 'latest').catch(() => undefined);
  return {
    ...(latest ? { latest } : {}),
    backups: [...backups.values()].sort((a, b) => b.backupId.localeCompare(a.backupId)).map((b) => ({ ...summary(b), complete: b.complete })),
  };
}
