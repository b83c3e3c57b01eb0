import type { NodeSpec } from '../spec/node-spec.js';
import type { HostProbe } from '../host/probe.js';
import { canonicalJson } from '../canonical-json.js';
import type { Planner } from '../engine/apply.js';
import type { PhaseName, StageId, Step } from '../engine/step.js';
import { packagesPhase } from './packages.js';
import { auxiliaryPhase } from './auxiliary.js';
import { restorePhase } from './restore/index.js';
import { containerPhase } from './container/index.js';
import { networkPhase } from './network/index.js';
import { diskStages } from './disks/index.js';
import { decommissionPhase } from './decommission.js';
import type { Phase, PlanContext } from './types.js';

/**
 * Boot order: each phase may rely on every phase before it. restore comes
 * before container: the service must find its data in place when it first
 * starts.
 */
export const PHASES: readonly Phase<unknown>[] = [
  packagesPhase,
  ...diskStages,
  networkPhase,
  restorePhase,
  containerPhase,
  auxiliaryPhase,
  decommissionPhase,
] as Phase<unknown>[];

/**
 * Phases that start units ordered after bosun.service: every systemd-nspawn@
 * machine is (units/bosun-nspawn.conf), and an auxiliary unit may be ordered
 * after the machine. While bosun.service is still starting (Type=notify,
 * before READY=1) a start of such a unit waits for bosun, and bosun would wait
 * for the start: the daemon sends READY=1 before the first of these runs.
 */
export const SERVICE_PHASES: readonly PhaseName[] = ['container', 'auxiliary'];

/** Stage ids are a phase's name, or "phase/layer" for a phase split into stages. */
export function startsServices(stage: StageId): boolean {
  return (SERVICE_PHASES as readonly string[]).includes(stage.split('/')[0]!);
}

/** The stages a spec asks for, in boot order. A decommission spec asks only for the decommission: nothing is built. */
export function phasesFor(spec: NodeSpec): StageId[] {
  if (spec.decommission) return [decommissionPhase.stage];
  return PHASES.filter((p) => p.section(spec) !== undefined).map((p) => p.stage);
}

/**
 * Lets consecutive stages of one phase (disks: raid, luks, filesystem, mount)
 * share an observation while nothing has changed the host in between. One per
 * apply (or `bosun plan`). Whoever runs steps must call `clear()` first: the
 * apply engine does before every stage with steps. So the apply's first pass,
 * which plans every stage before anything runs, observes the disks once instead
 * of once per stage, and on a host that is already built the stages with
 * nothing to do share one observation as well.
 */
export class ObservationReuse {
  #last: { phase: string; spec: NodeSpec; observed: unknown } | undefined;

  /** The kept observation of this phase (its stages share one observer) for this very spec, if any. */
  get(phase: string, spec: NodeSpec): { observed: unknown } | undefined {
    const l = this.#last;
    return l && l.phase === phase && l.spec === spec ? { observed: l.observed } : undefined;
  }

  /** The host is about to change (steps run): nothing observed so far holds. */
  clear(): void {
    this.#last = undefined;
  }

  /** After planning a stage: its observation serves the next stage of the same phase until `clear()`. */
  planned(phase: string, spec: NodeSpec, observed: unknown): void {
    this.#last = { phase, spec, observed };
  }
}

/** Observe the host for one stage and plan it. */
export async function planPhase(spec: NodeSpec, stage: StageId, probe: HostProbe, ctx: PlanContext, reuse?: ObservationReuse): Promise<Step[]> {
  const phase = PHASES.find((p) => p.stage === stage);
  if (!phase || phase.section(spec) === undefined) return [];
  if (spec.decommission && phase !== decommissionPhase) return [];
  const observed = reuse?.get(phase.name, spec)?.observed ?? (await phase.observe(spec, probe, ctx));
  const steps = phase.plan(spec, observed, ctx);
  reuse?.planned(phase.name, spec, observed);
  return steps;
}

/**
 * The engine's planner over the phase modules: observes through `probe`,
 * shares observations between stages until the host changes. Given the spec
 * applied before (`previous`), only the stages whose section changed run.
 */
export function phasePlanner(probe: HostProbe, ctx: PlanContext, previous?: NodeSpec): Planner {
  const reuse = new ObservationReuse();
  return {
    phases: (spec) => changedStages(spec, previous),
    plan: (spec, stage) => planPhase(spec, stage, probe, ctx, reuse),
    changed: () => reuse.clear(),
  };
}

/** Observe and plan every phase, in order, as `bosun plan` shows it. */
export async function planNode(spec: NodeSpec, probe: HostProbe, ctx: PlanContext): Promise<Step[]> {
  const steps: Step[] = [];
  const reuse = new ObservationReuse();
  for (const name of phasesFor(spec)) steps.push(...(await planPhase(spec, name, probe, ctx, reuse)));
  return steps;
}

export type { Phase, PlanContext } from './types.js';

/** Stages whose part of the spec differs between two specs: the only ones a change re-runs. */
export function changedStages(next: NodeSpec, previous: NodeSpec | undefined): StageId[] {
  if (!previous || next.decommission) return phasesFor(next);
  return PHASES.filter((p) => p.section(next) !== undefined && canonicalJson(p.section(next)) !== canonicalJson(p.section(previous))).map((p) => p.stage);
}
