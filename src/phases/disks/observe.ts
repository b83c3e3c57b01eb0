import { keyValueLines, type HostProbe } from '../../host/probe.js';
import type { NodeSpec } from '../../spec/node-spec.js';
import type { PlanContext } from '../types.js';
import { mountUnitPath } from './mount.js';

/**
 * What the disks phase sees on a host: block devices as a tree (disk ->
 * md array -> LUKS mapping), every on-disk signature (from wipefs, which finds
 * more than the udev database does), active md arrays with their state, the
 * config files it manages, and the mount point's owner.
 */

export interface Signature {
  type: string;
  offset: string;
  uuid?: string;
  label?: string;
}

export interface BlockDevice {
  /** kernel device path, e.g. /dev/vdb, /dev/md127, /dev/dm-0 (lsblk --paths) */
  path: string;
  /** lsblk TYPE: disk, part, raid0, raid1, raid10, crypt, loop, rom ... */
  type: string;
  sizeBytes: number;
  transport?: string;
  model?: string;
  serial?: string;
  readOnly: boolean;
  fstype?: string;
  uuid?: string;
  label?: string;
  mountpoints: string[];
  children: BlockDevice[];
}

export interface MdArray {
  /** kernel path, /dev/md127 */
  path: string;
  /** the array's name from its superblock, without any "host:" prefix */
  name: string;
  /** 32 lowercase hex digits */
  uuid: string;
  level: string;
  raidDevices: number;
  /** clean, active, degraded, resyncing, recovering, inactive ... */
  state: string;
  degraded: number;
  syncAction?: string;
  members: string[];
}

export interface ObservedDisks {
  devices: BlockDevice[];
  /** /dev/disk/by-id link name -> kernel path */
  byId: { name: string; target: string }[];
  /** signatures by kernel path, for every disk and every md or crypt device in a stack */
  signatures: Record<string, Signature[]>;
  arrays: MdArray[];
  mdadmConf?: string;
  crypttab?: string;
  mountUnit?: string;
  mountPoint?: { uid: number; gid: number; mode: number };
  passwd?: string;
  group?: string;
}

interface LsblkNode {
  name: string;
  type: string;
  size: number | string | null;
  tran?: string | null;
  model?: string | null;
  serial?: string | null;
  ro?: boolean | string | number | null;
  fstype?: string | null;
  uuid?: string | null;
  label?: string | null;
  mountpoints?: (string | null)[] | null;
  children?: LsblkNode[];
}

export const LSBLK_ARGV = ['lsblk', '--json', '--bytes', '--paths', '--output', 'NAME,TYPE,SIZE,TRAN,MODEL,SERIAL,RO,FSTYPE,UUID,LABEL,MOUNTPOINTS'] as const;

const str = (v: string | null | undefined): string | undefined => (v === null || v === undefined || v.trim() === '' ? undefined : v.trim());

export function parseLsblk(json: string): BlockDevice[] {
  const doc = JSON.parse(json) as { blockdevices?: LsblkNode[] };
  const convert = (n: LsblkNode): BlockDevice => ({
    path: n.name,
    type: n.type,
    sizeBytes: Number(n.size ?? 0),
    transport: str(n.tran),
    model: str(n.model),
    serial: str(n.serial),
    readOnly: n.ro === true || n.ro === '1' || n.ro === 1,
    fstype: str(n.fstype),
    uuid: str(n.uuid),
    label: str(n.label),
    mountpoints: (n.mountpoints ?? []).filter((m): m is string => typeof m === 'string' && m !== ''),
    children: (n.children ?? []).map(convert),
  });
  return (doc.blockdevices ?? []).map(convert);
}

/**
 * wipefs lists every copy of a header: LUKS2 keeps a primary and a secondary
 * header, GPT a backup table at the end. Copies of one header (same type, UUID
 * and label) are one signature here; different things on one device stay many.
 */
export function parseWipefs(json: string): Signature[] {
  if (json.trim() === '') return [];
  const doc = JSON.parse(json) as { signatures?: { offset: string; type: string; uuid?: string | null; label?: string | null }[] };
  const out: Signature[] = [];
  for (const s of doc.signatures ?? []) {
    const sig = { type: s.type, offset: s.offset, uuid: str(s.uuid), label: str(s.label) };
    if (!out.some((o) => o.type === sig.type && o.uuid === sig.uuid && o.label === sig.label)) out.push(sig);
  }
  return out;
}

