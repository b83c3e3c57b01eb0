import { z } from 'zod';

/**
 * The restore marker, `.bosun-restored.json` at the top of a restored data
 * volume: written by a restore (src/backup/restore-step.ts) only after every
 * byte verified and the staged tree was moved into place; read by the restore
 * phase (src/phases/restore), for which its presence for the spec's source and
 * backup means there is nothing to do. Versioned by `format`.
 */
export const MARKER_NAME = '.bosun-restored.json';
export const MARKER_FORMAT = 'bosun-restore-marker-v1';

export const RestoreMarker = z.object({
  format: z.literal(MARKER_FORMAT),
  /** "s3://bucket/prefix" (object storage) */
  source: z.string(),
  /** what the spec asked for when this restore ran: a backup id or "latest" */
  requested: z.string(),
  backupId: z.string(),
  manifestDigest: z.string(),
  completedAt: z.string(),
});
export type RestoreMarker = z.infer<typeof RestoreMarker>;

/** The marker's source for a restore from object storage: what the restore writes and the phase compares. */
export function sourceOf(store: { bucket: string; prefix: string }): string {
  return `s3://${store.bucket}/${store.prefix}`;
}

/** The marker's source for a restore from a peer. */
export function peerSource(peer: string): string {
  return `peer://${peer}`;
}
