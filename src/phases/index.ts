import type { NodeSpec } from '../spec/node-spec.js';
import type { HostProbe } from '../host/probe.js';
import type { Step } from '../engine/step.js';
import { packagesPhase } from './packages.js';
import { auxiliaryPhase } from './auxiliary.js';
import { containerPhase, disksPhase, networkPhase, restorePhase } from './pending.js';
import type { Phase, PlanContext } from './types.js';

/** Boot order: each phase may rely on every phase before it. */
export const PHASES: readonly Phase<never>[] = [packagesPhase, disksPhase, networkPhase, containerPhase, restorePhase, auxiliaryPhase] as Phase<never>[];

/** Observe and plan every phase, in order. */
export async function planNode(spec: NodeSpec, probe: HostProbe, ctx: PlanContext): Promise<Step[]> {
  const steps: Step[] = [];
  for (const phase of PHASES as readonly Phase<unknown>[]) {
    if (phase.section(spec) === undefined) continue;
    const observed = await phase.observe(spec, probe);
    steps.push(...phase.plan(spec, observed, ctx));
  }
  return steps;
}

export type { Phase, PlanContext } from './types.js';
