import { createHash } from 'node:crypto';
import { schedule, type ScheduledTask } from 'node-cron';
import { canonicalJson } from '../canonical-json.js';
import { describeError } from '../errors.js';
import type { Sample } from '../health/metrics.js';
import type { Logger } from '../log.js';
import type { BackupSpec } from '../spec/backup-spec.js';
import type { NodeSpec } from '../spec/node-spec.js';
import { BACKUP_RUNS_FORMAT, readBackupRuns, writeBackupRuns, type BackupRunFailure, type BackupRunSuccess, type BackupRuns } from '../state/backup-runs.js';
import { BackupRunError, runBackup, stopBackupUnit, targetOf, type BackupRunContext } from './backup-run.js';

export interface ScheduledBackupsOptions extends BackupRunContext {
  logger: Logger;
  /** aborted when the agent stops: no run starts after that */
  signal: AbortSignal;
  /** publish an event on bosun.events */
  event: (body: Record<string, unknown>) => Promise<void>;
}

/** What the status report says about backups. */
export interface BackupStatus {
  schedule: string;
  target: string;
  running: { startedAt: string } | null;
  lastSuccess: BackupRunSuccess | null;
  lastFailure: BackupRunFailure | null;
  /** seconds since the last good backup finished; null if there is none */
  ageSeconds: number | null;
}

/**
 * This node's seconds of delay after each due time, in [0, splaySeconds]: fixed per cluster, node and
 * target (so runs stay evenly spaced), different across a fleet (so its nodes do not all reach the store
 * in the same second).
 */
export function splayOffsetSeconds(spec: NodeSpec): number {
  const backup = spec.backup!;
  if (backup.splaySeconds === 0) return 0;
  const digest = createHash('sha256')
    .update(`${spec.cluster}/${spec.node}/${targetOf(backup)}`)
    .digest();
  return digest.readUInt32BE(0) % (backup.splaySeconds + 1);
}

/**
 * The scheduled backups of the applied spec (spec.backup): a cron task that,
 * at each due time plus this node's splay, runs one backup (backup-run.ts),
 * never two at once; each run reported as backup-started and then
 * backup-succeeded or backup-failed on bosun.events, the last of each kind
 * kept in the state dir for the status and the metrics.
 */
export class ScheduledBackups {
  readonly #options: ScheduledBackupsOptions;
  #task: { key: string; cron: ScheduledTask; timer?: NodeJS.Timeout } | undefined;
  #spec: NodeSpec | undefined;
  #running: { startedAt: string; done: Promise<void> } | undefined;
  #runs: BackupRuns = { format: BACKUP_RUNS_FORMAT };

  constructor(options: ScheduledBackupsOptions) {
    this.#options = options;
  }

  /** Reads what the last runs left in the state dir (before the first status). */
  async load(): Promise<void> {
    try {
      this.#runs = (await readBackupRuns(this.#options.stateDir)) ?? this.#runs;
    } catch (e) {
      this.#options.logger.warn(`backup: ${describeError(e)}; starting without the record of earlier runs`);
    }
  }

