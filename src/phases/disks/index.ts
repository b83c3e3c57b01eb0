import { BosunError } from '../../errors.js';
import type { Step } from '../../engine/step.js';
import type { SecretRef } from '../../secrets/ref.js';
import type { DisksSpec, NodeSpec } from '../../spec/node-spec.js';
import type { HostProbe } from '../../host/probe.js';
import type { Phase, PlanContext } from '../types.js';
import { computeLayers, type Layers } from './layers.js';
import { mountUnitName, mountUnitPath, renderMountUnit } from './mount.js';
import { flatten, mdadmUuid, observeDisks, type BlockDevice, type ObservedDisks } from './observe.js';

/**
 * The disks phase, in four stages that run bottom-up: raid (select, wipe if
 * allowed, create or assemble the array), luks (format or open), filesystem
 * (make it if there is none), mount (unit, mount, ownership). Each stage is
 * observed right before it runs. On a host that is already built every stage
 * plans nothing; nothing that exists is ever re-created or re-formatted.
 */

const WAIT_SECONDS = 60;

async function observe(spec: NodeSpec, probe: HostProbe, ctx: PlanContext): Promise<ObservedDisks> {
  return probe.blank ? blankHost(spec.disks!) : observeDisks(spec, probe, ctx);
}

function stage(
  name: string,
  section: (s: NodeSpec) => unknown,
  plan: (spec: NodeSpec, layers: Layers, obs: ObservedDisks, ctx: PlanContext) => Step[],
): Phase<ObservedDisks> {
  return {
    name: 'disks',
    stage: `disks/${name}`,
    section,
    observe,
    plan: (spec, obs, ctx) => plan(spec, computeLayers(spec, obs), obs, ctx),
  };
}

const step = {
  exec: (argv: string[], why: string, extra: Partial<Extract<Step, { kind: 'exec' }>> = {}): Step => ({ kind: 'exec', phase: 'disks', argv, why, ...extra }),
  wait: (path: string, why: string): Step => ({ kind: 'wait', phase: 'disks', path, timeoutSeconds: WAIT_SECONDS, why }),
  write: (path: string, content: string, mode: number, why: string): Step => ({ kind: 'write', phase: 'disks', path, mode, content, why }),
};

export const raidStage = stage(
  'raid',
  (s) => s.disks,
  (spec, layers, obs, ctx) => {
    const disksSpec = spec.disks!;
    const steps: Step[] = [];
    for (const disk of layers.toWipe) {
      const dev = obs.devices.find((x) => x.path === disk.path);
      for (const holder of dev?.children.filter((c) => c.type.startsWith('raid')) ?? []) {
        steps.push(step.exec(['mdadm', '--stop', holder.path], `${holder.path} was assembled from ${disk.stableName}, which is to be wiped`));
      }
      const sigs = disk.state.kind === 'foreign' ? disk.state.signatures.map((s) => s.type).join(' + ') : '';
      steps.push(
        step.exec(['wipefs', '--all', disk.path], `${disk.stableName} holds ${sigs}; the spec allows wiping foreign signatures`, { destructive: true }),
      );
    }
    const raid = layers.raid;
    if (!raid) return steps;
    const level = disksSpec.raid!.level;
    if (raid.create) {
      const devs = raid.fresh.map((x) => x.path);
      // Fresh instance-store disks read as zeroes, so mirrors already agree: no initial resync.
      const assumeClean = level === 0 || ('match' in disksSpec.devices && disksSpec.devices.match.kind === 'nvme-instance-store');
      steps.push(
        step.exec(
          [
            'mdadm',
            '--create',
            raid.link,
            '--run',
            '--metadata=1.2',
            `--level=${level}`,
            `--raid-devices=${devs.length}`,
            `--name=${raid.name}`,
            '--homehost=any',
            `--uuid=${mdadmUuid(raid.uuid)}`,
            ...(disksSpec.raid!.chunkKiB ? [`--chunk=${disksSpec.raid!.chunkKiB}`] : []),
            ...(level !== 0 ? ['--bitmap=internal'] : []),
            ...(assumeClean ? ['--assume-clean'] : []),
            ...devs,
          ],
          `create RAID${level} "${raid.name}" from ${raid.fresh.map((x) => x.stableName).join(', ')}${assumeClean && level !== 0 ? ' (instance store reads as zeroes: no initial resync)' : ''}`,
          { destructive: true, timeoutSeconds: 120 },
        ),
        step.wait(raid.link, 'udev makes the array link before anything is put on it'),
      );
    } else if (!raid.active) {
      steps.push(
        step.exec(
          ['mdadm', '--assemble', raid.link, '--run', `--uuid=${mdadmUuid(raid.uuid)}`, ...raid.members.map((x) => x.path)],
          `assemble the existing array "${raid.name}" from ${raid.members.map((x) => x.stableName).join(', ')}${raid.members.length < raid.members.length + raid.fresh.length ? ' (degraded until the new disk is added)' : ''}`,
          { timeoutSeconds: 120 },
        ),
        step.wait(raid.link, 'udev makes the array link before anything is put on it'),
      );
    }
    if (!raid.create) {
      for (const disk of raid.fresh)
        steps.push(
          step.exec(
            ['mdadm', '--manage', raid.device, '--add', disk.path],
            `${disk.stableName} replaces a missing member of "${raid.name}"; md rebuilds onto it`,
          ),
        );
    }
    const conf = withLine(
      obs.mdadmConf,
      (line) => new RegExp(`^ARRAY\\s+${escapeRe(raid.link)}(\\s|$)`).test(line) || line.includes(`UUID=${mdadmUuid(raid.uuid)}`),
      `ARRAY ${raid.link} metadata=1.2 UUID=${mdadmUuid(raid.uuid)} name=${raid.name}`,
    );
    if (conf !== obs.mdadmConf)
      steps.push(step.write(ctx.distro.mdadmConf, conf, 0o644, `record "${raid.name}" so the array assembles under the same name after a reboot`));
    return steps;
  },
);