/** `mdadm --detail --export` lines into a map. */
export function parseExport(text: string): Map<string, string> {
  const m = keyValueLines(text);
  for (const [k, v] of m) m.set(k, v.replace(/^'(.*)'$/, '$1'));
  return m;
}

/** Any spelling of a UUID (mdadm's 8:8:8:8, libblkid's 8-4-4-4-12) as 32 lowercase hex digits. */
export function normalizeUuid(u: string): string {
  return u.replace(/[^0-9a-fA-F]/g, '').toLowerCase();
}

export function mdadmUuid(u: string): string {
  const h = normalizeUuid(u);
  return `${h.slice(0, 8)}:${h.slice(8, 16)}:${h.slice(16, 24)}:${h.slice(24, 32)}`;
}

export function dashedUuid(u: string): string {
  const h = normalizeUuid(u);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

/** "host:name" or "name" as stored in an md superblock -> "name". */
export function mdShortName(stored: string): string {
  return stored.includes(':') ? stored.slice(stored.indexOf(':') + 1) : stored;
}

export function flatten(devs: readonly BlockDevice[]): BlockDevice[] {
  return devs.flatMap((d) => [d, ...flatten(d.children)]);
}

/**
 * The block devices and the md arrays among them: what a health round needs (lsblk, then mdadm --detail and
 * sysfs per array). observeDisks adds the signatures and files that only planning needs.
 */
export async function observeVolume(probe: HostProbe): Promise<Pick<ObservedDisks, 'devices' | 'arrays'>> {
  const ls = await probe.run(LSBLK_ARGV);
  if (ls.exitCode !== 0) throw new Error(`lsblk failed: ${ls.stderr.trim()}`);
  const devices = parseLsblk(ls.stdout);
  const arrays: MdArray[] = [];
  for (const dev of flatten(devices).filter((x) => x.type.startsWith('raid'))) {
    if (arrays.some((a) => a.path === dev.path)) continue;
    const detail = await probe.run(['mdadm', '--detail', '--export', dev.path]);
    if (detail.exitCode !== 0) continue;
    const ex = parseExport(detail.stdout);
    const sys = `/sys/block/${dev.path.replace('/dev/', '')}/md`;
    const read = async (f: string) => (await probe.readFile(`${sys}/${f}`))?.toString('utf8').trim();
    arrays.push({
      path: dev.path,
      name: mdShortName(ex.get('MD_NAME') ?? ''),
      uuid: normalizeUuid(ex.get('MD_UUID') ?? ''),
      level: ex.get('MD_LEVEL') ?? dev.type,
      raidDevices: Number(ex.get('MD_DEVICES') ?? 0),
      state: (await read('array_state')) ?? 'unknown',
      degraded: Number((await read('degraded')) ?? 0),
      syncAction: await read('sync_action'),
      members: [...ex.entries()].filter(([k]) => /^MD_DEVICE_.*_DEV$/.test(k)).map(([, v]) => v),
    });
  }
  return { devices, arrays };
}

export async function observeDisks(spec: NodeSpec, probe: HostProbe, ctx: PlanContext): Promise<ObservedDisks> {
  const disksSpec = spec.disks!;
  const { devices, arrays } = await observeVolume(probe);
  const signatures: Record<string, Signature[]> = {};
  for (const dev of flatten(devices)) {
    if (!['disk', 'crypt'].includes(dev.type) && !dev.type.startsWith('raid')) continue;
    if (signatures[dev.path]) continue;
    const wipefs = await probe.run(['wipefs', '--no-act', '--json', dev.path]);
    signatures[dev.path] =
      wipefs.exitCode === 0
        ? parseWipefs(wipefs.stdout)
        : [{ type: `unreadable (wipefs: ${wipefs.stderr.trim().split('\n')[0] ?? wipefs.exitCode})`, offset: '?' }];
  }
  const text = async (p: string) => (await probe.readFile(p))?.toString('utf8');
  return {
    devices,
    byId: await probe.links('/dev/disk/by-id'),
    signatures,
    arrays,
    mdadmConf: disksSpec.raid ? await text(ctx.distro.mdadmConf) : undefined,
    crypttab: disksSpec.luks ? await text('/etc/crypttab') : undefined,
    mountUnit: await text(mountUnitPath(disksSpec.mount.path)),
    mountPoint: await probe.stat(disksSpec.mount.path),
    passwd: await text('/etc/passwd'),
    group: await text('/etc/group'),
  };
}
