import type { NodeSpec } from '../spec/node-spec.js';
import type { HostProbe } from '../host/probe.js';
import { canonicalJson, type StageId, type Step } from '../engine/step.js';
import { packagesPhase } from './packages.js';
import { auxiliaryPhase } from './auxiliary.js';
import { restorePhase } from './pending.js';
import { containerPhase } from './container/index.js';
import { networkPhase } from './network/index.js';
import { diskStages } from './disks/index.js';
import type { Phase, PlanContext } from './types.js';

/** Boot order: each phase may rely on every phase before it. */
export const PHASES: readonly Phase<unknown>[] = [packagesPhase, ...diskStages, networkPhase, containerPhase, restorePhase, auxiliaryPhase] as Phase<unknown>[];

/** The stages a spec asks for, in boot order. */
export function phasesFor(spec: NodeSpec): StageId[] {
  return PHASES.filter((p) => p.section(spec) !== undefined).map((p) => p.stage);
}

/** Observe the host for one stage and plan it. */
export async function planPhase(spec: NodeSpec, stage: StageId, probe: HostProbe, ctx: PlanContext): Promise<Step[]> {
  const phase = PHASES.find((p) => p.stage === stage);
  if (!phase || phase.section(spec) === undefined) return [];
  return phase.plan(spec, await phase.observe(spec, probe, ctx), ctx);
}

/** Observe and plan every phase, in order, as `bosun plan` shows it. */
export async function planNode(spec: NodeSpec, probe: HostProbe, ctx: PlanContext): Promise<Step[]> {
  const steps: Step[] = [];
  for (const name of phasesFor(spec)) steps.push(...(await planPhase(spec, name, probe, ctx)));
  return steps;
}

export type { Phase, PlanContext } from './types.js';

/** Stages whose part of the spec differs between two specs: the only ones a change re-runs. */
export function changedStages(next: NodeSpec, previous: NodeSpec | undefined): StageId[] {
  if (!previous) return phasesFor(next);
  return PHASES.filter((p) => p.section(next) !== undefined && canonicalJson(p.section(next)) !== canonicalJson(p.section(previous))).map((p) => p.stage);
}
