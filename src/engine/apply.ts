import { createHash } from 'node:crypto';
import { canonicalJson } from '../canonical-json.js';
import { BosunError, describeError, isBosunError } from '../errors.js';
import type { Host } from '../host/index.js';
import type { HostIdentity } from '../identity/host-identity.js';
import type { Logger } from '../log.js';
import type { Redactor } from '../secrets/redact.js';
import type { NodeSpec } from '../spec/node-spec.js';
import type { AppliedRecord } from '../state/applied.js';
import type { DecommissionRecord } from '../state/decommission.js';
import { Journal, currentBootId, type JournalState } from '../state/journal.js';
import { acquireLock } from '../state/lock.js';
import { runStep, type StepExecutors } from './execute.js';
import { describeStep } from './render.js';
import { planDigest, type StageId, type Step } from './step.js';

export interface ApplyRequest {
  spec: NodeSpec;
  stateDir: string;
  host: Host<Redactor>;
  /** opens sealed secrets; needed only when a step holds one */
  identity?: HostIdentity;
  logger: Logger;
  /** which stages the spec needs and their steps: the engine knows no phase itself */
  planner: Planner;
  /** how to run step kinds the engine does not run through the host itself (restore) */
  executors?: StepExecutors;
  /** what the planner's side wants done around the apply (src/apply-node.ts: the decommission record) */
  hooks?: ApplyHooks;
  /** told, in a line, which phase runs now (the daemon passes it to systemd as STATUS=) */
  onProgress?: (text: string) => void;
  /**
   * Awaited once, before the first stage for which `hooks.startsServices` is
   * true runs: what the machine runs on (disks, mesh, restored data) is built.
   * The daemon's boot-time apply sends READY=1 here (see SERVICE_PHASES in
   * src/phases/index.ts).
   */
  beforeServicePhases?: () => Promise<void>;
}

/** Which phases a spec needs, in order, and the steps of one of them as the host is now. */
export interface Planner {
  phases(spec: NodeSpec): StageId[];
  plan(spec: NodeSpec, phase: StageId): Promise<Step[]>;
  /** the host changed (steps ran): forget any observation kept for reuse */
  changed?(): void;
}

/** Points in an apply where the planner's side takes part; each is awaited, and a throw fails the apply. */
export interface ApplyHooks {
  /** before anything is read or run: refuse a spec this host must not apply */
  admit?(spec: NodeSpec): Promise<void>;
  /** after planning, before the first step runs (also when nothing is left to run) */
  starting?(spec: NodeSpec): Promise<void>;
  /** after every stage succeeded and the last good state was recorded: verify, and say what to add to the outcome */
  finished?(spec: NodeSpec): Promise<Pick<ApplyOutcome, 'decommission'>>;
  /** does this stage start units ordered after bosun.service (see `beforeServicePhases`) */
  startsServices?(stage: StageId): boolean;
}

export interface ApplyOutcome {
  result: 'applied' | 'unchanged';
  specVersion: number;
  /** steps run by this apply, over all its runs */
  steps: number;
  /** set when this run continued an apply an earlier run did not finish: the phase it continued at */
  resumedAt?: StageId;
  record: AppliedRecord;
  /** time inside the engine (observe, plan, run), without process start-up */
  durationMs: number;
  /** where the time went: the first planning pass, then per phase that ran */
  timings?: ApplyTimings;
  /** a decommission spec: the verified result, as persisted in the state dir */
  decommission?: DecommissionRecord;
}

/** Per-phase durations of one apply run: what the agent spent observing and planning, and what its steps (the tools' real work) took. */
export interface ApplyTimings {
  /** the first pass: every remaining phase observed and planned before anything changes */
  planMs: number;
  phases: PhaseTiming[];
}

export interface PhaseTiming {
  phase: StageId;
  /** the whole phase: planning it again, its steps, journal writes */
  ms: number;
  /** observing and planning it (0 for the first phase, planned in the first pass) */
  planMs: number;
  /** inside its steps (commands, file writes, restores): the tools' real work */
  stepMs: number;
  steps: number;
  /** its longest step, described as in the log */
  slowest?: { step: string; ms: number };
}

