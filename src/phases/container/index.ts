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
/** The service's health check as run inside the machine: the spec's command, or whether its unit is active. */
export function healthCommand(c: ContainerSpec): string[] {
  return c.service.health ?? ['systemctl', 'is-active', '--quiet', c.service.unit];
}

export function healthArgv(c: ContainerSpec): string[] {
  return machineArgv(c, healthCommand(c));
}

function plan(spec: NodeSpec, obs: ObservedContainer, ctx: PlanContext): Step[] {
  return planContainer(spec, obs, ctx).steps;
}

export function planContainer(spec: NodeSpec, obs: ObservedContainer, ctx: PlanContext): { steps: Step[]; action: ContainerAction } {
  const container = spec.container!;
  const unit = machineUnit(container);
  if (!obs.imageExists) {
    throw new BosunError('E_REFUSED', `container: the image ${container.image} is not on this host (no ${container.image}/usr); nothing was changed`, {
      image: container.image,
    });
  }
  const steps: Step[] = [];
  type Distribute<T> = T extends Step ? Omit<T, 'phase'> : never;
  const step = (s: Distribute<Step>) => steps.push({ ...s, phase: 'container' });

  // 1. Config files, written atomically into the directory the machine sees read-only.
  const files = renderConfig(container);
  let configChanged = false;
  if (container.config) {
    const dir = configDir(container);
    if (!obs.configDirExists)
      step({ kind: 'mkdir', path: dir, mode: 0o755, why: `the config directory of ${container.name}, bound read-only at ${container.config.mountPoint}` });
    for (const [fileName, content] of Object.entries(files)) {
      if (obs.config[fileName] === content) continue;
      step({
        kind: 'write',
        path: `${dir}/${fileName}`,
        mode: 0o644,
        content,
        why: `${obs.config[fileName] === undefined ? 'new' : 'changed'} config file ${fileName} (platform settings, user overrides merged)`,
      });
      configChanged = true;
    }
    const before = (obs.manifest ?? '').split('\n').filter((l) => l !== '');
    for (const fileName of before.filter((f) => !(f in files)).sort()) {
      step({ kind: 'remove', path: `${dir}/${fileName}`, why: `config file ${fileName} is no longer in the spec` });
      configChanged = true;
    }
    const manifest = renderManifest(files);
    if (obs.manifest !== manifest)
      step({ kind: 'write', path: `${dir}/${MANIFEST}`, mode: 0o644, content: manifest, why: 'remember which config files bosun wrote' });
  }

  // 2. The machine's settings and how it starts: a change means a restart.
  let restartNeeded = false;
  const nspawn = renderNspawn(spec);
  if (obs.nspawn !== nspawn) {
    step({
      kind: 'write',
      path: nspawnPath(ctx.distro.nspawnDir, container),
      mode: 0o644,
      content: nspawn,
      why: `machine ${container.name}: read-only image, private users, dropped capabilities, ${container.network.mode} network${container.network.ports.length ? ` publishing ${container.network.ports.map((p) => `${p.protocol}/${p.host}`).join(' ')}` : ''}`,
    });
    restartNeeded = true;
  }
  let unitFilesChanged = false;
  const start = renderStartDropIn(spec);
  if (obs.startDropIn !== start) {
    step({ kind: 'write', path: startDropIn(container), mode: 0o644, content: start, why: `start machine ${container.name} from ${container.image}` });
    restartNeeded = true;
    unitFilesChanged = true;
  }
  const limits = renderLimitsDropIn(spec);
  const limitsChanged = obs.limitsDropIn !== limits;
  if (limitsChanged) {
    step({ kind: 'write', path: limitsDropIn(container), mode: 0o644, content: limits, why: `resource limits of machine ${container.name}` });
    unitFilesChanged = true;
  }
  if (unitFilesChanged) step({ kind: 'unit', action: 'daemon-reload', why: `systemd must read the drop-ins in ${dropInDir(container)}` });

  // 3. Enabled at boot: machines.target pulls every enabled machine.
  if (!obs.machinesTargetEnabled) step({ kind: 'unit', action: 'enable', unit: 'machines.target', why: 'start enabled machines at boot' });
  if (obs.unit.enabled !== 'enabled') step({ kind: 'unit', action: 'enable', unit, why: `start machine ${container.name} at boot` });

  // 4. The one action the change needs.
  const running = obs.unit.active === 'active' || obs.unit.active === 'activating' || obs.unit.active === 'reloading';
  let action: ContainerAction = 'none';
  if (!running) {
    action = 'start';
    step({ kind: 'unit', action: 'start', unit, why: `boot machine ${container.name}` });
  } else if (restartNeeded) {
    action = 'restart';
    step({ kind: 'unit', action: 'restart', unit, why: `machine ${container.name}'s settings changed; they apply only at its start` });
  } else {
    if (limitsChanged) {
      action = 'live-limits';
      step({
        kind: 'exec',
        argv: ['systemctl', 'set-property', '--runtime', unit, ...limitProperties(container).map(([k, v]) => `${k}=${v}`)],
        why: `apply the new limits to the running machine ${container.name} without a restart`,
      });
    }
    if (configChanged) {
      action = container.service.onConfigChange === 'reload' ? 'reload' : 'restart-service';
      step({
        kind: 'exec',
        argv: machineArgv(container, ['systemctl', container.service.onConfigChange === 'reload' ? 'reload' : 'restart', container.service.unit]),
        why: `${container.service.unit} in ${container.name} must read its changed config (${container.service.onConfigChange}; the machine keeps running)`,
      });
    }
  }

  // 5. Done means healthy: after any action, wait for the service's own check.
  if (steps.some((s) => s.kind === 'unit' && (s.action === 'start' || s.action === 'restart')) || action === 'reload' || action === 'restart-service') {
    step({
      kind: 'exec',
      argv: healthArgv(container),
      timeoutSeconds: 30,
      retryForSeconds: container.service.startTimeoutSeconds,
      why: `${container.service.unit} in ${container.name} answers its health check`,
    });
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