  /** Follow the applied spec: (re)schedule when its backup section changed, stop when it has none (or the node is retired). */
  sync(spec: NodeSpec): void {
    this.#spec = spec;
    const key = spec.backup && !spec.decommission ? canonicalJson({ backup: spec.backup, node: spec.node, cluster: spec.cluster }) : '';
    if ((this.#task?.key ?? '') === key) return;
    this.#unschedule();
    if (!key || this.#options.signal.aborted) return;
    const offset = splayOffsetSeconds(spec);
    const cron = schedule(
      spec.backup!.schedule,
      () => {
        const timer = setTimeout(() => void this.runNow('schedule'), offset * 1000);
        if (this.#task) this.#task.timer = timer;
      },
      { timezone: 'Etc/UTC', name: 'bosun-backup' },
    );
    this.#task = { key, cron };
    this.#options.logger.info(`backups scheduled: "${spec.backup!.schedule}" UTC + ${offset} s, to ${targetOf(spec.backup!)}`);
  }

  /**
   * One backup now, unless one is running (then this one is skipped and said so: the schedule is
   * behind, or the store is slow). Resolves when the run has ended and been reported.
   */
  async runNow(reason: 'schedule' | 'request' = 'request'): Promise<void> {
    const spec = this.#spec;
    if (!spec?.backup || spec.decommission || this.#options.signal.aborted) return;
    if (this.#running) {
      this.#options.logger.warn(`backup: the run started at ${this.#running.startedAt} is still going; this ${reason} run is skipped`);
      await this.#publish({ kind: 'backup-skipped', version: spec.version, reason: 'a run is still going', runningSince: this.#running.startedAt });
      return;
    }
    const startedAt = new Date().toISOString();
    const done = this.#run(spec, spec.backup, startedAt, reason);
    this.#running = { startedAt, done };
    try {
      await done;
    } finally {
      this.#running = undefined;
    }
  }

  async #run(spec: NodeSpec, backup: BackupSpec, startedAt: string, reason: string): Promise<void> {
    const { logger } = this.#options;
    const target = targetOf(backup);
    const consistency = backup.consistency.method;
    await this.#publish({ kind: 'backup-started', version: spec.version, target, consistency, reason });
    logger.info(`backup to ${target} started (${consistency})`);
    const t0 = performance.now();
    try {
      const result = await runBackup(spec, this.#options);
      const success: BackupRunSuccess = {
        backupId: result.backupId,
        target,
        consistency,
        startedAt,
        finishedAt: new Date().toISOString(),
        seconds: Number(((performance.now() - t0) / 1000).toFixed(3)),
        files: result.stats.files,
        bytesRead: result.stats.bytes,
        bytesUploaded: result.stats.uploadedBytes ?? result.stats.storedBytes,
        bytesReused: result.stats.reusedBytes ?? 0,
      };
      this.#runs = { ...this.#runs, lastSuccess: success };
      await this.#save();
      logger.info(
        `backup ${success.backupId} to ${target}: ${success.files} files, ${success.bytesRead} bytes read, ${success.bytesUploaded} uploaded in ${success.seconds} s`,
      );
      await this.#publish({ kind: 'backup-succeeded', version: spec.version, ...success, ...(result.pruned ? { pruned: result.pruned } : {}) });
    } catch (e) {
      const stage = e instanceof BackupRunError ? e.stage : 'upload';
      const message = this.#options.redactor.redact(describeError(e));
      const failure: BackupRunFailure = { target, startedAt, failedAt: new Date().toISOString(), stage, message };
      this.#runs = { ...this.#runs, lastFailure: failure };
      await this.#save();
      logger.error(`backup to ${target} failed at ${stage}: ${message}; the previous backup stays the latest`);
      await this.#publish({
        kind: 'backup-failed',
        version: spec.version,
        consistency,
        seconds: Number(((performance.now() - t0) / 1000).toFixed(3)),
        ...failure,
      });
    }
  }

  async #save(): Promise<void> {
    await writeBackupRuns(this.#options.stateDir, this.#runs).catch((e: unknown) =>
      this.#options.logger.warn(`backup: cannot record the run: ${describeError(e)}`),
    );
  }

  async #publish(body: Record<string, unknown>): Promise<void> {
    await this.#options.event(body).catch((e: unknown) => this.#options.logger.warn(`backup: cannot publish ${String(body.kind)}: ${describeError(e)}`));
  }

  /** For the status report; null when the applied spec has no backups. */
  status(now = Date.now()): BackupStatus | null {
    const backup = this.#spec?.backup;
    if (!backup) return null;
    const last = this.#runs.lastSuccess;
    return {
      schedule: backup.schedule,
      target: targetOf(backup),
      running: this.#running ? { startedAt: this.#running.startedAt } : null,
      lastSuccess: last ?? null,
      lastFailure: this.#runs.lastFailure ?? null,
      ageSeconds: last ? Math.max(0, Math.round((now - Date.parse(last.finishedAt)) / 1000)) : null,
    };
  }

  /** For the Prometheus endpoint: when the last good backup finished (an operator alerts on its age). */
  samples(): Sample[] {
    const last = this.#runs.lastSuccess;
    if (!last) return [];
    return [
      {
        name: 'bosun_backup_last_success_timestamp_seconds',
        help: 'when the last scheduled backup that succeeded finished (Unix time)',
        type: 'gauge',
        value: Math.round(Date.parse(last.finishedAt) / 1000),
      },
      {
        name: 'bosun_backup_last_success_bytes',
        help: 'bytes of content read by the last scheduled backup that succeeded',
        type: 'gauge',
        value: last.bytesRead,
      },
    ];
  }

  #unschedule(): void {
    if (!this.#task) return;
    clearTimeout(this.#task.timer);
    void this.#task.cron.stop();
    this.#task = undefined;
  }

  /**
   * No run starts after this (the agent's signal is aborted first); a run under way is stopped, its
   * service released, and reported failed: a service must not stay quiesced while the agent is away.
   */
  async stop(): Promise<void> {
    this.#unschedule();
    if (!this.#running) return;
    if (this.#options.underSystemd) await stopBackupUnit(this.#options);
    await this.#running.done;
  }
}
