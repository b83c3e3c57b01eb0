import { hostname } from 'node:os';
import type { RestoreResult } from './index.js';
import type { Progress } from './progress.js';
import { BosunError, describeError } from '../errors.js';
import type { ObjectStorageRestoreStep, PeerRestoreStep, RestoreStep } from '../engine/step.js';
import type { HostIdentity } from '../identity/host-identity.js';
import type { Logger } from '../log.js';
import { openSecretRef } from '../secrets/open.js';
import type { Redactor } from '../secrets/redact.js';
import type { SecretRef } from '../secrets/ref.js';
import type { ObjectStorageSettings } from '../spec/agent-settings.js';
import { writeRestoreProgress, type RestoreProgressRecord } from '../state/restore-progress.js';
import { MARKER_FORMAT, peerSource, sourceOf } from './marker.js';

export interface RestoreRunContext {
  identity?: HostIdentity;
  redactor: Redactor;
  logger: Logger;
  objectStorage?: ObjectStorageSettings;
  /** where restore-progress.json goes (bosun status and the agent's status read it) */
  stateDir: string;
  /** prefix of every path (Host.root: tests and image builds) */
  root?: string;
  signal?: AbortSignal;
}

function open(ctx: RestoreRunContext, ref: SecretRef): Buffer {
  return openSecretRef(ref, ctx.identity, ctx.redactor);
}

/**
 * Run a restore step: the entry point of the restore phase. It picks the
 * restore function by the step's source, reports progress to the state dir
 * and the log, and leaves the marker only after every byte was verified.
 * The backup and peer libraries (and the S3 client) load only here, so no
 * other command pays for them.
 */
export async function runRestoreStep(step: RestoreStep, ctx: RestoreRunContext): Promise<RestoreResult | undefined> {
  if (step.from === 'object-storage') return restoreStepFromObjectStorage(step, ctx);
  const { isPeerRestoreError } = await import('./peer/index.js');
  try {
    return await restoreStepFromPeer(step, ctx);
  } catch (e) {
    if (!(step.fallback && isPeerRestoreError(e) && e.fallback)) throw e;
    ctx.logger.warn(
      { phase: 'restore', peer: step.peer, stage: e.stage, reason: ctx.redactor.redact(describeError(e)) },
      `restore: peer ${step.peer} cannot serve (${e.stage}); restoring backup ${step.fallback.backup} of s3://${step.fallback.bucket}/${step.fallback.prefix} instead`,
    );
    return restoreStepFromObjectStorage({ kind: 'restore', phase: 'restore', why: step.why, ...step.fallback, target: step.target, marker: step.marker }, ctx);
  }
}

/** restore-progress.json for bosun status and the agent's status report: figures and names only. */
function progressRecorder(ctx: RestoreRunContext, source: string, backup: string, target: string) {
  let last: Progress | undefined;
  let lastWrite = 0;
  let writing: Promise<void> = Promise.resolve();
  const record = (state: RestoreProgressRecord['state'], extra: Partial<RestoreProgressRecord> = {}): RestoreProgressRecord => ({
    state,
    source,
    backup,
    target,
    ...(last ? { phase: last.phase } : {}),
    bytesDone: last?.bytesDone ?? 0,
    bytesTotal: last?.bytesTotal ?? 0,
    percent: last && last.bytesTotal > 0 ? Math.floor((last.bytesDone / last.bytesTotal) * 1000) / 10 : 0,
    rate: Math.round(last?.rate ?? 0),
    etaSeconds: last?.etaSeconds === undefined ? null : Math.round(last.etaSeconds),
    ...extra,
    updatedAt: new Date().toISOString(),
  });
  const save = (progressRecord: RestoreProgressRecord): Promise<void> => {
    writing = writing.then(() => writeRestoreProgress(ctx.stateDir, progressRecord)).catch(() => undefined);
    return writing;
  };
  return {
    onProgress: (progress: Progress): void => {
      last = progress;
      if (performance.now() - lastWrite < 2000 && progress.phase !== 'done') return;
      lastWrite = performance.now();
      void save(record('running'));
    },
    running: () => save(record('running')),
    done: (backupId: string, bytes: number) => save(record('done', { backupId, bytesDone: bytes, bytesTotal: bytes, percent: 100, etaSeconds: 0 })),
    failed: (e: unknown) => save(record('failed', { error: ctx.redactor.redact(describeError(e)) })),
  };
}

