import type { BackupRetention } from '../spec/backup-spec.js';

/*
 * Which backups of a set a retention policy keeps: pure, from the backups'
 * ids and creation times alone. The rules are the usual ones (restic's
 * forget --keep-last/--keep-daily/--keep-weekly): the newest N; the newest of
 * each of the last D days that have a backup; the newest of each of the last
 * W ISO weeks that have one. A backup kept by any rule is kept.
 */

export interface BackupRef {
  backupId: string;
  /** ISO 8601 UTC */
  createdAt: string;
}

export type KeepReason = 'last' | 'daily' | 'weekly';

export interface RetentionPlan {
  /** newest first, with the rules that keep each */
  keep: Array<BackupRef & { reasons: KeepReason[] }>;
  /** newest first */
  drop: BackupRef[];
}

/** "2026-12-07" */
const dayOf = (at: Date): string => at.toISOString().slice(0, 10);

/** "2026-W49": the ISO 8601 week (weeks start on Monday; week 1 holds the year's first Thursday). */
export function isoWeekOf(at: Date): string {
  const thursday = new Date(Date.UTC(at.getUTCFullYear(), at.getUTCMonth(), at.getUTCDate()));
  thursday.setUTCDate(thursday.getUTCDate() + 3 - ((thursday.getUTCDay() + 6) % 7));
  const yearStart = Date.UTC(thursday.getUTCFullYear(), 0, 1);
  const week = Math.floor((thursday.getTime() - yearStart) / 86_400_000 / 7) + 1;
  return `${thursday.getUTCFullYear()}-W${String(week).padStart(2, '0')}`;
}

export function planRetention(backups: readonly BackupRef[], policy: BackupRetention): RetentionPlan {
  const newestFirst = [...backups].sort((a, b) => b.createdAt.localeCompare(a.createdAt) || b.backupId.localeCompare(a.backupId));
  const reasons = new Map<string, KeepReason[]>();
  const keepFor = (backup: BackupRef, reason: KeepReason): void => {
    reasons.set(backup.backupId, [...(reasons.get(backup.backupId) ?? []), reason]);
  };
  newestFirst.slice(0, policy.last).forEach((backup) => keepFor(backup, 'last'));
  for (const [reason, count, bucketOf] of [
    ['daily', policy.daily, dayOf],
    ['weekly', policy.weekly, isoWeekOf],
  ] as const) {
    const seen = new Set<string>();
    for (const backup of newestFirst) {
      if (seen.size >= count) break;
      const bucket = bucketOf(new Date(backup.createdAt));
      if (seen.has(bucket)) continue;
      seen.add(bucket);
      keepFor(backup, reason);
    }
  }
  return {
    keep: newestFirst.filter((backup) => reasons.has(backup.backupId)).map((backup) => ({ ...backup, reasons: reasons.get(backup.backupId)! })),
    drop: newestFirst.filter((backup) => !reasons.has(backup.backupId)),
  };
}
