import { BosunError } from '../../errors.js';
import type { DisksSpec } from '../../spec/node-spec.js';
import { flatten, mdShortName, type BlockDevice, type ObservedDisks, type Signature } from './observe.js';

/**
 * Which disks the spec means, and what each holds. Selection never guesses:
 * a match rule must find exactly the count it names, and a disk that holds
 * something bosun did not make is reported, not used, unless the spec's
 * policy says it may be wiped.
 */

/** Names bosun gives what it makes, so that it can recognise them later on any host. */
export interface LayoutNames {
  mdName?: string;
  luksLabel?: string;
  fsLabel: string;
}

export function layoutNames(d: DisksSpec): LayoutNames {
  return {
    mdName: d.raid?.name,
    luksLabel: d.luks ? `bosun-${d.luks.name}` : undefined,
    fsLabel: d.filesystem.label ?? `bosun-${d.raid?.name ?? d.luks?.name ?? 'data'}`.slice(0, 12),
  };
}

export type DiskState =
  /** no signature at all */
  | { kind: 'blank' }
  /** a member of this spec's md array */
  | { kind: 'member'; arrayUuid?: string }
  /** this spec's LUKS volume, directly on the disk */
  | { kind: 'luks'; uuid?: string }
  /** this spec's filesystem, directly on the disk */
  | { kind: 'filesystem'; uuid?: string }
  /** anything else */
  | { kind: 'foreign'; signatures: Signature[] };

export interface SelectedDisk {
  /** kernel path: what commands are given */
  path: string;
  /** stable name for people and reports: a /dev/disk/by-id link when there is one */
  stableName: string;
  sizeBytes: number;
  state: DiskState;
  /** mounted, or held by something that is not this spec's stack */
  inUse?: string;
}

const BY_ID_PREFERENCE = [/^nvme-(?!eui\.|nvme\.)/, /^virtio-/, /^scsi-/, /^ata-/, /^usb-/, /^dm-uuid-/, /^wwn-/, /./];

export function stableName(path: string, obs: ObservedDisks): string {
  const links = obs.byId.filter((l) => l.target === path).map((l) => l.name);
  for (const re of BY_ID_PREFERENCE) {
    const hit = links.find((l) => re.test(l.slice(l.lastIndexOf('/') + 1)));
    if (hit) return hit;
  }
  return path;
}

/** Resolve a spec path (by-id link or kernel name) to the kernel path lsblk reports. */
function resolvePath(p: string, obs: ObservedDisks): string {
  return obs.byId.find((l) => l.name === p)?.target ?? p;
}

export function classify(dev: BlockDevice, obs: ObservedDisks, names: LayoutNames, fsType: string): DiskState {
  const sigs = obs.signatures[dev.path] ?? [];
  if (sigs.length === 0) return { kind: 'blank' };
  if (sigs.length === 1) {
    const s = sigs[0]!;
    if (names.mdName && s.type === 'linux_raid_member' && s.label !== undefined && mdShortName(s.label) === names.mdName)
      return { kind: 'member', arrayUuid: s.uuid };
    if (!names.mdName && names.luksLabel && s.type === 'crypto_LUKS' && s.label === names.luksLabel) return { kind: 'luks', uuid: s.uuid };
    if (!names.mdName && !names.luksLabel && s.type === fsType && s.label === names.fsLabel) return { kind: 'filesystem', uuid: s.uuid };
  }
  return { kind: 'foreign', signatures: sigs };
}

/** Why a disk cannot be wiped or reused now, or undefined. Mounts inside this spec's own stack do not count. */
function inUseReason(dev: BlockDevice, d: DisksSpec, obs: ObservedDisks): string | undefined {
  if (dev.mountpoints.length > 0) return `${dev.path} is mounted at ${dev.mountpoints.join(', ')}`;
  const ours = (c: BlockDevice): boolean =>
    (c.type.startsWith('raid') && d.raid !== undefined && obs.arrays.some((a) => a.path === c.path && a.name === d.raid!.name)) ||
    (c.type === 'crypt' && d.raid === undefined && d.luks !== undefined && c.path === `/dev/mapper/${d.luks.name}`);
  for (const c of dev.children) {
    if (ours(c)) continue;
    const m = flatten([c]).find((x) => x.mountpoints.length > 0);
    return m ? `${m.path} on ${dev.path} is mounted at ${m.mountpoints.join(', ')}` : `${dev.path} is in use by ${c.path} (${c.type})`;
  }
  return undefined;
}

function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}

const INSTANCE_STORE_MODELS = /Instance Storage|EC2 NVMe Instance|nvme_card|Local SSD/i;

export function selectDisks(disksSpec: DisksSpec, obs: ObservedDisks): SelectedDisk[] {
  const names = layoutNames(disksSpec);
  const disks = obs.devices.filter((x) => x.type === 'disk');
  const describe = (dev: BlockDevice): SelectedDisk => {
    const state = classify(dev, obs, names, disksSpec.filesystem.type);
    return { path: dev.path, stableName: stableName(dev.path, obs), sizeBytes: dev.sizeBytes, state, inUse: inUseReason(dev, disksSpec, obs) };
  };

  if ('paths' in disksSpec.devices) {
    const missing: string[] = [];
    const chosen: SelectedDisk[] = [];
    for (const path of disksSpec.devices.paths) {
      const dev = disks.find((x) => x.path === resolvePath(path, obs));
      if (!dev) missing.push(path);
      else chosen.push(describe(dev));
    }
    if (missing.length > 0)
      throw new BosunError('E_REFUSED', `disks: ${missing.join(', ')} ${missing.length === 1 ? 'is' : 'are'} not a disk on this host; nothing was changed`, {
        missing,
      });
    return chosen;
  }

  const match = disksSpec.devices.match;
  const candidates = disks
    .filter((x) => !x.readOnly && x.sizeBytes > 0)
    .filter((x) => match.kind === 'any' || (x.transport === 'nvme' && INSTANCE_STORE_MODELS.test(x.model ?? '')))
    .filter((x) => match.minSizeGiB === undefined || x.sizeBytes >= match.minSizeGiB * 2 ** 30)
    .map(describe)
    // A disk in use (the root disk, a mounted scratch disk) is never a candidate.
    .filter((x) => !x.inUse)
    // An unused disk is a blank one or one that already holds this spec's layout (a reboot must find its own disks again).
    .filter((x) => !match.unused || x.state.kind !== 'foreign')
    .sort((a, b) => (a.stableName < b.stableName ? -1 : a.stableName > b.stableName ? 1 : 0));
  if (match.count !== undefined && candidates.length !== match.count) {
    throw new BosunError(
      'E_REFUSED',
      `disks: the match rule wants exactly ${match.count} disk${match.count === 1 ? '' : 's'} but ${candidates.length} match${candidates.length === 1 ? 'es' : ''}${candidates.length ? ` (${candidates.map((c) => `${c.stableName} ${gib(c.sizeBytes)}`).join(', ')})` : ''}; nothing was changed`,
      { wanted: match.count, found: candidates.map((c) => c.stableName) },
    );
  }
  if (candidates.length === 0) throw new BosunError('E_REFUSED', 'disks: no disk matches the rule; nothing was changed', { match: match });
  return candidates;
}
