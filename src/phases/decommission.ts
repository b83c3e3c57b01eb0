import { BosunError } from '../errors.js';
import type { ApplyHooks } from '../engine/apply.js';
import type { Step } from '../engine/step.js';
import type { HostProbe } from '../host/probe.js';
import type { NodeSpec } from '../spec/node-spec.js';
import {
  assertNotDecommissioned,
  markDecommissioning,
  readDecommissionRecord,
  writeDecommissionRecord,
  type DecommissionRecord,
} from '../state/decommission.js';
import { machineUnit } from './container/render.js';
import { computeLayers } from './disks/layers.js';
import { mountUnitName, mountUnitPath } from './disks/mount.js';
import { observeDisks } from './disks/observe.js';
import { backendFor, observeNetwork } from './network/index.js';
import { POLICY_FILE, POLICY_TABLE, POLICY_UNIT, POLICY_UNIT_FILE } from './network/policy.js';
import type { IpsecBackend } from './network/backend.js';
import type { Phase, PlanContext } from './types.js';

/**
 * The decommission phase: retire this node for good. It tears down what the
 * other sections of the spec name and builds nothing:
 *
 *   1. stop and disable the service's machine and the auxiliary agents;
 *   2. leave the IPsec mesh: unload and delete bosun's conns (only files that
 *      carry bosun's header), drop bosun's policy table and its unit;
 *   3. unmount the data volume, close LUKS, destroy every keyslot
 *      (`cryptsetup luksErase`): without a keyslot the volume key is gone and
 *      the disks are unreadable, whatever copy of the passphrase survives;
 *      remove key material bosun keeps on the host (a key file, the peer
 *      snapshot spool).
 *
 * Every step is planned from an observation, so a re-run after a crash does
 * only what is left. The md array is left assembled: it holds only ciphertext
 * under a header with no keyslot, stopping it protects nothing, and keeping it
 * lets anyone re-check the evidence (`cryptsetup luksDump /dev/md/<name>`).
 *
 * When the engine has run this phase, `recordDecommission` verifies the
 * result and persists it in the state dir; from then on the host refuses any
 * spec without `decommission` (`assertNotDecommissioned`, src/state/decommission.ts).
 */

export interface ObservedDecommission {
  container?: { unit: string; enabled: string; active: string };
  auxiliary: { unit: string; enabled: string; active: string }[];
  ipsec?: {
    backend: IpsecBackend;
    running: boolean;
    loaded: string[];
    /** bosun's own files in the daemon's config dir */
    files: string[];
    policyLoaded: boolean;
    policyFile: boolean;
    policyUnitFile: boolean;
    policyEnabled: boolean;
  };
  disks?: {
    mountPath: string;
    mounted: boolean;
    mountUnitFile: boolean;
    /** the LUKS layer: where its header is, its mapping, and the keyslots left (undefined: no LUKS header there) */
    luks?: { device: string; name: string; open: boolean; keyslots?: number };
    keyFile?: string;
  };
  peerSpool?: string;
}

/** Keyslots in `cryptsetup luksDump` output (LUKS2: "Keyslots:" then "  0: luks2"; LUKS1: "Key Slot 0: ENABLED"). */
export function countKeyslots(dump: string): number {
  const luks1 = dump.match(/^Key Slot \d+: ENABLED/gm);
  if (luks1) return luks1.length;
  const lines = dump.split('\n');
  const start = lines.findIndex((l) => /^Keyslots:/.test(l));
  if (start < 0) return 0;
  let n = 0;
  for (const l of lines.slice(start + 1)) {
    if (/^\S/.test(l)) break;
    if (/^\s+\d+: /.test(l)) n += 1;
  }
  return n;
}

const active = (state: string): boolean => state === 'active' || state === 'activating' || state === 'reloading' || state === 'deactivating';

