import type { HostProbe } from '../../host/probe.js';
import type { NodeSpec } from '../../spec/node-spec.js';
import { healthArgv } from './index.js';
import { machineArgv, machineUnit } from './render.js';

/** The service container's health, as status reports carry it. */
export interface ContainerHealth {
  ok: boolean;
  machine: string;
  /** systemd-nspawn@<name>.service on the host: active, failed, ... */
  unit: string;
  /** machined's view: running, degraded (some unit inside failed), ... */
  state?: string;
  /** the service unit inside the machine */
  service?: string;
  /** the service's own health check (or, without one, whether its unit is active) */
  healthy: boolean;
  problems: string[];
}

export async function containerHealth(spec: NodeSpec, probe: HostProbe): Promise<ContainerHealth> {
  const c = spec.container!;
  const problems: string[] = [];
  const unit = (await probe.unitState(machineUnit(c))).active;
  if (unit !== 'active') {
    problems.push(`machine ${c.name} is not running (${machineUnit(c)} is ${unit})`);
    return { ok: false, machine: c.name, unit, healthy: false, problems };
  }
  const st = await probe.run(['machinectl', 'show', c.name, '--property=State', '--value']);
  const state = st.exitCode === 0 ? st.stdout.trim() : undefined;
  const svc = await probe.run(machineArgv(c, ['systemctl', 'is-active', c.service.unit]));
  const service = svc.stdout.trim().split('\n')[0] || 'unknown';
  if (service !== 'active') problems.push(`${c.service.unit} in machine ${c.name} is ${service}`);
  const healthy = (await probe.run(healthArgv(c))).exitCode === 0;
  if (!healthy && service === 'active') problems.push(`${c.service.unit} in machine ${c.name} fails its health check`);
  return { ok: problems.length === 0, machine: c.name, unit, state, service, healthy, problems };
}