export const luksStage = stage(
  'luks',
  (s) => s.disks?.luks,
  (spec, layers, obs) => {
    const luks = spec.disks!.luks!;
    const luksLayer = layers.luks!;
    const steps: Step[] = [];
    const key: { args: string[]; stdin?: SecretRef[] } =
      'sealed' in luks.key ? { args: ['--key-file=-'], stdin: [{ secret: luks.key, label: 'disks.luks.key' }] } : { args: [`--key-file=${luks.key.keyFile}`] };
    const predicted = luksLayer.state.kind !== 'foreign' && luksLayer.state.predicted ? ' (predicted: re-checked when this stage runs)' : '';
    if (luksLayer.state.kind === 'foreign') {
      throw new BosunError(
        'E_REFUSED',
        `disks: ${luksLayer.device} holds ${luksLayer.state.signatures.map((s) => s.type).join(' + ')}, not the LUKS volume ${layers.names.luksLabel}; refusing to format over it; nothing was changed`,
        { device: luksLayer.device },
      );
    }
    if (luksLayer.state.kind === 'absent') {
      steps.push(
        step.exec(
          // The key is 512 bits of randomness, not a passphrase: a slow KDF would only slow every boot (argon2 ≈ 10 s, 350 MB).
          [
            'cryptsetup',
            'luksFormat',
            '--type',
            'luks2',
            '--batch-mode',
            '--pbkdf',
            'pbkdf2',
            '--pbkdf-force-iterations',
            '1000',
            '--hash',
            'sha256',
            '--cipher',
            'aes-xts-plain64',
            '--key-size',
            '512',
            '--label',
            layers.names.luksLabel!,
            '--uuid',
            luksLayer.uuid,
            ...key.args,
            luksLayer.device,
          ],
          `make the LUKS2 volume ${layers.names.luksLabel} on ${luksLayer.device}${predicted}`,
          { destructive: true, ...(key.stdin ? { stdin: key.stdin } : {}) },
        ),
      );
    }
    if (!luksLayer.open) {
      steps.push(
        step.exec(
          ['cryptsetup', 'open', '--type', 'luks2', ...key.args, ...(luks.discard ? ['--allow-discards'] : []), luksLayer.device, luks.name],
          `open the LUKS volume as ${luksLayer.mapper}${luksLayer.state.kind === 'ours' ? predicted : ''}`,
          key.stdin ? { stdin: key.stdin } : {},
        ),
        step.wait(luksLayer.mapper, 'the mapping must exist before the filesystem is checked'),
      );
    }
    const crypttab = withLine(
      obs.crypttab,
      (line) => line.split(/\s+/)[0] === luks.name,
      `${luks.name} UUID=${luksLayer.uuid} none luks${luks.discard ? ',discard' : ''},noauto`,
    );
    if (crypttab !== obs.crypttab)
      steps.push(
        step.write('/etc/crypttab', crypttab, 0o644, 'name the volume in crypttab (noauto: bosun opens it with the sealed key; no key is stored on disk)'),
      );
    return steps;
  },
);