async function observe(spec: NodeSpec, probe: HostProbe, ctx: PlanContext): Promise<ObservedDecommission> {
  const obs: ObservedDecommission = { auxiliary: [] };
  const blankUnit = { enabled: 'not-found', active: 'inactive' };
  if (spec.container) {
    const unit = machineUnit(spec.container);
    obs.container = { unit, ...(probe.blank ? blankUnit : await probe.unitState(unit)) };
  }
  for (const agent of spec.auxiliary) obs.auxiliary.push({ unit: agent.unit, ...(probe.blank ? blankUnit : await probe.unitState(agent.unit)) });
  const ipsec = spec.network?.ipsec;
  if (ipsec) {
    // What the network phase sees; the decommission tears down only bosun's part of it.
    const network = await observeNetwork(spec, probe);
    const observedIpsec: NonNullable<ObservedDecommission['ipsec']> = {
      backend: backendFor(ipsec),
      running: network.ike.running,
      loaded: network.ike.loaded,
      files: Object.keys(network.files),
      policyLoaded: network.policyLoaded,
      policyFile: network.policy !== undefined,
      policyUnitFile: network.policyUnit !== undefined,
      policyEnabled: network.policyEnabled,
    };
    obs.ipsec = observedIpsec;
  }
  const disksSpec = spec.disks;
  if (disksSpec) {
    const disks: NonNullable<ObservedDecommission['disks']> = { mountPath: disksSpec.mount.path, mounted: false, mountUnitFile: false };
    if (!probe.blank) {
      disks.mounted = (await probe.run(['findmnt', '--noheadings', '--mountpoint', disksSpec.mount.path])).exitCode === 0;
      disks.mountUnitFile = (await probe.stat(mountUnitPath(disksSpec.mount.path))) !== undefined;
      if (disksSpec.luks) {
        const device = await luksDevice(spec, probe, ctx);
        const dump = await probe.run(['cryptsetup', 'luksDump', device]);
        disks.luks = {
          device,
          name: disksSpec.luks.name,
          open: (await probe.stat(`/dev/mapper/${disksSpec.luks.name}`)) !== undefined,
          ...(dump.exitCode === 0 ? { keyslots: countKeyslots(dump.stdout) } : {}),
        };
      }
      if (disksSpec.luks && 'keyFile' in disksSpec.luks.key && (await probe.stat(disksSpec.luks.key.keyFile)) !== undefined)
        disks.keyFile = disksSpec.luks.key.keyFile;
    }
    obs.disks = disks;
  }
  return obs;
}

/**
 * Where the LUKS header is, as the disks phase sees it: the array as it is
 * assembled now (/dev/md127 when the initramfs assembled it without its
 * /dev/md/<name> link), or the one selected disk.
 */
async function luksDevice(spec: NodeSpec, probe: HostProbe, ctx: PlanContext): Promise<string> {
  const d = spec.disks!;
  const fallback = d.raid ? `/dev/md/${d.raid.name}` : 'paths' in d.devices ? d.devices.paths[0]! : undefined;
  try {
    return computeLayers(spec, await observeDisks(spec, probe, ctx)).luks?.device ?? fallback ?? '';
  } catch (e) {
    if (fallback) return fallback;
    throw e;
  }
}