async function restoreStepFromObjectStorage(step: ObjectStorageRestoreStep, ctx: RestoreRunContext): Promise<RestoreResult> {
  const { createS3Client, restoreFromObjectStorage } = await import('./index.js');
  const { parseBackupKey, resolveStore } = await import('./store.js');
  const root = ctx.root ?? '';
  const source = sourceOf(step);
  const credentials = step.credentials
    ? {
        accessKeyId: open(ctx, step.credentials.accessKeyId).toString('utf8').trim(),
        secretAccessKey: open(ctx, step.credentials.secretAccessKey).toString('utf8').trim(),
      }
    : undefined;
  const store = await resolveStore(ctx.objectStorage, credentials ? { credentials } : {}, ctx.redactor);
  let openDataKey: (sealed: string) => Buffer;
  if (step.backupKey) {
    const pem = open(ctx, step.backupKey);
    const key = parseBackupKey(pem, step.backupKey.label);
    pem.fill(0);
    openDataKey = (sealed) => key.open(sealed);
  } else {
    const id = ctx.identity;
    if (!id) throw new BosunError('E_SECRET', 'restore: no restore.backupKey in the spec and no host identity to open the backup with');
    openDataKey = (sealed) => id.open(sealed);
  }

  const progress = progressRecorder(ctx, source, step.backup, step.target);
  const client = createS3Client(store);
  const log = ctx.logger.child({ phase: 'restore', source });
  await progress.running();
  try {
    const result = await restoreFromObjectStorage({
      client,
      bucket: step.bucket,
      prefix: step.prefix,
      backupId: step.backup,
      target: root + step.target,
      openDataKey,
      logger: log,
      redactor: ctx.redactor,
      onProgress: progress.onProgress,
      markerPath: root + step.marker,
      markerExtra: { format: MARKER_FORMAT, source, requested: step.backup },
      keepTargetMetadata: true,
      // A prune elsewhere keeps this backup while the restore reads it (leases.ts).
      lease: { host: hostname() },
      ...(step.bandwidthLimitMiBps ? { bandwidthLimit: step.bandwidthLimitMiBps * 1024 * 1024 } : {}),
      ...(ctx.signal ? { signal: ctx.signal } : {}),
    });
    await progress.done(result.backupId, result.bytes);
    return result;
  } catch (e) {
    await progress.failed(e);
    throw e;
  } finally {
    client.destroy();
  }
}

/** Restores from the peer; undefined for a command restore (the tool's own copy has no backup figures). */
async function restoreStepFromPeer(step: PeerRestoreStep, ctx: RestoreRunContext): Promise<RestoreResult | undefined> {
  const { hostTlsCredential, restoreFromPeer, restoreWithCommand } = await import('./peer/index.js');
  const root = ctx.root ?? '';
  const source = peerSource(step.peer);
  const log = ctx.logger.child({ phase: 'restore', source });
  const progress = progressRecorder(ctx, source, step.method, step.target);
  await progress.running();
  try {
    if (step.method === 'command') {
      const commandResult = await restoreWithCommand({
        argv: step.argv ?? [],
        peer: step.peer,
        peerAddress: step.peerAddress,
        node: step.node,
        target: root + step.target,
        markerPath: root + step.marker,
        markerExtra: { format: MARKER_FORMAT, source, requested: 'command', backupId: 'command', manifestDigest: 'none' },
        redactor: ctx.redactor,
        logger: log,
        ...(step.timeoutSeconds !== undefined ? { timeoutSeconds: step.timeoutSeconds } : {}),
      });
      log.info({ seconds: commandResult.seconds }, `restore: the restore command copied ${step.peer}'s data in ${commandResult.seconds.toFixed(1)} s`);
      await progress.done('command', 0);
      return undefined;
    }
    const id = ctx.identity;
    if (!id)
      throw new BosunError(
        'E_SECRET',
        "restore: restoring from a peer needs this host's identity (its keys authenticate it to the peer and open the snapshot)",
      );
    const result = await restoreFromPeer({
      peer: { host: step.peerAddress, port: step.port!, key: step.peerKey!, name: step.peer },
      identity: await hostTlsCredential(ctx.stateDir, step.node),
      recipient: id.sealingKey,
      openDataKey: (sealed) => id.open(sealed),
      target: root + step.target,
      markerPath: root + step.marker,
      logger: log,
      redactor: ctx.redactor,
      onProgress: progress.onProgress,
      ...(step.bandwidthLimitMiBps ? { bandwidthLimit: step.bandwidthLimitMiBps * 1024 * 1024 } : {}),
      ...(ctx.signal ? { signal: ctx.signal } : {}),
      restoreOptions: { markerExtra: { format: MARKER_FORMAT, source, requested: 'snapshot' }, keepTargetMetadata: true },
    });
    await progress.done(result.backupId, result.bytes);
    return result;
  } catch (e) {
    await progress.failed(e);
    throw e;
  }
}
