import { join } from 'node:path';
import { BosunError } from '../errors.js';
import { readFileIfExists, removeFile, writeFileAtomic } from '../host/files.js';
import type { StageId, Step } from './step.js';

/**
 * The apply journal: which phases of the spec being applied are done, the
 * steps of the phase under way and how far they got. It is rewritten
 * atomically (and fsynced) after every step, so a crash, a power cut or a kill
 * leaves a journal that says exactly where the apply stopped.
 *
 * On resume, finished phases are not run again. The interrupted phase is
 * observed and planned afresh rather than continued from its saved steps:
 * after a power cut the host is not where those steps left it (arrays not
 * assembled, LUKS volumes closed), and the phase's own observation is what
 * tells a half-made volume from a finished one.
 * Secrets are in it only in sealed form; the file is 0600 all the same.
 */
export interface PhaseProgress {
  phase: StageId;
  steps: Step[];
  planDigest: string;
  /** index of the first step not known to be done */
  next: number;
  /** the step that had started when the journal was last written, if it had not finished */
  inFlight?: number;
}

export interface JournalState {
  format: 2;
  specVersion: number;
  /** canonical digest of the spec being applied */
  specDigest: string;
  /** phases finished, in order, during the boot named by bootId */
  donePhases: StageId[];
  /** the kernel's boot id when the journal was written: finished stages count only within one boot */
  bootId?: string;
  current?: PhaseProgress;
  /** steps run to completion so far, all phases */
  stepsDone: number;
  /** how many times this apply has been started (1 = first run) */
  runs: number;
  startedAt: string;
  updatedAt: string;
  lastError?: { phase: StageId; step: number; code: string; message: string; at: string };
}

/** The record of the last spec applied in full: the last good state. */
export interface AppliedRecord {
  format: 1;
  specVersion: number;
  specDigest: string;
  /** steps this apply ran (0 when the host already matched) */
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
    const state = await this.readJson<JournalState>(this.path);
    // A journal from an older format describes a plan this agent cannot continue: start over.
    return state?.format === 2 ? state : undefined;
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
      steps: state.stepsDone,
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

/** This boot's id; a different one means the host restarted (arrays stopped, volumes closed, mounts gone). */
export async function currentBootId(): Promise<string> {
  return ((await readFileIfExists('/proc/sys/kernel/random/boot_id'))?.toString('utf8') ?? 'unknown').trim();
}