export function specDigest(spec: NodeSpec): string {
  return createHash('sha256').update(canonicalJson(spec)).digest('hex').slice(0, 16);
}

/**
 * Apply a spec phase by phase. Each phase is observed and planned right before
 * it runs (it sees what the phases before it made), its steps run in order
 * through the host layer, and the journal is rewritten after each step. The
 * last good state is replaced only when every phase succeeded.
 */
export async function applySpec(req: ApplyRequest): Promise<ApplyOutcome> {
  const started = performance.now();
  const release = await acquireLock(req.stateDir);
  try {
    return { ...(await applyLocked(req)), durationMs: Math.round(performance.now() - started) };
  } finally {
    await release();
  }
}

async function applyLocked(req: ApplyRequest): Promise<Omit<ApplyOutcome, 'durationMs'>> {
  const { spec, logger } = req;
  const { planner, hooks = {} } = req;
  const journal = new Journal<Step>(req.stateDir);
  const digest = specDigest(spec);
  const log = logger.child({ specVersion: spec.version });

  await hooks.admit?.(spec);
  const applied = await journal.readApplied();
  if (applied && spec.version < applied.specVersion) {
    throw new BosunError('E_STALE_VERSION', `spec version ${spec.version} is older than version ${applied.specVersion}, already applied; versions only grow`, {
      version: spec.version,
      applied: applied.specVersion,
    });
  }
  if (applied && spec.version === applied.specVersion && applied.specDigest !== digest) {
    throw new BosunError('E_STALE_VERSION', `spec version ${spec.version} was already applied with different content; a changed spec needs a new version`, {
      version: spec.version,
    });
  }

  let state = await journal.read();
  let resumedAt: StageId | undefined;
  const bootId = await currentBootId();
  if (state && state.specDigest === digest) {
    state.runs += 1;
    if (state.bootId !== undefined && state.bootId !== bootId && state.donePhases.length > 0) {
      // What finished stages made at runtime (assembled arrays, open volumes, mounts) did not survive the restart.
      log.warn(
        { donePhases: state.donePhases },
        'the host restarted since this apply began: every stage is observed and run again (they only redo what is missing)',
      );
      state.donePhases = [];
      delete state.current;
    }
    state.bootId = bootId;
    resumedAt = state.current?.phase ?? planner.phases(spec).find((p) => !state!.donePhases.includes(p));
    const cur = state.current;
    log.warn(
      { phase: resumedAt, donePhases: state.donePhases, interrupted: cur?.inFlight !== undefined },
      `resuming the unfinished apply of version ${spec.version} at phase ${resumedAt ?? '(none left)'}${cur ? ` (stopped at its step ${cur.next + 1} of ${cur.steps.length}${cur.inFlight !== undefined ? ', while running' : ''}); finished phases are not run again, this one is observed afresh` : ''}`,
    );
  } else {
    if (state) {
      log.warn(
        { abandoned: state.specVersion },
        `abandoning the unfinished apply of version ${state.specVersion}${state.current ? ` at phase ${state.current.phase}` : ''}; planning version ${spec.version} afresh from the host as it is now`,
      );
      await journal.discard();
    }
    const now = new Date().toISOString();
    state = { format: 2, specVersion: spec.version, specDigest: digest, donePhases: [], bootId, stepsDone: 0, runs: 1, startedAt: now, updatedAt: now };
  }

  const remaining = planner.phases(spec).filter((p) => !state.donePhases.includes(p));
  const planStarted = performance.now();
  // Refuse before changing anything if any phase still to run cannot be run yet.
  const firstPlans = new Map<StageId, Step[]>();
  for (const phase of remaining) firstPlans.set(phase, await planner.plan(spec, phase));
  const pending = remaining.filter((p) => firstPlans.get(p)!.some((s) => s.kind === 'pending'));
  if (pending.length > 0) {
    throw new BosunError('E_NOT_IMPLEMENTED', `the plan needs phases bosun cannot run yet: ${pending.join(', ')}; nothing was changed (see \`bosun plan\`)`, {
      phases: pending,
    });
  }
  const timings: ApplyTimings = { planMs: Math.round(performance.now() - planStarted), phases: [] };
  const total = [...firstPlans.values()].reduce((n, s) => n + s.length, 0);
  await hooks.starting?.(spec);
  if (total === 0 && state.stepsDone === 0) {
    const record = await journal.complete(state, spec);
    const finished = await hooks.finished?.(spec);
    log.info({ steps: 0 }, `version ${spec.version}: the host already matches; nothing to do`);
    return { result: 'unchanged', specVersion: spec.version, steps: 0, record, timings, ...finished };
  }
  log.info({ steps: total, phases: remaining }, `applying version ${spec.version}: about ${total} steps in ${remaining.length} phases`);

  let servicePhasesReached = false;
  for (const [i, phase] of remaining.entries()) {
    if (!servicePhasesReached && hooks.startsServices?.(phase)) {
      servicePhasesReached = true;
      await req.beforeServicePhases?.();
    }
    const phaseStarted = performance.now();
    // The first phase runs what was just planned; later ones look again, after the phases before them changed the host.
    const steps = i === 0 ? firstPlans.get(phase)! : await planner.plan(spec, phase);
    const timing: PhaseTiming = { phase, ms: 0, planMs: Math.round(performance.now() - phaseStarted), stepMs: 0, steps: 0 };
    if (steps.some((s) => s.kind === 'pending')) throw new BosunError('E_NOT_IMPLEMENTED', `phase ${phase} is not implemented yet`);
    state.current = { phase, steps, planDigest: planDigest(steps), next: 0 };
    await journal.write(state);
    if (steps.length > 0) planner.changed?.();
    req.onProgress?.(`applying version ${spec.version}: ${phase} (${i + 1} of ${remaining.length}, ${steps.length} steps)`);
    await runPhase(req, journal, state, log, timing);
    state.donePhases.push(phase);
    delete state.current;
    await journal.write(state);
    timing.ms = Math.round(performance.now() - phaseStarted);
    timings.phases.push(timing);
    log.info(
      { phase, ms: timing.ms, planMs: timing.planMs, stepMs: timing.stepMs, steps: timing.steps },
      `${phase}: ${timing.steps} steps in ${timing.ms} ms (${timing.stepMs} ms in the steps)`,
    );
  }
  const record = await journal.complete(state, spec);
  const finished = await hooks.finished?.(spec);
  log.info({ steps: state.stepsDone, timings }, `version ${spec.version} applied`);
  return { result: 'applied', specVersion: spec.version, steps: state.stepsDone, resumedAt, record, timings, ...finished };
}