export function planDecommission(spec: NodeSpec, obs: ObservedDecommission): Step[] {
  const steps: Step[] = [];
  const erase = spec.decommission?.erase ?? 'crypto';
  const add = (exec: Omit<Extract<Step, { kind: 'exec' }>, 'phase' | 'kind'> & { kind?: undefined }): void => {
    steps.push({ kind: 'exec', phase: 'decommission', ...exec });
  };
  const unit = (action: 'stop' | 'disable' | 'daemon-reload', unitName: string | undefined, why: string): void => {
    steps.push({ kind: 'unit', phase: 'decommission', action, ...(unitName ? { unit: unitName } : {}), why });
  };

  // 1. The service and the agents beside it. An enabled unit is stopped even when it is not running: after a
  // power-on its start may be queued since boot (a machine waits for its data volume, which only bosun opens),
  // its ActiveState still 'inactive', and disabling it does not cancel that job: it would start, or hang in
  // 'activating', while the volume is erased. `systemctl stop` cancels it, and is a no-op otherwise.
  const enabled = (state: string): boolean => state === 'enabled' || state === 'enabled-runtime';
  const container = obs.container;
  if (container && (active(container.active) || enabled(container.enabled)))
    unit('stop', container.unit, `stop machine ${spec.container!.name}: the node is being retired`);
  if (container && enabled(container.enabled)) unit('disable', container.unit, `machine ${spec.container!.name} must not start again at boot`);
  for (const agent of obs.auxiliary) {
    if (active(agent.active) || enabled(agent.enabled)) unit('stop', agent.unit, `stop the auxiliary agent ${agent.unit}`);
    if (enabled(agent.enabled)) unit('disable', agent.unit, `${agent.unit} must not start again at boot`);
  }

  // 2. Leave the mesh: only what bosun made.
  const ipsec = obs.ipsec;
  if (ipsec) {
    for (const name of ipsec.loaded) add({ argv: ipsec.backend.remove(name), why: `leave the mesh: unload the conn to ${name.slice(6)}` });
    for (const fileName of ipsec.files)
      steps.push({ kind: 'remove', phase: 'decommission', path: `${ipsec.backend.dir}/${fileName}`, why: `leave the mesh: delete bosun's ${fileName}` });
    const unload = ipsec.backend.afterRemove?.();
    if (unload && ipsec.running && ipsec.files.length > 0) add({ argv: unload, why: 'the IKE daemon forgets the deleted conns' });
    if (ipsec.policyEnabled) unit('disable', POLICY_UNIT, 'the drop policy for peers must not load at boot');
    if (ipsec.policyUnitFile) steps.push({ kind: 'remove', phase: 'decommission', path: POLICY_UNIT_FILE, why: "bosun's drop-policy unit" });
    if (ipsec.policyFile) steps.push({ kind: 'remove', phase: 'decommission', path: POLICY_FILE, why: "bosun's drop policy for peers" });
    if (ipsec.policyLoaded) add({ argv: ['nft', 'delete', 'table', 'inet', POLICY_TABLE], why: "drop bosun's peer policy table" });
  }

  // disable does not reload systemd (systemctlArgv): one daemon-reload after the last unit change does it for all.
  const unitsChanged = steps.some((s) => s.kind === 'unit' && s.action === 'disable') || ipsec?.policyUnitFile === true;

  // 3. The data volume: unmount, close, destroy the keyslots.
  const disks = obs.disks;
  if (!disks?.mountUnitFile && unitsChanged) unit('daemon-reload', undefined, 'systemd forgets the units bosun disabled or removed');
  if (disks) {
    const mu = mountUnitName(disks.mountPath);
    if (disks.mounted) unit('stop', mu, `unmount the data volume at ${disks.mountPath}`);
    if (disks.mountUnitFile) {
      steps.push({ kind: 'remove', phase: 'decommission', path: mountUnitPath(disks.mountPath), why: 'the data volume must not be mounted again' });
      unit(
        'daemon-reload',
        undefined,
        unitsChanged ? 'systemd forgets the mount unit and the units bosun disabled or removed' : 'systemd forgets the mount unit',
      );
    }
    const luks = disks.luks;
    if (luks?.open) add({ argv: ['cryptsetup', 'close', luks.name], why: `close the LUKS mapping /dev/mapper/${luks.name}`, timeoutSeconds: 120 });
    if (erase === 'crypto' && luks && (luks.keyslots ?? 0) > 0) {
      add({
        argv: ['cryptsetup', 'luksErase', '--batch-mode', luks.device],
        why: `crypto-erase: destroy all ${luks.keyslots} keyslot${luks.keyslots === 1 ? '' : 's'} of ${luks.device}; its data can never be read again`,
        destructive: true,
        timeoutSeconds: 120,
      });
    }
    if (erase === 'crypto' && disks.keyFile)
      steps.push({ kind: 'remove', phase: 'decommission', path: disks.keyFile, why: 'the LUKS key file is key material' });
  }
  return steps;
}

