import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../host/files.js';

/**
 * `<stateDir>/restore-progress.json`: how far the restore phase's restore
 * got, for `bosun status` and the agent's status report. Figures and names
 * only, never a secret; world-readable (0644) for that reason. Written by
 * src/backup/restore-step.ts at most every 2 s, and once when it ends.
 */
export const PROGRESS_FILE = 'restore-progress.json';

/** What `bosun status` and the agent's status report show of a restore: never a secret, only figures and names. */
export interface RestoreProgressRecord {
  state: 'running' | 'done' | 'failed';
  source: string;
  backup: string;
  target: string;
  /** the restore's own phase (src/backup/progress.ts) */
  phase?: 'preparing' | 'transferring' | 'finishing' | 'done';
  bytesDone: number;
  bytesTotal: number;
  percent: number;
  /** bytes per second */
  rate: number;
  etaSeconds: number | null;
  backupId?: string;
  error?: string;
  updatedAt: string;
}

export async function readRestoreProgress(stateDir: string): Promise<RestoreProgressRecord | undefined> {
  try {
    return JSON.parse(await readFile(join(stateDir, PROGRESS_FILE), 'utf8')) as RestoreProgressRecord;
  } catch {
    return undefined;
  }
}

/** The same, synchronously (the agent's status body is built synchronously; the file is a few hundred bytes). */
export function readRestoreProgressSync(stateDir: string): RestoreProgressRecord | undefined {
  try {
    return JSON.parse(readFileSync(join(stateDir, PROGRESS_FILE), 'utf8')) as RestoreProgressRecord;
  } catch {
    return undefined;
  }
}

export async function writeRestoreProgress(stateDir: string, record: RestoreProgressRecord): Promise<void> {
  await writeFileAtomic(join(stateDir, PROGRESS_FILE), JSON.stringify(record) + '\n', { mode: 0o644 });
}
