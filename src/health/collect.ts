import type { HostProbe } from '../host/probe.js';
import type { NodeSpec } from '../spec/node-spec.js';
import type { PlanContext } from '../phases/types.js';
import { observeDisks } from '../phases/disks/observe.js';
import { disksHealth, volumeUsage } from '../phases/disks/health.js';
import { containerHealth } from '../phases/container/health.js';

/** One health round: what each built phase can say about the host, read-only. */
export async function collectHealth(spec: NodeSpec, probe: HostProbe, ctx: PlanContext): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  const problems: string[] = [];
  if (spec.disks) {
    try {
      const obs = await observeDisks(spec, probe, ctx);
      const h = disksHealth(spec, obs, await volumeUsage(probe, spec.disks.mount.path));
      out.disks = h;
      problems.push(...h.problems);
    } catch (e) {
      problems.push(`disks: cannot observe (${e instanceof Error ? e.message : String(e)})`);
    }
  }
  if (spec.container) {
    try {
      const h = await containerHealth(spec, probe);
      out.container = h;
      problems.push(...h.problems);
    } catch (e) {
      problems.push(`container: cannot observe (${e instanceof Error ? e.message : String(e)})`);
    }
  }
  out.ok = problems.length === 0;
  out.problems = problems;
  return out;
}
