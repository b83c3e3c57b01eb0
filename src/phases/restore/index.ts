import { join } from 'node:path';
import { z } from 'zod';
import { JOURNAL_NAME, STAGING_NAME } from '../../backup/target.js';
import { BosunError } from '../../errors.js';
import type { RestoreStep, SecretRef, Step } from '../../engine/step.js';
import type { HostProbe } from '../../host/probe.js';
import type { NodeSpec, RestoreSpec } from '../../spec/node-spec.js';
import type { Phase } from '../types.js';

/**
 * The restore phase: fill the data volume from a backup before the service
 * first starts. It runs after disks (the volume is mounted) and network (a
 * peer is reached over the mesh), before container.
 *
 * State lives on the data volume itself, so it travels with the data:
 * - `.bosun-restored.json`: written only after every byte verified and the
 *   staged tree was moved into place; names the source and the backup. Its
 *   presence for the spec's source and backup makes the phase plan nothing.
 * - `.bosun-restore.journal` (+ `.bosun-restore/`): a restore under way or
 *   killed; the step continues it.
 * Anything else on the volume without a marker is data bosun did not put
 * there: the phase refuses (no restore ever writes over data).
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

const JournalPeek = z.object({ backupId: z.string(), chunks: z.number(), done: z.string(), state: z.string() });

export interface RestoreObserved {
  target: string;
  /** the marker as found: parsed, unreadable (present but not ours), or absent */
  marker: RestoreMarker | 'unreadable' | undefined;
  /** an unfinished restore's journal */
  journal: { backupId: string; chunksDone: number; chunks: number; state: string } | undefined;
  /** entries of the target other than lost+found and bosun's own restore files */
  foreign: string[];
}

export function sourceOf(r: Extract<RestoreSpec, { from: 'object-storage' }>): string {
  return `s3://${r.bucket}/${r.prefix}`;
}

function popcount(b64: string): number {
  let n = 0;
  for (const byte of Buffer.from(b64, 'base64')) for (let v = byte; v; v &= v - 1) n++;
  return n;
}

function parseJson(buf: Buffer | undefined): unknown {
  if (buf === undefined) return undefined;
  try {
    return JSON.parse(buf.toString('utf8'));
  } catch {
    return null;
  }
}

export async function observeRestore(spec: NodeSpec, probe: HostProbe): Promise<RestoreObserved> {
  const target = spec.disks!.mount.path;
  const [markerRaw, journalRaw, names] = await Promise.all([probe.readFile(join(target, MARKER_NAME)), probe.readFile(join(target, JOURNAL_NAME)), probe.listDir(target)]);
  let marker: RestoreObserved['marker'];
  if (markerRaw !== undefined) {
    const m = RestoreMarker.safeParse(parseJson(markerRaw));
    marker = m.success ? m.data : 'unreadable';
  }
  const j = JournalPeek.safeParse(parseJson(journalRaw));
  const journal = j.success ? { backupId: j.data.backupId, chunksDone: popcount(j.data.done), chunks: j.data.chunks, state: j.data.state } : undefined;
  const ours = new Set([MARKER_NAME, JOURNAL_NAME, STAGING_NAME, 'lost+found']);
  return { target, marker, journal, foreign: names.filter((n) => !ours.has(n)) };
}

function ref(secret: { sealed: string } | undefined, label: string): SecretRef | undefined {
  return secret ? { secret, label } : undefined;
}

export function planRestore(spec: NodeSpec, o: RestoreObserved): Step[] {
  const r = spec.restore!;
  if (r.from === 'peer') {
    // Restore from a peer is built beside this (src/backup/peer/, restoreFromPeer); until it is wired here, apply refuses the phase.
    return [
      {
        kind: 'pending',
        phase: 'restore',
        issue: 8,
        why: `stream a consistent snapshot from peer ${r.peer} over the mesh into ${o.target}, verify every chunk${r.fallback ? `; fall back to s3://${r.fallback.bucket}/${r.fallback.prefix}` : ''}; mark the data volume restored only after every byte verified (restoreFromPeer: not wired into the phase yet)`,
      },
    ];
  }
  const source = sourceOf(r);
  if (o.marker === 'unreadable') {
    throw new BosunError('E_REFUSED', `restore: ${join(o.target, MARKER_NAME)} is not a restore marker bosun wrote; refusing to restore over the data volume; nothing was changed`, { target: o.target });
  }
  if (o.marker) {
    const same = o.marker.source === source && (r.backup === 'latest' || r.backup === o.marker.backupId);
    if (same) return [];
    throw new BosunError(
      'E_REFUSED',
      `restore: the data volume ${o.target} already holds backup ${o.marker.backupId} of ${o.marker.source} (restored ${o.marker.completedAt}), but the spec asks for backup ${r.backup} of ${source}; bosun never restores over data (empty the volume to restore again); nothing was changed`,
      { target: o.target, restored: o.marker.backupId, wanted: r.backup },
    );
  }
  if (o.foreign.length > 0 && !o.journal) {
    throw new BosunError(
      'E_REFUSED',
      `restore: the data volume ${o.target} holds data that no bosun restore wrote (${o.foreign.slice(0, 3).join(', ')}${o.foreign.length > 3 ? ', …' : ''}); refusing to restore over it; nothing was changed`,
      { target: o.target, entries: o.foreign.length },
    );
  }
  const resume = o.journal ? `continue the interrupted restore of backup ${o.journal.backupId} (${o.journal.chunksDone} of ${o.journal.chunks} chunks written${o.journal.state === 'committing' ? ', committing' : ''}; they are read back and checked): ` : '';
  const step: RestoreStep = {
    kind: 'restore',
    phase: 'restore',
    why: `${resume || 'the data volume holds no restored data yet: '}restore ${source} backup ${r.backup}: parallel ranged GETs, decrypt, decompress, verify every chunk, staged in ${join(o.target, STAGING_NAME)} and moved into place only after every byte verified`,
    from: 'object-storage',
    bucket: r.bucket,
    prefix: r.prefix,
    backup: r.backup,
    target: o.target,
    marker: join(o.target, MARKER_NAME),
    ...(r.bandwidthLimitMiBps ? { bandwidthLimitMiBps: r.bandwidthLimitMiBps } : {}),
    ...(r.credentials ? { credentials: { accessKeyId: ref(r.credentials.accessKeyId, 'restore.credentials.accessKeyId')!, secretAccessKey: ref(r.credentials.secretAccessKey, 'restore.credentials.secretAccessKey')! } } : {}),
    ...(r.backupKey ? { backupKey: ref(r.backupKey, 'restore.backupKey')! } : {}),
  };
  return [step];
}

export const restorePhase: Phase<RestoreObserved> = {
  name: 'restore',
  stage: 'restore',
  section: (s) => s.restore,
  observe: (spec, probe) => observeRestore(spec, probe),
  plan: (spec, observed) => planRestore(spec, observed),
};
