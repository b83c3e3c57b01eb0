import { join } from 'node:path';
import { BosunError } from '../errors.js';
import { readFileIfExists, removeFile, writeFileAtomic } from '../host/files.js';
import type { Step } from './step.js';

/**
 * The apply journal: the plan being applied and how far it got, rewritten
 * atomically (and fsynced) after every step. A crash, a power cut or a kill
 * leaves a journal that says which steps are done and which one was running,
 * so the next start resumes there instead of re-planning half-changed disks.
 * Secrets are in it only in sealed form; the file is 0600 all the same.
 */
export interface JournalState {
  format: 1;
  specVersion: number;
  /** canonical digest of the spec this plan was made for */
  specDigest: string;
  planDigest: string;
  steps: Step[];
  /** index of the first step not known to be done */
  next: number;
  /** the step that had started when the journal was last written, if it had not finished */
  inFlight?: number;
  /** how many times this plan has been started (1 = first run) */
  runs: number;
  startedAt: string;
  updatedAt: string;
  lastError?: { step: number; code: string; message: string; at: string };
}

/** The record of the last spec applied in full: the last good state. */
export interface AppliedRecord {
  format: 1;
  specVersion: number;
  specDigest: string;
  planDigest: string;
  steps: number;
  appliedAt: string;
}

export class Journal {
  readonly path: string;
  readonly appliedPath: string;
  readonly lastGoodSpecPath: string;

  constructor(readonly stateDir: string) {
    this.path = join(stateDir, 'journal.json');
    this.appliedPath = join(stateDir, 'applied.json');
    this.lastGoodSpecPath = join(stateDir, 'spec.json');
  }

  async read(): Promise<JournalState | undefined> {
    return this.readJson<JournalState>(this.path);
  }

  async readApplied(): Promise<AppliedRecord | undefined> {
    return this.readJson<AppliedRecord>(this.appliedPath);
  }

  async write(state: JournalState): Promise<void> {
    state.updatedAt = new Date().toISOString();
    await writeFileAtomic(this.path, JSON.stringify(state, null, 1) + '\n', { mode: 0o600 });
  }

  /** The plan finished: record the last good state, then drop the journal. */
  async complete(state: JournalState, spec: unknown): Promise<AppliedRecord> {
    const rec: AppliedRecord = {
      format: 1,
      specVersion: state.specVersion,
      specDigest: state.specDigest,
      planDigest: state.planDigest,
      steps: state.steps.length,
      appliedAt: new Date().toISOString(),
    };
    await writeFileAtomic(this.lastGoodSpecPath, JSON.stringify(spec, null, 2) + '\n', { mode: 0o600 });
    await writeFileAtomic(this.appliedPath, JSON.stringify(rec, null, 2) + '\n', { mode: 0o600 });
    await removeFile(this.path);
    return rec;
  }

  async discard(): Promise<void> {
    await removeFile(this.path);
  }

  private async readJson<T>(path: string): Promise<T | undefined> {
    const buf = await readFileIfExists(path);
    if (!buf) return undefined;
    try {
      return JSON.parse(buf.toString('utf8')) as T;
    } catch {
      // Atomic writes make this unreachable short of disk corruption; say so rather than guess.
      throw new BosunError('E_JOURNAL', `${path} is not valid JSON; inspect it, then remove it to re-plan from the host as it is`, { path });
    }
  }
}
