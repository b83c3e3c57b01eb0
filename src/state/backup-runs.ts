import { join } from 'node:path';
import { writeFileAtomic } from '../host/files.js';
import { readJsonFile } from './json-file.js';

/**
 * `<stateDir>/backup-runs.json`: the last scheduled backup that succeeded and
 * the last that failed, so the age of the last good backup survives a restart
 * of the agent (status, metrics). Figures and names only, never a secret.
 * Written by src/daemon/backups.ts when a run ends.
 */
export const BACKUP_RUNS_FILE = 'backup-runs.json';
export const BACKUP_RUNS_FORMAT = 'bosun-backup-runs-v1';

export interface BackupRunSuccess {
  backupId: string;
  /** s3://bucket/prefix */
  target: string;
  consistency: 'hooks' | 'snapshot' | 'crash-consistent';
  startedAt: string;
  finishedAt: string;
  seconds: number;
  files: number;
  /** bytes of file content read from the source */
  bytesRead: number;
  /** bytes of packs uploaded (compressed and encrypted) */
  bytesUploaded: number;
  /** bytes of content the store already held and that were not uploaded again */
  bytesReused: number;
}

export interface BackupRunFailure {
  /** s3://bucket/prefix */
  target: string;
  startedAt: string;
  failedAt: string;
  /** where it failed: quiesce, snapshot, upload, release, ... */
  stage: string;
  message: string;
}

export interface BackupRuns {
  format: typeof BACKUP_RUNS_FORMAT;
  lastSuccess?: BackupRunSuccess;
  lastFailure?: BackupRunFailure;
}

export async function readBackupRuns(stateDir: string): Promise<BackupRuns | undefined> {
  return readJsonFile<BackupRuns>(
    join(stateDir, BACKUP_RUNS_FILE),
    `delete it: the next scheduled backup writes it again (only the age of the last good backup is lost)`,
  );
}

export async function writeBackupRuns(stateDir: string, runs: BackupRuns): Promise<void> {
  await writeFileAtomic(join(stateDir, BACKUP_RUNS_FILE), JSON.stringify(runs) + '\n', { mode: 0o600 });
}
