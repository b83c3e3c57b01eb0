import type { Distro } from '../host/distro.js';
import type { HostProbe } from '../host/probe.js';
import type { NodeSpec } from '../spec/node-spec.js';
import type { PhaseName, StageId, Step } from '../engine/step.js';

export interface PlanContext {
  distro: Distro;
}

/**
 * A phase observes the host (read-only), then plans from the spec and what it
 * saw. `plan` is pure: same spec, same observation, same steps. That is what
 * makes `bosun plan` honest and the planners testable without a host.
 */
export interface Phase<Observed = unknown> {
  readonly name: PhaseName;
  /** the engine's unit of planning and journalling; the phase name unless the phase has stages */
  readonly stage: StageId;
  /** the part of the spec this phase owns; a spec change outside it never re-runs the phase */
  section(spec: NodeSpec): unknown;
  observe(spec: NodeSpec, probe: HostProbe, ctx: PlanContext): Promise<Observed>;
  plan(spec: NodeSpec, observed: Observed, ctx: PlanContext): Step[];
}
