import type { HostProbe } from '../host/probe.js';
import { withUnitStates } from '../host/unit-states.js';
import type { NodeSpec } from '../spec/node-spec.js';
import { observeVolume } from '../phases/disks/observe.js';
import { disksHealth } from '../phases/disks/health.js';
import { backendFor, networkHealth } from '../phases/network/index.js';
import { POLICY_UNIT } from '../phases/network/policy.js';
import { containerHealth } from '../phases/container/health.js';
import { machineUnit } from '../phases/container/render.js';

/** Every unit a health round of spec asks systemd about, so that one `systemctl show` answers them all. */
export function healthUnits(spec: NodeSpec): string[] {
  return [
    ...(spec.network?.ipsec ? [backendFor(spec.network.ipsec).unit, POLICY_UNIT] : []),
    ...spec.auxiliary.map((agent) => agent.unit),
    ...(spec.container ? [machineUnit(spec.container)] : []),
  ];
}

/**
 * One health round: what each built phase can say about the host, read-only. It runs every interval on
 * every host, so it asks only what health needs (no signatures, no files that only planning reads) and
 * asks systemd once for all units: ~2.5 s of a small TCG guest's CPU per round instead of ~6.7 s.
 */
export async function collectHealth(spec: NodeSpec, hostProbe: HostProbe): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  const problems: string[] = [];
  // A retired node has nothing to keep healthy: its lifecycle (in the status) says where it stands.
  if (spec.decommission) return { decommission: true, ok: true, problems };
  const probe = await withUnitStates(hostProbe, healthUnits(spec));
  if (spec.disks) {
    try {
      const health = disksHealth(spec, await observeVolume(probe), await probe.usage(spec.disks.mount.path));
      out.disks = health;
      problems.push(...health.problems);
    } catch (e) {
      problems.push(`disks: cannot observe (${e instanceof Error ? e.message : String(e)})`);
    }
  }
  if (spec.network?.ipsec) {
    try {
      const health = await networkHealth(spec, probe);
      out.network = health;
      problems.push(...health.problems);
    } catch (e) {
      problems.push(`network: cannot observe (${e instanceof Error ? e.message : String(e)})`);
    }
  }
  if (spec.auxiliary.length > 0) {
    // Each auxiliary agent's unit as systemd sees it; an enabled one that is not running is a problem.
    const agents: { name: string; unit: string; enabled: string; active: string }[] = [];
    for (const agent of spec.auxiliary) {
      const state = await probe.unitState(agent.unit).catch(() => ({ enabled: 'unknown', active: 'unknown' }));
      agents.push({ name: agent.name, unit: agent.unit, enabled: state.enabled, active: state.active });
      if (agent.enabled && state.active !== 'active') problems.push(`auxiliary: ${agent.name} (${agent.unit}) is ${state.active}, expected active`);
      if (!agent.enabled && state.active === 'active') problems.push(`auxiliary: ${agent.name} (${agent.unit}) is running but disabled in the spec`);
    }
    out.auxiliary = agents;
  }
  if (spec.container) {
    try {
      const health = await containerHealth(spec, probe);
      out.container = health;
      problems.push(...health.problems);
    } catch (e) {
      problems.push(`container: cannot observe (${e instanceof Error ? e.message : String(e)})`);
    }
  }
  out.ok = problems.length === 0;
  out.problems = problems;
  return out;
}
