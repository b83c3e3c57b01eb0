import { BosunError } from '../../errors.js';
import type { DisksSpec, NodeSpec } from '../../spec/node-spec.js';
import { dashedUuid, flatten, normalizeUuid, type MdArray, type ObservedDisks, type Signature } from './observe.js';
import { layoutNames, selectDisks, type LayoutNames, type SelectedDisk } from './select.js';
import { plannedUuid } from './uuid.js';

/**
 * The data volume as a stack of layers: disks -> md array -> LUKS -> filesystem.
 * For each layer, what is there now, or, when the layer below does not exist
 * yet, what it will be once the stages below have run. Stages run bottom-up
 * and each is planned right before it runs, so at apply time every layer is
 * judged from what the host really has; the prediction only serves
 * `bosun plan` on a host that is not built yet.
 */

export type LayerState =
  /** nothing there: this stage creates it */
  | { kind: 'absent'; predicted: boolean }
  /** bosun's own layer: this stage opens or keeps it */
  | { kind: 'ours'; uuid?: string; predicted: boolean }
  /** something else: refused */
  | { kind: 'foreign'; signatures: Signature[] };

export interface RaidLayer {
  name: string;
  /** /dev/md/<name>: what create and assemble make */
  link: string;
  /**
   * What commands name the array by: the running array's kernel device, or the
   * link once this plan has made it. An array assembled at boot by the
   * initramfs (from a copy of mdadm.conf older than the array) runs as
   * /dev/md127 without the /dev/md/<name> link, and that must not stop anything.
   */
  device: string;
  /** the running array, if assembled */
  active?: MdArray;
  /** disks carrying this array's superblock */
  members: SelectedDisk[];
  /** blank (or about to be wiped) disks that join the array */
  fresh: SelectedDisk[];
  /** array UUID: the existing one, or the one the plan will create */
  uuid: string;
  create: boolean;
}

export interface Layers {
  names: LayoutNames;
  disks: SelectedDisk[];
  /** disks with foreign signatures the spec allows wiping */
  toWipe: SelectedDisk[];
  raid?: RaidLayer;
  /** the device LUKS sits on, or the filesystem when there is no LUKS */
  base: { path: string; kernelPath?: string };
  luks?: { device: string; mapper: string; state: LayerState; uuid: string; open: boolean };
  fs: { device: string; kernelPath?: string; state: LayerState; uuid: string };
}

function sigsOf(obs: ObservedDisks, kernelPath: string | undefined): Signature[] | undefined {
  return kernelPath === undefined ? undefined : obs.signatures[kernelPath];
}

