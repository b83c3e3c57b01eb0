import { createHash } from 'node:crypto';
import { BosunError, describeError, isBosunError } from '../errors.js';
import type { Host } from '../host/index.js';
import type { HostProbe } from '../host/probe.js';
import type { HostIdentity } from '../identity/host-identity.js';
import type { Logger } from '../log.js';
import { planNode, type PlanContext } from '../phases/index.js';
import type { NodeSpec } from '../spec/node-spec.js';
import { Journal, type AppliedRecord, type JournalState } from './journal.js';
import { acquireLock } from './lock.js';
import { OpenedSecret } from './redact.js';
import { describeStep } from './render.js';
import { canonicalJson, isSecretRef, planDigest, type Content, type Step } from './step.js';

export interface ApplyRequest {
  spec: NodeSpec;
  stateDir: string;
  host: Host;
  probe: HostProbe;
  ctx: PlanContext;
  /** opens sealed secrets; needed only when a step holds one */
  identity?: HostIdentity;
  logger: Logger;
  /** plan from a given list of steps instead of the phases (tests of the engine itself) */
  planner?: (spec: NodeSpec) => Promise<Step[]>;
}

export interface ApplyOutcome {
  result: 'applied' | 'unchanged';
  specVersion: number;
  steps: number;
  /** set when this run continued a plan an earlier run did not finish */
  resumedAt?: number;
  record: AppliedRecord;
}

export function specDigest(spec: NodeSpec): string {
  return createHash('sha256').update(canonicalJson(spec)).digest('hex').slice(0, 16);
}

/**
 * Apply a spec: plan (or resume the unfinished plan for this same spec), then
 * run the steps in order through the host layer, journalling after each. The
 * last good state is replaced only when every step succeeded.
 */
export async function applySpec(req: ApplyRequest): Promise<ApplyOutcome> {
  const release = await acquireLock(req.stateDir);
  try {
    return await applyLocked(req);
  } finally {
    await release();
  }
}

async function applyLocked(req: ApplyRequest): Promise<ApplyOutcome> {
  const { spec, logger } = req;
  const journal = new Journal(req.stateDir);
  const digest = specDigest(spec);
  const log = logger.child({ specVersion: spec.version });

  const applied = await journal.readApplied();
  if (applied && spec.version < applied.specVersion) {
    throw new BosunError('E_STALE_VERSION', `spec version ${spec.version} is older than version ${applied.specVersion}, already applied; versions only grow`, { version: spec.version, applied: applied.specVersion });
  }
  if (applied && spec.version === applied.specVersion && applied.specDigest !== digest) {
    throw new BosunError('E_STALE_VERSION', `spec version ${spec.version} was already applied with different content; a changed spec needs a new version`, { version: spec.version });
  }

  let state = await journal.read();
  let resumedAt: number | undefined;
  if (state && state.specDigest === digest) {
    state.runs += 1;
    resumedAt = state.next;
    log.warn({ step: state.next + 1, steps: state.steps.length, interrupted: state.inFlight !== undefined }, `resuming the unfinished apply of version ${spec.version} at step ${state.next + 1} of ${state.steps.length}${state.inFlight !== undefined ? ' (it was interrupted while running; it runs again)' : ''}`);
  } else {
    if (state) {
      log.warn({ abandoned: state.specVersion, step: state.next + 1 }, `abandoning the unfinished apply of version ${state.specVersion} at step ${state.next + 1} of ${state.steps.length}; planning version ${spec.version} afresh from the host as it is now`);
      await journal.discard();
    }
    const steps = await (req.planner ?? ((s) => planNode(s, req.probe, req.ctx)))(spec);
    const pending = steps.filter((s) => s.kind === 'pending');
    if (pending.length > 0) {
      const phases = [...new Set(pending.map((s) => s.phase))];
      throw new BosunError('E_NOT_IMPLEMENTED', `the plan needs phases bosun cannot run yet: ${phases.join(', ')}; nothing was changed (see \`bosun plan\`)`, { phases });
    }
    const now = new Date().toISOString();
    state = { format: 1, specVersion: spec.version, specDigest: digest, planDigest: planDigest(steps), steps, next: 0, runs: 1, startedAt: now, updatedAt: now };
    if (steps.length === 0) {
      const record = await journal.complete(state, spec);
      log.info({ steps: 0 }, `version ${spec.version}: the host already matches; nothing to do`);
      return { result: 'unchanged', specVersion: spec.version, steps: 0, record };
    }
    await journal.write(state);
    log.info({ steps: steps.length, plan: state.planDigest }, `applying version ${spec.version}: ${steps.length} steps`);
  }

  await runSteps(req, journal, state, log);
  const record = await journal.complete(state, spec);
  log.info({ steps: state.steps.length }, `version ${spec.version} applied`);
  return { result: 'applied', specVersion: spec.version, steps: state.steps.length, resumedAt, record };
}

async function runSteps(req: ApplyRequest, journal: Journal, state: JournalState, log: Logger): Promise<void> {
  const total = state.steps.length;
  for (let i = state.next; i < total; i++) {
    const step = state.steps[i]!;
    const slog = log.child({ phase: step.phase, step: i + 1 });
    state.inFlight = i;
    await journal.write(state);
    slog.info(`step ${i + 1}/${total}: ${describeStep(step)}`);
    try {
      await runStep(req, step);
    } catch (e) {
      const err = isBosunError(e) ? e : new BosunError('E_EXEC', describeError(e), {}, { cause: e });
      const message = req.host.redactor.redact(err.message);
      state.lastError = { step: i, code: err.code, message, at: new Date().toISOString() };
      await journal.write(state);
      slog.error({ errorCode: err.code }, `step ${i + 1}/${total} failed: ${message}`);
      throw new BosunError(err.code, `step ${i + 1}/${total} (${step.phase}: ${step.why}) failed: ${message}`, { ...err.details, step: i + 1, phase: step.phase });
    }
    state.next = i + 1;
    delete state.inFlight;
    delete state.lastError;
    await journal.write(state);
  }
}

async function runStep(req: ApplyRequest, step: Step): Promise<void> {
  const { host } = req;
  switch (step.kind) {
    case 'exec':
      await host.exec(step.argv, { input: step.stdin === undefined ? undefined : materialize(req, step.stdin), timeoutSeconds: step.timeoutSeconds, okExitCodes: step.okExitCodes });
      return;
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
    case 'pending':
      throw new BosunError('E_NOT_IMPLEMENTED', `phase ${step.phase} is not implemented yet (issue #${step.issue})`);
  }
}

/** Splice opened secrets into content; each opened value is registered with the redactor first. */
function materialize(req: ApplyRequest, content: Content): Buffer {
  if (typeof content === 'string') return Buffer.from(content);
  return Buffer.concat(
    content.map((part) => {
      if (!isSecretRef(part)) return Buffer.from(part);
      if (!req.identity) throw new BosunError('E_SECRET', `${part.label} is sealed but this host has no identity to open it`);
      const opened = new OpenedSecret(part.label, req.identity.open(part.secret.sealed));
      req.host.redactor.add(opened.reveal());
      return opened.reveal();
    }),
  );
}