export const filesystemStage = stage(
  'filesystem',
  (s) => s.disks,
  (spec, layers) => {
    const disksSpec = spec.disks!;
    const fsLayer = layers.fs;
    if (fsLayer.state.kind === 'foreign') {
      throw new BosunError(
        'E_REFUSED',
        `disks: ${fsLayer.device} holds ${fsLayer.state.signatures.map((s) => s.type).join(' + ')} but the spec asks for ${disksSpec.filesystem.type}; refusing to format over existing data; nothing was changed`,
        { device: fsLayer.device },
      );
    }
    if (fsLayer.state.kind === 'ours') return [];
    const { su, sw } = stripe(disksSpec);
    // Inside bosun's own array or LUKS volume, wipefs found no signature, so anything mkfs's
    // more eager probe still sees is the remains of bosun's own mkfs cut short by a power
    // loss: overwrite it. Directly on a disk, mkfs keeps its own refusal as a second guard.
    const ownStack = disksSpec.raid !== undefined || disksSpec.luks !== undefined;
    const argv =
      disksSpec.filesystem.type === 'xfs'
        ? [
            'mkfs.xfs',
            '-q',
            ...(ownStack ? ['-f'] : []),
            '-K',
            '-L',
            layers.names.fsLabel,
            '-m',
            `uuid=${fsLayer.uuid}`,
            ...(su ? ['-d', `su=${su}k,sw=${sw}`] : []),
            fsLayer.device,
          ]
        : [
            'mkfs.ext4',
            '-q',
            ...(ownStack ? ['-F'] : []),
            '-L',
            layers.names.fsLabel,
            '-U',
            fsLayer.uuid,
            '-m',
            '1',
            '-E',
            ['nodiscard', ...(su ? [`stride=${su / 4}`, `stripe_width=${(su / 4) * sw}`] : [])].join(','),
            fsLayer.device,
          ];
    return [
      step.exec(
        argv,
        `make ${disksSpec.filesystem.type} on ${fsLayer.device}, which is empty${fsLayer.state.predicted ? ' (predicted: re-checked when this stage runs)' : ''}${su ? `; aligned to the ${su} KiB chunk x ${sw} data disks` : ''}`,
        { destructive: true, timeoutSeconds: 600 },
      ),
      step.wait(`/dev/disk/by-uuid/${fsLayer.uuid}`, 'the mount unit names the filesystem by UUID'),
    ];
  },
);

export const mountStage = stage(
  'mount',
  (s) => s.disks,
  (spec, layers, obs) => {
    const disksSpec = spec.disks!;
    const mount = disksSpec.mount;
    const unit = mountUnitName(mount.path);
    const steps: Step[] = [];
    const content = renderMountUnit({ where: mount.path, fsUuid: layers.fs.uuid, type: disksSpec.filesystem.type, options: disksSpec.filesystem.mountOptions });
    const unitChanged = content !== obs.mountUnit;
    const all = flatten(obs.devices);
    const ours = layers.fs.kernelPath ? all.find((x) => x.path === layers.fs.kernelPath) : undefined;
    const mounted = ours?.mountpoints.includes(mount.path) ?? false;
    // lsblk shows an array and what sits on it under each member disk: compare devices by path.
    const other = all.find((x) => x.path !== layers.fs.kernelPath && x.mountpoints.includes(mount.path));
    if (other)
      throw new BosunError(
        'E_REFUSED',
        `disks: ${other.path} is already mounted at ${mount.path}; refusing to mount the data volume over it; nothing was changed`,
        { device: other.path },
      );
    if (unitChanged) {
      steps.push({
        kind: 'write',
        phase: 'disks',
        path: mountUnitPath(mount.path),
        mode: 0o644,
        content,
        why: obs.mountUnit === undefined ? 'the mount unit for the data volume' : 'the mount unit differs from the spec',
      });
      steps.push({ kind: 'unit', phase: 'disks', action: 'daemon-reload', why: 'systemd must read the new mount unit' });
    }
    if (!mounted) steps.push({ kind: 'unit', phase: 'disks', action: 'start', unit, why: `mount the data volume at ${mount.path}` });
    else if (unitChanged) steps.push({ kind: 'unit', phase: 'disks', action: 'reload', unit, why: 'remount with the options the spec now gives' });
    const uid = resolveId(mount.owner, obs.passwd, 'user');
    const gid = resolveId(mount.group, obs.group, 'group');
    const mode = parseInt(mount.mode, 8);
    const st = mounted ? obs.mountPoint : undefined;
    if ((uid !== undefined && st?.uid !== uid) || (gid !== undefined && st?.gid !== gid)) {
      steps.push(
        step.exec(
          ['chown', `${uid ?? ''}:${gid ?? ''}`.replace(/:$/, ''), mount.path],
          `the data volume belongs to ${mount.owner ?? '(unchanged)'}${mount.group !== undefined ? `:${mount.group}` : ''}`,
        ),
      );
    }
    if (st?.mode !== mode) steps.push(step.exec(['chmod', mount.mode.padStart(4, '0'), mount.path], `the data volume's mode is ${mount.mode}`));
    return steps;
  },
);