export const decommissionPhase: Phase<ObservedDecommission> = {
  name: 'decommission',
  stage: 'decommission',
  section: (s) => s.decommission,
  observe,
  plan: planDecommission,
};

/** Observe the host after the phase ran: did every step take effect. */
export async function verifyDecommission(spec: NodeSpec, probe: HostProbe, ctx: PlanContext): Promise<DecommissionRecord> {
  const obs = await observe(spec, probe, ctx);
  const erase = spec.decommission?.erase ?? 'crypto';
  const problems: string[] = [];
  if (obs.container && active(obs.container.active)) problems.push(`${obs.container.unit} is still ${obs.container.active}`);
  for (const agent of obs.auxiliary) if (active(agent.active)) problems.push(`${agent.unit} is still ${agent.active}`);
  const connsLeft = obs.ipsec ? new Set([...obs.ipsec.loaded, ...obs.ipsec.files]).size : 0;
  if (connsLeft > 0) problems.push(`${connsLeft} bosun IPsec conns or files are left`);
  if (obs.disks?.mounted) problems.push(`the data volume is still mounted at ${obs.disks.mountPath}`);
  const luks = obs.disks?.luks;
  if (luks?.open) problems.push(`/dev/mapper/${luks.name} is still open`);
  if (erase === 'crypto' && luks && luks.keyslots !== undefined && luks.keyslots > 0) problems.push(`${luks.device} still has ${luks.keyslots} keyslots`);
  if (erase === 'crypto' && spec.disks?.luks && !luks && !probe.blank) problems.push('the LUKS device could not be inspected');
  return {
    format: 1,
    state: 'decommissioned',
    node: spec.node,
    specVersion: spec.version,
    erase,
    safeToDelete: problems.length === 0,
    finishedAt: new Date().toISOString(),
    evidence: {
      container: obs.container ? { unit: obs.container.unit, active: obs.container.active, enabled: obs.container.enabled } : null,
      auxiliary: obs.auxiliary,
      ipsecConnsLeft: connsLeft,
      dataVolumeMounted: obs.disks?.mounted ?? false,
      luks: luks ? [{ device: luks.device, open: luks.open, keyslots: luks.keyslots ?? null }] : [],
    },
    problems,
  };
}

/**
 * After the phase: verify, and persist the result. A record that verified is
 * kept as it is on a replay (same finish time, same evidence); one that did
 * not is replaced by the new verification.
 */
export async function recordDecommission(spec: NodeSpec, stateDir: string, probe: HostProbe, ctx: PlanContext): Promise<DecommissionRecord> {
  const previous = await readDecommissionRecord(stateDir);
  if (previous?.state === 'decommissioned' && previous.safeToDelete) return previous;
  const rec = await verifyDecommission(spec, probe, ctx);
  await writeDecommissionRecord(stateDir, rec);
  if (!rec.safeToDelete)
    throw new BosunError('E_DECOMMISSION_UNVERIFIED', `decommission ran but did not verify: ${rec.problems.join('; ')}`, { problems: rec.problems });
  return rec;
}

/**
 * What an apply does around the phases for decommissioning: a decommissioned
 * host refuses any other spec; a decommission spec marks the host before any
 * step runs, and verifies and records the result after the last one.
 */
export function decommissionHooks(stateDir: string, probe: HostProbe, ctx: PlanContext): Pick<ApplyHooks, 'admit' | 'starting' | 'finished'> {
  return {
    admit: (spec) => assertNotDecommissioned(spec, stateDir),
    starting: async (spec) => {
      if (spec.decommission) await markDecommissioning(spec, stateDir);
    },
    finished: async (spec) => (spec.decommission ? { decommission: await recordDecommission(spec, stateDir, probe, ctx) } : {}),
  };
}