async function runPhase(req: ApplyRequest, journal: Journal<Step>, state: JournalState<Step>, log: Logger, timing: PhaseTiming): Promise<void> {
  const cur = state.current!;
  const total = cur.steps.length;
  for (let i = cur.next; i < total; i++) {
    const step = cur.steps[i]!;
    const slog = log.child({ phase: cur.phase, step: i + 1 });
    cur.inFlight = i;
    await journal.write(state);
    slog.info(`${cur.phase} ${i + 1}/${total}: ${describeStep(step)}`);
    const stepStarted = performance.now();
    try {
      await runStep(step, req);
      const ms = performance.now() - stepStarted;
      timing.stepMs += Math.round(ms);
      timing.steps += 1;
      if (!timing.slowest || ms > timing.slowest.ms) timing.slowest = { step: req.host.redactor.redact(describeStep(step)), ms: Math.round(ms) };
    } catch (e) {
      const err = isBosunError(e) ? e : new BosunError('E_EXEC', describeError(e), {}, { cause: e });
      const message = req.host.redactor.redact(err.message);
      state.lastError = { phase: cur.phase, step: i, code: err.code, message, at: new Date().toISOString() };
      await journal.write(state);
      slog.error({ errorCode: err.code }, `${cur.phase} step ${i + 1}/${total} failed: ${message}`);
      throw new BosunError(err.code, `${cur.phase} step ${i + 1}/${total} (${step.why}) failed: ${message}`, { ...err.details, phase: cur.phase, step: i + 1 });
    }
    cur.next = i + 1;
    delete cur.inFlight;
    delete state.lastError;
    state.stepsDone += 1;
    await journal.write(state);
  }
}
