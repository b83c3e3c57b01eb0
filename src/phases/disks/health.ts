import type { NodeSpec } from '../../spec/node-spec.js';
import type { HostProbe } from '../../host/probe.js';
import { flatten, type ObservedDisks } from './observe.js';

/** The data volume's health, as status reports carry it. */
export interface DisksHealth {
  ok: boolean;
  array?: { name: string; state: string; degraded: number; syncAction?: string; members: number; raidDevices: number };
  luksOpen?: boolean;
  mounted: boolean;
  usage?: { sizeBytes: number; usedBytes: number; availBytes: number };
  problems: string[];
}

export function disksHealth(spec: NodeSpec, obs: ObservedDisks, usage?: DisksHealth['usage']): DisksHealth {
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

/** df for one mount point, in bytes. */
export async function volumeUsage(probe: HostProbe, path: string): Promise<DisksHealth['usage']> {
  const r = await probe.run(['df', '--block-size=1', '--output=size,used,avail', path]);
  const nums = r.exitCode === 0 ? r.stdout.trim().split('\n')[1]?.trim().split(/\s+/).map(Number) : undefined;
  if (!nums || nums.length !== 3 || nums.some((n) => !Number.isFinite(n))) return undefined;
  return { sizeBytes: nums[0]!, usedBytes: nums[1]!, availBytes: nums[2]! };
}
