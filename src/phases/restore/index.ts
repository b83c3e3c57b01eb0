import { join } from 'node:path';
import { z } from 'zod';
import { MARKER_NAME, RestoreMarker, peerSource, sourceOf } from '../../backup/marker.js';
import { JOURNAL_NAME, STAGING_NAME } from '../../backup/target.js';
import { BosunError } from '../../errors.js';
import type { ObjectStorageRestoreStep, PeerRestoreStep, RestoreStep, Step } from '../../engine/step.js';
import type { SecretRef } from '../../secrets/ref.js';
import { peerRestorePlan } from '../../backup/peer/from-spec.js';
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
  const [markerRaw, journalRaw, names] = await Promise.all([
    probe.readFile(join(target, MARKER_NAME)),
    probe.readFile(join(target, JOURNAL_NAME)),
    probe.listDir(target),
  ]);
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

type ObjectStorageSource = Omit<ObjectStorageRestoreStep, 'kind' | 'phase' | 'why' | 'target' | 'marker'>;

/** The object-storage part of a restore step, from the spec's restore (or its peer fallback); secrets stay references. */
function objectStorageSource(r: Omit<Extract<RestoreSpec, { from: 'object-storage' }>, 'from'>, label = 'restore'): ObjectStorageSource {
  return {
    from: 'object-storage',
    bucket: r.bucket,
    prefix: r.prefix,
    backup: r.backup,
    ...(r.bandwidthLimitMiBps ? { bandwidthLimitMiBps: r.bandwidthLimitMiBps } : {}),
    ...(r.credentials
      ? {
          credentials: {
            accessKeyId: ref(r.credentials.accessKeyId, `${label}.credentials.accessKeyId`)!,
            secretAccessKey: ref(r.credentials.secretAccessKey, `${label}.credentials.secretAccessKey`)!,
          },
        }
      : {}),
    ...(r.backupKey ? { backupKey: ref(r.backupKey, `${label}.backupKey`)! } : {}),
  };
}

export function planRestore(spec: NodeSpec, observed: RestoreObserved): Step[] {
  const restore = spec.restore!;
  // Sources whose completed restore satisfies the spec: the peer, or its object-storage fallback.
  const fallback = restore.from === 'peer' ? restore.fallback : undefined;
  const accepted = restore.from === 'peer' ? [peerSource(restore.peer), ...(fallback ? [sourceOf(fallback)] : [])] : [sourceOf(restore)];
  const wantedBackup = restore.from === 'peer' ? (fallback?.backup ?? 'latest') : restore.backup;
  const asked = restore.from === 'peer' ? `a copy from peer ${restore.peer}` : `backup ${restore.backup} of ${sourceOf(restore)}`;
  if (observed.marker === 'unreadable') {
    throw new BosunError(
      'E_REFUSED',
      `restore: ${join(observed.target, MARKER_NAME)} is not a restore marker bosun wrote; refusing to restore over the data volume; nothing was changed`,
      { target: observed.target },
    );
  }
  if (observed.marker) {
    const restored = observed.marker;
    const same =
      accepted.includes(restored.source) && (restored.source.startsWith('peer://') || wantedBackup === 'latest' || wantedBackup === restored.backupId);
    if (same) return [];
    throw new BosunError(
      'E_REFUSED',
      `restore: the data volume ${observed.target} already holds backup ${restored.backupId} of ${restored.source} (restored ${restored.completedAt}), but the spec asks for ${asked}; bosun never restores over data (empty the volume to restore again); nothing was changed`,
      { target: observed.target, restored: restored.backupId, wanted: wantedBackup },
    );
  }
  if (observed.foreign.length > 0 && !observed.journal) {
    throw new BosunError(
      'E_REFUSED',
      `restore: the data volume ${observed.target} holds data that no bosun restore wrote (${observed.foreign.slice(0, 3).join(', ')}${observed.foreign.length > 3 ? ', …' : ''}); refusing to restore over it; nothing was changed`,
      { target: observed.target, entries: observed.foreign.length },
    );
  }
  const marker = join(observed.target, MARKER_NAME);
  if (restore.from === 'peer') {
    const plan = peerRestorePlan(spec)!;
    const resumeNote = observed.journal
      ? `continue the interrupted restore (${observed.journal.chunksDone} of ${observed.journal.chunks} chunks written; the peer is asked for the same snapshot): `
      : '';
    const step: PeerRestoreStep = {
      kind: 'restore',
      phase: 'restore',
      why: `${resumeNote || 'the data volume holds no restored data yet: '}${plan.method === 'command' ? `copy ${restore.peer}'s data with the service's restore command` : `pull a consistent snapshot of ${restore.peer}'s data volume over the mesh (TLS pinned to both host keys), verify every chunk`}, staged and moved into place only when complete${fallback ? `; if ${restore.peer} cannot serve, restore backup ${fallback.backup} of s3://${fallback.bucket}/${fallback.prefix} instead` : ''}`,
      from: 'peer',
      method: plan.method,
      peer: restore.peer,
      peerAddress: plan.method === 'command' ? plan.peerAddress : plan.peer.host,
      ...(plan.method === 'snapshot'
        ? { port: plan.peer.port, peerKey: plan.peer.key }
        : { argv: plan.argv, ...(plan.timeoutSeconds !== undefined ? { timeoutSeconds: plan.timeoutSeconds } : {}) }),
      node: spec.node,
      target: observed.target,
      marker,
      ...(fallback ? { fallback: objectStorageSource(fallback, 'restore.fallback') } : {}),
    };
    return [step];
  }
  const resume = observed.journal
    ? `continue the interrupted restore of backup ${observed.journal.backupId} (${observed.journal.chunksDone} of ${observed.journal.chunks} chunks written${observed.journal.state === 'committing' ? ', committing' : ''}; they are read back and checked): `
    : '';
  const step: RestoreStep = {
    kind: 'restore',
    phase: 'restore',
    why: `${resume || 'the data volume holds no restored data yet: '}restore ${sourceOf(restore)} backup ${restore.backup}: parallel ranged GETs, decrypt, decompress, verify every chunk, staged in ${join(observed.target, STAGING_NAME)} and moved into place only after every byte verified`,
    ...objectStorageSource(restore),
    target: observed.target,
    marker,
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
