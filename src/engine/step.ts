import { createHash } from 'node:crypto';
import { canonicalJson } from '../canonical-json.js';
import type { UnitAction } from '../host/systemd.js';
import type { Content, SecretRef } from '../secrets/ref.js';

/**
 * A Step is one thing the engine does to the host. Phases only ever return
 * steps; the engine is the only caller of `host/`. A step is plain data: it
 * can be printed (`bosun plan`), journalled, and compared.
 *
 * Secrets appear in steps only as references to the sealed value. They are
 * opened at execution time, never printed, and never placed in argv (which any
 * local user can read from /proc): a secret reaches a command on stdin or in a
 * root-only file.
 */

export type PhaseName = 'packages' | 'disks' | 'network' | 'container' | 'restore' | 'auxiliary' | 'decommission';

/**
 * What the engine plans, runs and journals as one unit: a phase, or one stage
 * of a phase ("disks/raid", "disks/luks", ...). A phase whose layers sit on
 * each other is split into stages so each layer is observed after the one
 * below it exists.
 */
export type StageId = string;

interface StepBase {
  phase: PhaseName;
  /** why this step is needed, in words an operator reads in `bosun plan` */
  why: string;
}

export interface ExecStep extends StepBase {
  kind: 'exec';
  argv: readonly string[];
  stdin?: Content;
  /** exit codes that count as success besides 0 */
  okExitCodes?: readonly number[];
  timeoutSeconds?: number;
  /** erases what is on a device (format, wipe): `bosun plan` marks it */
  destructive?: boolean;
  /**
   * A check that becomes true later (a service answering its health check):
   * run again until it succeeds (after 1, 2, 4, 8 s, then every 10 s), failing after this many seconds.
   */
  retryForSeconds?: number;
}

export interface WriteStep extends StepBase {
  kind: 'write';
  path: string;
  mode: number;
  owner?: number;
  group?: number;
  content: Content;
}

export interface MkdirStep extends StepBase {
  kind: 'mkdir';
  path: string;
  mode: number;
  owner?: number;
  group?: number;
}

export interface RemoveStep extends StepBase {
  kind: 'remove';
  path: string;
}

export interface UnitStep extends StepBase {
  kind: 'unit';
  action: UnitAction;
  /** absent only for daemon-reload */
  unit?: string;
}

/**
 * Wait until a device node or udev link exists. udev creates links after the
 * event that announces a device; `udevadm settle` alone can return before the
 * link a later step names, so the step that needs it waits for that link.
 */
export interface WaitStep extends StepBase {
  kind: 'wait';
  path: string;
  timeoutSeconds: number;
}

/**
 * Bring packages to their newest version through dnf: transient failures
 * (mirrors, metadata, the lock) are retried with backoff until the deadline,
 * permanent ones (no such package, conflicts, disk full) fail at once.
 */
export interface RefreshStep extends StepBase {
  kind: 'refresh';
  packages: readonly string[];
  deadlineSeconds: number;
}

/** Work a phase will do once it is built; shown by `plan`, refused by `apply`. */
export interface PendingStep extends StepBase {
  kind: 'pending';
  issue: number;
}

/**
 * Restore a backup into a directory (the data volume), run in-process by
 * src/backup/restore-step.ts: staged beside or inside the target, every chunk
 * verified, resumable after a kill (its own journal in the target), and
 * `marker` written only once every byte verified. Secrets are references, as
 * everywhere. `from` says which restore function runs it.
 */
export type RestoreStep = ObjectStorageRestoreStep | PeerRestoreStep;

export interface ObjectStorageRestoreStep extends StepBase {
  kind: 'restore';
  from: 'object-storage';
  bucket: string;
  prefix: string;
  /** a backup id, or "latest" */
  backup: string;
  target: string;
  /** the completion record; its presence for this source and backup is what makes the phase skip */
  marker: string;
  bandwidthLimitMiBps?: number;
  /** absent: agent.json's objectStorage credentials, or the environment */
  credentials?: { accessKeyId: SecretRef; secretAccessKey: SecretRef };
  /** the backup key pair's private half (PKCS#8 PEM); absent: the backup is sealed to this host's own key */
  backupKey?: SecretRef;
}

/** Restore from a peer over the mesh: its agent's snapshot (TLS pinned to both host keys) or the service's own copy command. */
export interface PeerRestoreStep extends StepBase {
  kind: 'restore';
  from: 'peer';
  method: 'snapshot' | 'command';
  peer: string;
  /** the peer's mesh address */
  peerAddress: string;
  /** snapshot: the peer agent's snapshot port and the only host key it may present */
  port?: number;
  peerKey?: string;
  /** command: argv with {peer}, {peerAddress}, {target}, {node} placeholders, and its time limit */
  argv?: string[];
  timeoutSeconds?: number;
  node: string;
  target: string;
  marker: string;
  bandwidthLimitMiBps?: number;
  /** restored instead when the peer cannot serve (down, refusing, snapshot failed); absent: the phase fails */
  fallback?: Omit<ObjectStorageRestoreStep, 'kind' | 'phase' | 'why' | 'target' | 'marker'>;
}

export type Step = ExecStep | WriteStep | MkdirStep | RemoveStep | UnitStep | WaitStep | RefreshStep | PendingStep | RestoreStep;

/** Stable identity of a step's content: the journal uses it to tell a resumed plan from a new one. */
export function stepDigest(step: Step): string {
  return createHash('sha256').update(canonicalJson(step)).digest('hex').slice(0, 16);
}

export function planDigest(steps: readonly Step[]): string {
  const h = createHash('sha256');
  for (const s of steps) h.update(stepDigest(s)).update('\n');
  return h.digest('hex').slice(0, 16);
}
