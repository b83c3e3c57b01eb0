import { createHash } from 'node:crypto';
import { BosunError, describeError, isBosunError } from '../errors.js';
import type { Host } from '../host/index.js';
import type { HostProbe } from '../host/probe.js';
import type { HostIdentity } from '../identity/host-identity.js';
import type { Logger } from '../log.js';
import { ObservationReuse, planPhase, phasesFor, type PlanContext } from '../phases/index.js';
import { assertNotDecommissioned, markDecommissioning, recordDecommission, type DecommissionRecord } from '../phases/decommission.js';
import type { NodeSpec } from '../spec/node-spec.js';
import type { ObjectStorageSettings } from '../spec/agent-settings.js';
import { Journal, currentBootId, type AppliedRecord, type JournalState } from './journal.js';
import { acquireLock } from './lock.js';
import { OpenedSecret } from './redact.js';
import { describeStep } from './render.js';
import { SERVICE_PHASES, canonicalJson, isSecretRef, planDigest, type Content, type StageId, type Step } from './step.js';

export interface ApplyRequest {
  spec: NodeSpec;
  stateDir: string;
  host: Host;
  probe: HostProbe;
  ctx: PlanContext;
  /** opens sealed secrets; needed only when a step holds one */
  identity?: HostIdentity;
  logger: Logger;
  /** plan phases with this instead of the phase modules (tests of the engine itself) */
  planner?: Planner;
  /** agent.json's objectStorage: where a restore step finds the store and its credentials */
  objectStorage?: ObjectStorageSettings;
  /** told, in a line, which phase runs now (the daemon passes it to systemd as STATUS=) */
  onProgress?: (text: string) => void;
  /**
   * Awaited once, before the first stage of a SERVICE_PHASES phase runs: what
   * the machine runs on (disks, mesh, restored data) is built. The daemon's
   * boot-time apply sends READY=1 here (see SERVICE_PHASES).
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

/** Stage ids are a phase's name, or "phase/layer" for a phase split into stages. */
function isServiceStage(stage: StageId): boolean {
  return (SERVICE_PHASES as readonly string[]).includes(stage.split('/')[0]!);
}

export function specDigest(spec: NodeSpec): string {
  return createHash('sha256').update(canonicalJson(spec)).digest('hex').slice(0, 16);
}

function phasePlanner(req: ApplyRequest): Planner {
  const reuse = new ObservationReuse();
  return {
    phases: phasesFor,
    plan: (spec, phase) => planPhase(spec, phase, req.probe, req.ctx, reuse),
    changed: () => reuse.clear(),
  };
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
  const planner = req.planner ?? phasePlanner(req);
  const journal = new Journal(req.stateDir);
  const digest = specDigest(spec);
  const log = logger.child({ specVersion: spec.version });

  await assertNotDecommissioned(spec, req.stateDir);
  const applied = await journal.readApplied();
  if (applied && spec.version < applied.specVersion) {
    throw new BosunError('E_STALE_VERSION', `spec version ${spec.version} is older than version ${applied.specVersion}, already applied; versions only grow`, { version: spec.version, applied: applied.specVersion });
  }
  if (applied && spec.version === applied.specVersion && applied.specDigest !== digest) {
    throw new BosunError('E_STALE_VERSION', `spec version ${spec.version} was already applied with different content; a changed spec needs a new version`, { version: spec.version });
  }

  let state = await journal.read();
  let resumedAt: StageId | undefined;
  const bootId = await currentBootId();
  if (state && state.specDigest === digest) {
    state.runs += 1;
    if (state.bootId !== undefined && state.bootId !== bootId && state.donePhases.length > 0) {
      // What finished stages made at runtime (assembled arrays, open volumes, mounts) did not survive the restart.
      log.warn({ donePhases: state.donePhases }, 'the host restarted since this apply began: every stage is observed and run again (they only redo what is missing)');
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
      log.warn({ abandoned: state.specVersion }, `abandoning the unfinished apply of version ${state.specVersion}${state.current ? ` at phase ${state.current.phase}` : ''}; planning version ${spec.version} afresh from the host as it is now`);
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
    throw new BosunError('E_NOT_IMPLEMENTED', `the plan needs phases bosun cannot run yet: ${pending.join(', ')}; nothing was changed (see \`bosun plan\`)`, { phases: pending });
  }
  const timings: ApplyTimings = { planMs: Math.round(performance.now() - planStarted), phases: [] };
  const total = [...firstPlans.values()].reduce((n, s) => n + s.length, 0);
  if (spec.decommission) await markDecommissioning(spec, req.stateDir);
  if (total === 0 && state.stepsDone === 0) {
    const record = await journal.complete(state, spec);
    const decommission = spec.decommission ? await recordDecommission(spec, req.stateDir, req.probe, req.ctx) : undefined;
    log.info({ steps: 0 }, `version ${spec.version}: the host already matches; nothing to do`);
    return { result: 'unchanged', specVersion: spec.version, steps: 0, record, timings, ...(decommission ? { decommission } : {}) };
  }
  log.info({ steps: total, phases: remaining }, `applying version ${spec.version}: about ${total} steps in ${remaining.length} phases`);

  let servicePhasesReached = false;
  for (const [i, phase] of remaining.entries()) {
    if (!servicePhasesReached && isServiceStage(phase)) {
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
    log.info({ phase, ms: timing.ms, planMs: timing.planMs, stepMs: timing.stepMs, steps: timing.steps }, `${phase}: ${timing.steps} steps in ${timing.ms} ms (${timing.stepMs} ms in the steps)`);
  }
  const record = await journal.complete(state, spec);
  const decommission = spec.decommission ? await recordDecommission(spec, req.stateDir, req.probe, req.ctx) : undefined;
  log.info({ steps: state.stepsDone, timings }, `version ${spec.version} applied`);
  return { result: 'applied', specVersion: spec.version, steps: state.stepsDone, resumedAt, record, timings, ...(decommission ? { decommission } : {}) };
}

async function runPhase(req: ApplyRequest, journal: Journal, state: JournalState, log: Logger, timing: PhaseTiming): Promise<void> {
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
      await runStep(req, step);
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

/**
 * How long a command step may run when its phase set no limit: a tool that
 * hangs (a start job that never finishes, a device that stops answering) must
 * fail the apply with a report and a retry, not wedge the agent silently.
 */
export const EXEC_STEP_TIMEOUT_SECONDS = 30 * 60;

async function runStep(req: ApplyRequest, step: Step): Promise<void> {
  const { host } = req;
  switch (step.kind) {
    case 'exec': {
      const run = () => host.exec(step.argv, { input: step.stdin === undefined ? undefined : materialize(req, step.stdin), timeoutSeconds: step.timeoutSeconds ?? EXEC_STEP_TIMEOUT_SECONDS, okExitCodes: step.okExitCodes });
      if (step.retryForSeconds === undefined) {
        await run();
        return;
      }
      const deadline = Date.now() + step.retryForSeconds * 1000;
      for (;;) {
        try {
          await run();
          return;
        } catch (e) {
          if (Date.now() + 2000 > deadline) throw new BosunError(isBosunError(e) ? e.code : 'E_EXEC', `still failing after ${step.retryForSeconds}s: ${describeError(e)}`, isBosunError(e) ? e.details : {}, { cause: e });
          await new Promise((r) => setTimeout(r, 2000));
        }
      }
    }
    case 'write':
      await host.write(step.path, materialize(req, step.content), step.mode, { uid: step.owner, gid: step.group });
      return;
    case 'mkdir':
      await host.mkdir(step.path, step.mode, { uid: step.owner, gid: step.group });
      return;
    case 'remove':
      await host.remove(step.path);
      return;
    case 'unit':
      await host.systemctl(step.action, step.unit);
      return;
    case 'wait':
      await host.waitForPath(step.path, step.timeoutSeconds);
      return;
    case 'refresh': {
      const r = await host.refreshPackages(step.packages, step.deadlineSeconds, (a) => {
        if (a.failure) req.logger.warn({ attempt: a.attempt, exitCode: a.exitCode ?? null, kind: a.failure.kind }, `dnf attempt ${a.attempt} failed: ${a.failure.reason}${a.retryInMs !== undefined ? `; retrying in ${Math.round(a.retryInMs / 1000)}s` : ''}`);
      });
      req.logger.info({ updated: r.updated, unchanged: r.unchanged, attempts: r.attempts }, r.updated.length === 0 ? `packages already the newest: ${r.unchanged.join(', ') || '(none installed)'}` : `updated ${r.updated.map((u) => `${u.name} ${u.from ?? '(new)'} -> ${u.to}`).join(', ')}`);
      return;
    }
    case 'pending':
      throw new BosunError('E_NOT_IMPLEMENTED', `phase ${step.phase} is not implemented yet (issue #${step.issue})`);
    case 'restore': {
      // The restore code (and the S3 client and peer TLS under it) loads only when a restore runs.
      const { runRestoreStep } = await import('../phases/restore/run.js');
      await runRestoreStep(step, {
        redactor: host.redactor,
        logger: req.logger,
        stateDir: req.stateDir,
        root: host.root,
        ...(req.identity ? { identity: req.identity } : {}),
        ...(req.objectStorage ? { objectStorage: req.objectStorage } : {}),
      });
      return;
    }
  }
}

/** Splice opened secrets into content; each opened value is registered with the redactor first. */
function materialize(req: ApplyRequest, content: Content): Buffer {
  if (typeof content === 'string') return Buffer.from(content);
  return Buffer.concat(
    content.map((part) => {
      if (!isSecretRef(part)) return Buffer.from(part);
      if (!req.identity) throw new BosunError('E_SECRET', `${part.label} is sealed but this host has no identity to open it`);
      let value: Buffer;
      try {
        value = req.identity.open(part.secret.sealed);
      } catch (e) {
        throw new BosunError('E_SECRET', `${part.label}: ${describeError(e)}`);
      }
      const opened = new OpenedSecret(part.label, value);
      req.host.redactor.add(opened.reveal());
      return part.encoding === 'base64' ? Buffer.from(opened.reveal().toString('base64')) : opened.reveal();
    }),
  );
}
