import { join } from 'node:path';
import { readFileIfExists, removeFile, writeFileAtomic } from '../host/files.js';
import { readJsonFile } from './json-file.js';
import { recordApplied, readApplied, type AppliedRecord } from './applied.js';

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
export interface PhaseProgress<TStep = unknown> {
  /** a stage id: a phase name, or "phase/layer" */
  phase: string;
  /** the engine's steps (src/engine/step.ts); this module only stores them */
  steps: TStep[];
  planDigest: string;
  /** index of the first step not known to be done */
  next: number;
  /** the step that had started when the journal was last written, if it had not finished */
  inFlight?: number;
}

export interface JournalState<TStep = unknown> {
  format: 2;
  specVersion: number;
  /** canonical digest of the spec being applied */
  specDigest: string;
  /** phases finished, in order, during the boot named by bootId */
  donePhases: string[];
  /** the kernel's boot id when the journal was written: finished stages count only within one boot */
  bootId?: string;
  current?: PhaseProgress<TStep>;
  /** steps run to completion so far, all phases */
  stepsDone: number;
  /** how many times this apply has been started (1 = first run) */
  runs: number;
  startedAt: string;
  updatedAt: string;
  lastError?: { phase: string; step: number; code: string; message: string; at: string };
}

/** `<stateDir>/journal.json`: present only while an apply is unfinished. */
export class Journal<TStep = unknown> {
  readonly path: string;

  constructor(readonly stateDir: string) {
    this.path = join(stateDir, 'journal.json');
  }

  async read(): Promise<JournalState<TStep> | undefined> {
    const state = await readJsonFile<JournalState<TStep>>(this.path, 'inspect it, then remove it to re-plan from the host as it is');
    // A journal from an older format describes a plan this agent cannot continue: start over.
    return state?.format === 2 ? state : undefined;
  }

  /** The last spec applied in full (state/applied.ts). */
  readApplied(): Promise<AppliedRecord | undefined> {
    return readApplied(this.stateDir);
  }

  async write(state: JournalState<TStep>): Promise<void> {
    state.updatedAt = new Date().toISOString();
    await writeFileAtomic(this.path, JSON.stringify(state, null, 1) + '\n', { mode: 0o600 });
  }

  /** The plan finished: record the last good state, then drop the journal. */
  async complete(state: JournalState<TStep>, spec: unknown): Promise<AppliedRecord> {
    const record = await recordApplied(this.stateDir, { specVersion: state.specVersion, specDigest: state.specDigest, steps: state.stepsDone }, spec);
    await removeFile(this.path);
    return record;
  }

  async discard(): Promise<void> {
    await removeFile(this.path);
  }
}

/** This boot's id; a different one means the host restarted (arrays stopped, volumes closed, mounts gone). */
export async function currentBootId(): Promise<string> {
  return ((await readFileIfExists('/proc/sys/kernel/random/boot_id'))?.toString('utf8') ?? 'unknown').trim();
}
