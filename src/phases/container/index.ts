import { BosunError } from '../../errors.js';
import type { Step } from '../../engine/step.js';
import type { HostProbe } from '../../host/probe.js';
import type { ContainerSpec, NodeSpec } from '../../spec/node-spec.js';
import type { Phase, PlanContext } from '../types.js';
import {
  configDir,
  dropInDir,
  limitProperties,
  limitsDropIn,
  machineArgv,
  machineUnit,
  MANIFEST,
  nspawnPath,
  renderConfig,
  renderLimitsDropIn,
  renderManifest,
  renderNspawn,
  renderStartDropIn,
  startDropIn,
} from './render.js';

/**
 * The container phase: the customer's service in a locked-down
 * systemd-nspawn machine (user namespace, read-only image, dropped
 * capabilities, private network with only the spec's ports published), with
 * resource limits and config files from the spec. It changes only what
 * differs, and each kind of change costs only what it must:
 *
 *   .nspawn or how the machine starts   -> restart the machine
 *   resource limits                     -> set live (set-property --runtime), no restart
 *   config files                        -> reload (or restart) the service inside, not the machine
 *   nothing                             -> nothing
 */

export interface ObservedContainer {
  imageExists: boolean;
  nspawn?: string;
  startDropIn?: string;
  limitsDropIn?: string;
  configDirExists: boolean;
  /** current content of each file the spec names, by path in the config directory */
  config: Record<string, string | undefined>;
  /** the files bosun wrote on an earlier apply (the manifest) */
  manifest?: string;
  unit: { enabled: string; active: string };
  machinesTargetEnabled: boolean;
}

/** What a change costs, as `plan` decided it (exported for tests and `bosun plan` readers). */
export type ContainerAction = 'start' | 'restart' | 'live-limits' | 'reload' | 'restart-service' | 'none';

async function observe(spec: NodeSpec, probe: HostProbe, ctx: PlanContext): Promise<ObservedContainer> {
  const c = spec.container!;
  const text = async (path: string) => (await probe.readFile(path))?.toString('utf8');
  if (probe.blank) {
    return { imageExists: true, configDirExists: false, config: {}, unit: { enabled: 'disabled', active: 'inactive' }, machinesTargetEnabled: false };
  }
  const config: Record<string, string | undefined> = {};
  for (const f of Object.keys(c.config?.files ?? {})) config[f] = await text(`${configDir(c)}/${f}`);
  return {
    imageExists: (await probe.stat(`${c.image}/usr`)) !== undefined,
    nspawn: await text(nspawnPath(ctx.distro.nspawnDir, c)),
    startDropIn: await text(startDropIn(c)),
    limitsDropIn: await text(limitsDropIn(c)),
    configDirExists: (await probe.stat(configDir(c))) !== undefined,
    config,
    manifest: await text(`${configDir(c)}/${MANIFEST}`),
    unit: await probe.unitState(machineUnit(c)),
    machinesTargetEnabled: (await probe.unitState('machines.target')).enabled === 'enabled',
  };
}

/** The command that says whether the service is healthy, run on the host. */
export function healthArgv(c: ContainerSpec): string[] {
  return machineArgv(c, c.service.health ?? ['systemctl', 'is-active', '--quiet', c.service.unit]);
}

function plan(spec: NodeSpec, obs: ObservedContainer, ctx: PlanContext): Step[] {
  return planContainer(spec, obs, ctx).steps;
}