export const diskStages: readonly Phase<ObservedDisks>[] = [raidStage, luksStage, filesystemStage, mountStage];

/** md chunk in KiB and number of data-bearing disks, for filesystem stripe alignment. */
function stripe(d: DisksSpec): { su?: number; sw: number } {
  if (!d.raid || d.raid.level === 1) return { sw: 1 };
  const n = 'paths' in d.devices ? d.devices.paths.length : (d.devices.match.count ?? 0);
  if (n < 2) return { sw: 1 };
  const chunk = d.raid.chunkKiB ?? 512;
  return { su: chunk, sw: d.raid.level === 10 ? Math.max(1, Math.floor(n / 2)) : n };
}

/** Replace the lines `match` selects with `line` (or append it), leaving every other line alone. */
function withLine(text: string | undefined, match: (line: string) => boolean, line: string): string {
  const lines = (text ?? '').split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  const i = lines.findIndex(match);
  const kept = lines.filter((l, j) => j === i || !match(l));
  if (i >= 0) kept[kept.indexOf(lines[i]!)] = line;
  else kept.push(line);
  return kept.join('\n') + '\n';
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function resolveId(who: string | number | undefined, db: string | undefined, what: 'user' | 'group'): number | undefined {
  if (who === undefined || typeof who === 'number') return who;
  const row = (db ?? '').split('\n').find((l) => l.split(':')[0] === who);
  const id = row?.split(':')[2];
  if (id === undefined) throw new BosunError('E_REFUSED', `disks: the ${what} "${who}" for the data volume does not exist on this host; nothing was changed`);
  return Number(id);
}

/** The disks a blank host of this spec would have, for `bosun plan --blank`. */
function blankHost(d: DisksSpec): ObservedDisks {
  const size = Math.max(100, 'match' in d.devices ? (d.devices.match.minSizeGiB ?? 0) : 0) * 2 ** 30;
  const disk = (path: string, model: string, transport: string): BlockDevice => ({
    path,
    type: 'disk',
    sizeBytes: size,
    model,
    transport,
    readOnly: false,
    mountpoints: [],
    children: [],
  });
  if ('paths' in d.devices) {
    const byId = d.devices.paths.map((p, i) => ({ name: p, target: p.startsWith('/dev/disk/') ? `/dev/sd${String.fromCharCode(98 + i)}` : p }));
    return { devices: byId.map((b) => disk(b.target, 'disk', 'sata')), byId: byId.filter((b) => b.name !== b.target), signatures: {}, arrays: [] };
  }
  const n = d.devices.match.count ?? (d.raid ? 2 : 1);
  const nvme = d.devices.match.kind === 'nvme-instance-store';
  const devices = Array.from({ length: n }, (_, i) => disk(`/dev/nvme${i + 1}n1`, nvme ? 'Amazon EC2 NVMe Instance Storage' : 'disk', 'nvme'));
  const byId = devices.map((x, i) => ({
    name: `/dev/disk/by-id/nvme-${nvme ? 'Amazon_EC2_NVMe_Instance_Storage' : 'disk'}_AWS${String(i + 1).padStart(17, '0')}`,
    target: x.path,
  }));
  return { devices, byId, signatures: {}, arrays: [] };
}
