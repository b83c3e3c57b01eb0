import type { NodeSpec } from '../../spec/node-spec.js';
import type { VolumeUsage } from '../../host/probe.js';
import { flatten, type ObservedDisks } from './observe.js';

/** The data volume's health, as status reports carry it. */
export interface DisksHealth {
  ok: boolean;
  array?: { name: string; state: string; degraded: number; syncAction?: string; members: number; raidDevices: number };
  luksOpen?: boolean;
  mounted: boolean;
  usage?: VolumeUsage;
  problems: string[];
}

export function disksHealth(spec: NodeSpec, obs: Pick<ObservedDisks, 'devices' | 'arrays'>, usage?: VolumeUsage): DisksHealth {
  const d = spec.disks!;
  const problems: string[] = [];
  const all = flatten(obs.devices);
  let array: DisksHealth['array'];
  if (d.raid) {
    const a = obs.arrays.find((x) => x.name === d.raid!.name);
    if (!a) problems.push(`array ${d.raid.name} is not assembled`);
    else {
      array = { name: a.name, state: a.state, degraded: a.degraded, syncAction: a.syncAction, members: a.members.length, raidDevices: a.raidDevices };
      if (a.degraded > 0)
        problems.push(
          `array ${a.name} is degraded: ${a.degraded} of ${a.raidDevices} members missing${a.syncAction && a.syncAction !== 'idle' ? `, ${a.syncAction}` : ''}`,
        );
    }
  }
  const luksOpen = d.luks ? all.some((x) => x.type === 'crypt' && x.path === `/dev/mapper/${d.luks!.name}`) : undefined;
  if (luksOpen === false) problems.push(`LUKS volume ${d.luks!.name} is not open`);
  const mounted = all.some((x) => x.mountpoints.includes(d.mount.path));
  if (!mounted) problems.push(`${d.mount.path} is not mounted`);
  if (usage && usage.sizeBytes > 0 && usage.availBytes / usage.sizeBytes < 0.05)
    problems.push(`${d.mount.path} is ${Math.round((usage.usedBytes / usage.sizeBytes) * 100)}% full`);
  return { ok: problems.length === 0, array, luksOpen, mounted, usage, problems };
}