export function planContainer(spec: NodeSpec, obs: ObservedContainer, ctx: PlanContext): { steps: Step[]; action: ContainerAction } {
  const c = spec.container!;
  const unit = machineUnit(c);
  if (!obs.imageExists) {
    throw new BosunError('E_REFUSED', `container: the image ${c.image} is not on this host (no ${c.image}/usr); nothing was changed`, { image: c.image });
  }
  const steps: Step[] = [];
  type Distribute<T> = T extends Step ? Omit<T, 'phase'> : never;
  const step = (s: Distribute<Step>) => steps.push({ ...s, phase: 'container' });

  // 1. Config files, written atomically into the directory the machine sees read-only.
  const files = renderConfig(c);
  let configChanged = false;
  if (c.config) {
    const dir = configDir(c);
    if (!obs.configDirExists) step({ kind: 'mkdir', path: dir, mode: 0o755, why: `the config directory of ${c.name}, bound read-only at ${c.config.mountPoint}` });
    for (const [f, content] of Object.entries(files)) {
      if (obs.config[f] === content) continue;
      step({ kind: 'write', path: `${dir}/${f}`, mode: 0o644, content, why: `${obs.config[f] === undefined ? 'new' : 'changed'} config file ${f} (platform settings, user overrides merged)` });
      configChanged = true;
    }
    const before = (obs.manifest ?? '').split('\n').filter((l) => l !== '');
    for (const f of before.filter((f) => !(f in files)).sort()) {
      step({ kind: 'remove', path: `${dir}/${f}`, why: `config file ${f} is no longer in the spec` });
      configChanged = true;
    }
    const manifest = renderManifest(files);
    if (obs.manifest !== manifest) step({ kind: 'write', path: `${dir}/${MANIFEST}`, mode: 0o644, content: manifest, why: 'remember which config files bosun wrote' });
  }

  // 2. The machine's settings and how it starts: a change means a restart.
  let restartNeeded = false;
  const nspawn = renderNspawn(spec);
  if (obs.nspawn !== nspawn) {
    step({ kind: 'write', path: nspawnPath(ctx.distro.nspawnDir, c), mode: 0o644, content: nspawn, why: `machine ${c.name}: read-only image, private users, dropped capabilities, ${c.network.mode} network${c.network.ports.length ? ` publishing ${c.network.ports.map((p) => `${p.protocol}/${p.host}`).join(' ')}` : ''}` });
    restartNeeded = true;
  }
  let unitFilesChanged = false;
  const start = renderStartDropIn(spec);
  if (obs.startDropIn !== start) {
    step({ kind: 'write', path: startDropIn(c), mode: 0o644, content: start, why: `start machine ${c.name} from ${c.image}` });
    restartNeeded = true;
    unitFilesChanged = true;
  }
  const limits = renderLimitsDropIn(spec);
  const limitsChanged = obs.limitsDropIn !== limits;
  if (limitsChanged) {
    step({ kind: 'write', path: limitsDropIn(c), mode: 0o644, content: limits, why: `resource limits of machine ${c.name}` });
    unitFilesChanged = true;
  }
  if (unitFilesChanged) step({ kind: 'unit', action: 'daemon-reload', why: `systemd must read the drop-ins in ${dropInDir(c)}` });

  // 3. Enabled at boot: machines.target pulls every enabled machine.
  if (!obs.machinesTargetEnabled) step({ kind: 'unit', action: 'enable', unit: 'machines.target', why: 'start enabled machines at boot' });
  if (obs.unit.enabled !== 'enabled') step({ kind: 'unit', action: 'enable', unit, why: `start machine ${c.name} at boot` });

  // 4. The one action the change needs.
  const running = obs.unit.active === 'active' || obs.unit.active === 'activating' || obs.unit.active === 'reloading';
  let action: ContainerAction = 'none';
  if (!running) {
    action = 'start';
    step({ kind: 'unit', action: 'start', unit, why: `boot machine ${c.name}` });
  } else if (restartNeeded) {
    action = 'restart';
    step({ kind: 'unit', action: 'restart', unit, why: `machine ${c.name}'s settings changed; they apply only at its start` });
  } else {
    if (limitsChanged) {
      action = 'live-limits';
      step({
        kind: 'exec',
        argv: ['systemctl', 'set-property', '--runtime', unit, ...limitProperties(c).map(([k, v]) => `${k}=${v}`)],
        why: `apply the new limits to the running machine ${c.name} without a restart`,
      });
    }
    if (configChanged) {
      action = c.service.onConfigChange === 'reload' ? 'reload' : 'restart-service';
      step({
        kind: 'exec',
        argv: machineArgv(c, ['systemctl', c.service.onConfigChange === 'reload' ? 'reload' : 'restart', c.service.unit]),
        why: `${c.service.unit} in ${c.name} must read its changed config (${c.service.onConfigChange}; the machine keeps running)`,
      });
    }
  }

  // 5. Done means healthy: after any action, wait for the service's own check.
  if (steps.some((s) => s.kind === 'unit' && (s.action === 'start' || s.action === 'restart')) || action === 'reload' || action === 'restart-service') {
    step({ kind: 'exec', argv: healthArgv(c), timeoutSeconds: 30, retryForSeconds: c.service.startTimeoutSeconds, why: `${c.service.unit} in ${c.name} answers its health check` });
  }
  return { steps, action };
}

export const containerPhase: Phase<ObservedContainer> = {
  name: 'container',
  stage: 'container',
  // The data volume's host path is bound into the machine: it belongs to this phase's part of the spec too.
  section: (s) => s.container && { ...s.container, dataVolume: s.disks?.mount.path },
  observe,
  plan,
};