export function computeLayers(spec: NodeSpec, obs: ObservedDisks): Layers {
  const disksSpec = spec.disks as DisksSpec;
  const names = layoutNames(disksSpec);
  const disks = selectDisks(disksSpec, obs);

  const foreign = disks.filter((x) => x.state.kind === 'foreign');
  if (foreign.length > 0 && disksSpec.foreignSignatures === 'refuse') {
    const list = foreign.map((x) => `${x.stableName} holds ${x.state.kind === 'foreign' ? x.state.signatures.map((s) => s.type).join(' + ') : ''}`).join('; ');
    throw new BosunError(
      'E_REFUSED',
      `disks: ${list}, which bosun did not make; leaving ${foreign.length === 1 ? 'it' : 'them'} untouched (set disks.foreignSignatures to "wipe" only for scratch disks); nothing was changed`,
      {
        devices: foreign.map((x) => ({ device: x.stableName, signatures: x.state.kind === 'foreign' ? x.state.signatures.map((s) => s.type) : [] })),
      },
    );
  }
  const mounted = foreign.filter((x) => x.inUse && /mounted/.test(x.inUse));
  if (mounted.length > 0) {
    throw new BosunError('E_REFUSED', `disks: will not wipe a disk that is in use: ${mounted.map((x) => x.inUse).join('; ')}; nothing was changed`, {
      devices: mounted.map((x) => x.stableName),
    });
  }
  const toWipe = foreign;

  let raid: RaidLayer | undefined;
  let base: Layers['base'];
  let baseState: LayerState;
  if (disksSpec.raid) {
    const name = disksSpec.raid.name;
    const active = obs.arrays.find((a) => a.name === name);
    const members = disks.filter((x) => x.state.kind === 'member');
    const fresh = disks.filter((x) => x.state.kind === 'blank' || x.state.kind === 'foreign');
    const memberUuids = [
      ...new Set(
        members
          .map((member) => (member.state.kind === 'member' && member.state.arrayUuid ? normalizeUuid(member.state.arrayUuid) : ''))
          .filter((arrayUuid) => arrayUuid !== ''),
      ),
    ];
    if (memberUuids.length > 1) {
      throw new BosunError(
        'E_REFUSED',
        `disks: the selected disks hold members of ${memberUuids.length} different arrays named "${name}"; refusing to guess which is the data; nothing was changed`,
        { uuids: memberUuids },
      );
    }
    const create = !active && members.length === 0;
    if (!create && fresh.length > 0 && disksSpec.raid.level === 0) {
      throw new BosunError(
        'E_REFUSED',
        `disks: RAID0 array "${name}" cannot take the new disk${fresh.length === 1 ? '' : 's'} ${fresh.map((x) => x.stableName).join(', ')}; a RAID0 that lost a disk has lost its data; nothing was changed`,
      );
    }
    const uuid = active?.uuid || memberUuids[0] || normalizeUuid(plannedUuid(spec, 'md'));
    raid = { name, link: `/dev/md/${name}`, device: active?.path ?? `/dev/md/${name}`, active, members, fresh, uuid, create };
    base = { path: raid.device, kernelPath: active?.path };
    if (active) baseState = stateOf(sigsOf(obs, active.path) ?? [], names, disksSpec, 'base');
    else baseState = create ? { kind: 'absent', predicted: true } : { kind: 'ours', predicted: true };
  } else {
    const disk = disks[0]!;
    base = { path: disk.path, kernelPath: disk.path };
    if (disk.state.kind === 'blank' || disk.state.kind === 'foreign') baseState = { kind: 'absent', predicted: disk.state.kind === 'foreign' };
    else if (disk.state.kind === 'luks' || disk.state.kind === 'filesystem') baseState = { kind: 'ours', uuid: disk.state.uuid, predicted: false };
    else baseState = { kind: 'foreign', signatures: obs.signatures[disk.path] ?? [] };
  }

  let luks: Layers['luks'];
  let fsDevice: { path: string; kernelPath?: string };
  let fsState: LayerState;
  if (disksSpec.luks) {
    const mapper = `/dev/mapper/${disksSpec.luks.name}`;
    const openNode = flatten(obs.devices).find((x) => x.type === 'crypt' && x.path === mapper);
    const uuid =
      baseState.kind === 'ours'
        ? (knownUuid(baseState.uuid, crypttabUuid(obs.crypttab, disksSpec.luks.name)) ?? plannedUuid(spec, 'luks'))
        : plannedUuid(spec, 'luks');
    luks = { device: base.path, mapper, state: baseState, uuid, open: openNode !== undefined };
    fsDevice = { path: mapper, kernelPath: openNode?.path };
    if (openNode) fsState = stateOf(sigsOf(obs, openNode.path) ?? [], names, disksSpec, 'fs');
    else fsState = baseState.kind === 'ours' ? { kind: 'ours', predicted: true } : { kind: 'absent', predicted: true };
  } else {
    fsDevice = base;
    fsState = baseState;
  }
  const fsUuid = fsState.kind === 'ours' ? (knownUuid(fsState.uuid, mountUnitUuid(obs.mountUnit)) ?? plannedUuid(spec, 'fs')) : plannedUuid(spec, 'fs');
  return { names, disks, toWipe, raid, base, luks, fs: { device: fsDevice.path, kernelPath: fsDevice.kernelPath, state: fsState, uuid: fsUuid } };
}

/**
 * The UUID of an existing layer: as observed, or, when the layer below is not
 * assembled yet and so cannot be read (the preview after a reboot), as the
 * config bosun wrote for it says.
 */
function knownUuid(observed: string | undefined, fromConfig: string | undefined): string | undefined {
  if (observed) return dashedUuid(observed);
  return fromConfig;
}

function crypttabUuid(crypttab: string | undefined, name: string): string | undefined {
  const line = (crypttab ?? '').split('\n').find((l) => l.split(/\s+/)[0] === name);
  return /\bUUID=([0-9a-fA-F-]{36})\b/.exec(line ?? '')?.[1];
}

function mountUnitUuid(unit: string | undefined): string | undefined {
  return /^What=\/dev\/disk\/by-uuid\/([0-9a-fA-F-]{36})$/m.exec(unit ?? '')?.[1];
}

/** What a device in the stack holds, judged against the layer that should be there. */
function stateOf(sigs: Signature[], names: LayoutNames, d: DisksSpec, where: 'base' | 'fs'): LayerState {
  if (sigs.length === 0) return { kind: 'absent', predicted: false };
  if (sigs.length === 1) {
    const s = sigs[0]!;
    const wantLuks = where === 'base' && d.luks !== undefined;
    if (wantLuks && s.type === 'crypto_LUKS' && s.label === names.luksLabel) return { kind: 'ours', uuid: s.uuid, predicted: false };
    // Inside bosun's own array or LUKS volume a filesystem of the right type is bosun's, whatever its label.
    if (!wantLuks && s.type === d.filesystem.type) return { kind: 'ours', uuid: s.uuid, predicted: false };
  }
  return { kind: 'foreign', signatures: sigs };
}
