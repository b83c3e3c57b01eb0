import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Step } from '../../src/engine/step.js';
import { isBosunError } from '../../src/errors.js';
import { DISTROS } from '../../src/host/distro.js';
import { diskStages } from '../../src/phases/disks/index.js';
import { escapeUnitPath, renderMountUnit } from '../../src/phases/disks/mount.js';
import { parseExport, parseLsblk, parseWipefs, type BlockDevice, type ObservedDisks, type Signature } from '../../src/phases/disks/observe.js';
import { plannedUuid } from '../../src/phases/disks/uuid.js';
import { parseNodeSpec } from '../../src/spec/validate.js';
import type { NodeSpec } from '../../src/spec/node-spec.js';

const ctx = { distro: DISTROS.fedora };

function spec(disks: Record<string, unknown>): NodeSpec {
  const r = parseNodeSpec({ apiVersion: 'bosun/v1', cluster: 'pg-main', node: 'node-a', version: 3, disks });
  assert.ok(r.ok, r.ok ? '' : JSON.stringify(r.problems));
  return r.value;
}

const SEALED = { sealed: `bosun-sealed-v1.${'A'.repeat(80)}` };
const raid1Luks = (extra: Record<string, unknown> = {}) =>
  spec({
    devices: { paths: ['/dev/disk/by-id/virtio-d1', '/dev/disk/by-id/virtio-d2'] },
    raid: { level: 1, name: 'data' },
    luks: { name: 'data', key: SEALED },
    filesystem: { type: 'xfs' },
    mount: { path: '/var/lib/bosun/data', owner: 26, group: 26, mode: '0700' },
    ...extra,
  });

const GiB = 2 ** 30;
const disk = (path: string, children: BlockDevice[] = [], extra: Partial<BlockDevice> = {}): BlockDevice => ({
  path,
  type: 'disk',
  sizeBytes: 512 * GiB,
  readOnly: false,
  mountpoints: [],
  children,
  ...extra,
});
const node = (path: string, type: string, children: BlockDevice[] = [], mountpoints: string[] = []): BlockDevice => ({
  path,
  type,
  sizeBytes: 500 * GiB,
  readOnly: false,
  mountpoints,
  children,
});
const sig = (type: string, label?: string, uuid?: string): Signature => ({ type, offset: '0x0', label, uuid });

const MD_UUID = '11111111222222223333333344444444';
const LUKS_UUID = 'aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee';
const FS_UUID = '12345678-1234-1234-1234-123456789abc';
const byId = [
  { name: '/dev/disk/by-id/virtio-d1', target: '/dev/vdb' },
  { name: '/dev/disk/by-id/virtio-d2', target: '/dev/vdc' },
];

/** A host with the example layout in a given state of completion. */
function host(state: 'blank' | 'built' | 'rebooted' | 'md-only' | 'luks-empty'): ObservedDisks {
  const root = disk('/dev/vda', [], { mountpoints: ['/'] });
  const files = {
    mdadmConf: `# local\nDEVICE partitions\nARRAY /dev/md/data metadata=1.2 UUID=11111111:22222222:33333333:44444444 name=data\n`,
    crypttab: `swap /dev/vda3 /dev/urandom swap\ndata UUID=${LUKS_UUID} none luks,discard,noauto\n`,
    mountUnit: renderMountUnit({ where: '/var/lib/bosun/data', fsUuid: FS_UUID, type: 'xfs', options: ['noatime'] }),
  };
  const member = (p: string) => ({
    [p]: [
      sig('linux_raid_member', 'data', '11111111-2222-2222-3333-333344444444'.replace(/-/g, '').replace(/(.{8})(.{4})(.{4})(.{4})(.{12})/, '$1-$2-$3-$4-$5')),
    ],
  });
  const md = {
    path: '/dev/md127',
    name: 'data',
    uuid: MD_UUID,
    level: 'raid1',
    raidDevices: 2,
    state: 'clean',
    degraded: 0,
    members: ['/dev/vdb', '/dev/vdc'],
  };
  switch (state) {
    case 'blank':
      return {
        devices: [root, disk('/dev/vdb'), disk('/dev/vdc')],
        byId,
        signatures: { '/dev/vda': [sig('gpt')], '/dev/vdb': [], '/dev/vdc': [] },
        arrays: [],
      };
    case 'rebooted':
      return { devices: [root, disk('/dev/vdb'), disk('/dev/vdc')], byId, signatures: { ...member('/dev/vdb'), ...member('/dev/vdc') }, arrays: [], ...files };
    case 'md-only': {
      const mdNode = node('/dev/md127', 'raid1');
      return {
        devices: [root, disk('/dev/vdb', [mdNode]), disk('/dev/vdc', [mdNode])],
        byId,
        signatures: { ...member('/dev/vdb'), ...member('/dev/vdc'), '/dev/md127': [] },
        arrays: [md],
        mdadmConf: files.mdadmConf,
      };
    }
    case 'luks-empty': {
      const mdNode = node('/dev/md127', 'raid1', [node('/dev/mapper/data', 'crypt')]);
      return {
        devices: [root, disk('/dev/vdb', [mdNode]), disk('/dev/vdc', [mdNode])],
        byId,
        signatures: { ...member('/dev/vdb'), ...member('/dev/vdc'), '/dev/md127': [sig('crypto_LUKS', 'bosun-data', LUKS_UUID)], '/dev/mapper/data': [] },
        arrays: [md],
        mdadmConf: files.mdadmConf,
        crypttab: files.crypttab,
      };
    }
    case 'built': {
      // lsblk lists the array and what sits on it under each member: two objects, one device.
      const mdNode = () => node('/dev/md127', 'raid1', [node('/dev/mapper/data', 'crypt', [], ['/var/lib/bosun/data'])]);
      return {
        devices: [root, disk('/dev/vdb', [mdNode()]), disk('/dev/vdc', [mdNode()])],
        byId,
        signatures: {
          ...member('/dev/vdb'),
          ...member('/dev/vdc'),
          '/dev/md127': [sig('crypto_LUKS', 'bosun-data', LUKS_UUID)],
          '/dev/mapper/data': [sig('xfs', 'bosun-data', FS_UUID)],
        },
        arrays: [md],
        ...files,
        mountPoint: { uid: 26, gid: 26, mode: 0o700 },
      };
    }
  }
}

/** Plan every disk stage against one observation (as `bosun plan` does) and show each step in one line. */
function planAll(s: NodeSpec, obs: ObservedDisks): string[] {
  return diskStages.flatMap((st) => (st.section(s) === undefined ? [] : st.plan(s, obs, ctx))).map(show);
}

function show(s: Step): string {
  switch (s.kind) {
    case 'exec':
      return `${s.destructive ? '!' : ''}${s.argv.join(' ')}`;
    case 'write':
      return `write ${s.path}`;
    case 'unit':
      return `systemctl ${s.action}${s.unit ? ` ${s.unit}` : ''}`;
    case 'wait':
      return `wait ${s.path}`;
    default:
      return s.kind;
  }
}

const mdUuid = plannedUuid({ cluster: 'pg-main', node: 'node-a', version: 3 }, 'md')
  .replace(/-/g, '')
  .replace(/(.{8})(.{8})(.{8})(.{8})/, '$1:$2:$3:$4');
const luksUuid = plannedUuid({ cluster: 'pg-main', node: 'node-a', version: 3 }, 'luks');
const fsUuid = plannedUuid({ cluster: 'pg-main', node: 'node-a', version: 3 }, 'fs');

describe('disks phase planning', () => {
  it('blank disks: create the array, LUKS2, xfs, the mount; only formatting steps are destructive', () => {
    assert.deepEqual(planAll(raid1Luks(), host('blank')), [
      `!mdadm --create /dev/md/data --run --metadata=1.2 --level=1 --raid-devices=2 --name=data --homehost=any --uuid=${mdUuid} --bitmap=internal /dev/vdb /dev/vdc`,
      'wait /dev/md/data',
      'write /etc/mdadm.conf',
      `!cryptsetup luksFormat --type luks2 --batch-mode --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --hash sha256 --cipher aes-xts-plain64 --key-size 512 --label bosun-data --uuid ${luksUuid} --key-file=- /dev/md/data`,
      'cryptsetup open --type luks2 --key-file=- --allow-discards /dev/md/data data',
      'wait /dev/mapper/data',
      'write /etc/crypttab',
      `!mkfs.xfs -q -f -K -L bosun-data -m uuid=${fsUuid} /dev/mapper/data`,
      `wait /dev/disk/by-uuid/${fsUuid}`,
      'write /etc/systemd/system/var-lib-bosun-data.mount',
      'systemctl daemon-reload',
      'systemctl start var-lib-bosun-data.mount',
      'chown 26:26 /var/lib/bosun/data',
      'chmod 0700 /var/lib/bosun/data',
    ]);
  });

  it('the key reaches cryptsetup on stdin as a sealed reference, never in argv', () => {
    const steps = diskStages.flatMap((st) => st.plan(raid1Luks(), host('blank'), ctx));
    const format = steps.find((s) => s.kind === 'exec' && s.argv[1] === 'luksFormat');
    assert.ok(format && format.kind === 'exec');
    assert.deepEqual(format.stdin, [{ secret: SEALED, label: 'disks.luks.key' }]);
    assert.ok(!steps.some((s) => s.kind === 'exec' && s.argv.some((a) => a.includes('bosun-sealed'))));
  });

  it('a built host: every stage plans nothing', () => {
    assert.deepEqual(planAll(raid1Luks(), host('built')), []);
  });

  it('after a reboot: assemble, open, mount; nothing re-created or re-formatted', () => {
    assert.deepEqual(planAll(raid1Luks(), host('rebooted')), [
      'mdadm --assemble /dev/md/data --run --uuid=11111111:22222222:33333333:44444444 /dev/vdb /dev/vdc',
      'wait /dev/md/data',
      'cryptsetup open --type luks2 --key-file=- --allow-discards /dev/md/data data',
      'wait /dev/mapper/data',
      'systemctl start var-lib-bosun-data.mount',
      'chown 26:26 /var/lib/bosun/data',
      'chmod 0700 /var/lib/bosun/data',
    ]);
  });

  it('half-built (crash after the array was made): formats LUKS on the empty array, keeps the array', () => {
    const steps = planAll(raid1Luks(), host('md-only'));
    assert.ok(!steps.some((s) => s.includes('mdadm --create')));
    // The running array is named by its kernel device: after a reboot the /dev/md/data link may not exist.
    assert.equal(
      steps[0],
      `!cryptsetup luksFormat --type luks2 --batch-mode --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --hash sha256 --cipher aes-xts-plain64 --key-size 512 --label bosun-data --uuid ${luksUuid} --key-file=- /dev/md127`,
    );
    assert.ok(steps.some((s) => s.startsWith('!mkfs.xfs')));
  });

  it('half-built (crash after LUKS was opened): makes the filesystem only', () => {
    const steps = planAll(raid1Luks(), host('luks-empty'));
    assert.deepEqual(
      steps.filter((s) => s.startsWith('!')),
      [`!mkfs.xfs -q -f -K -L bosun-data -m uuid=${fsUuid} /dev/mapper/data`],
    );
    assert.ok(!steps.some((s) => s.includes('crypttab')), 'crypttab already right');
  });

  it('refuses a disk with a foreign filesystem and names it', () => {
    const obs = host('blank');
    obs.signatures['/dev/vdc'] = [sig('ext4', 'old-data')];
    assert.throws(
      () => planAll(raid1Luks(), obs),
      (e) => isBosunError(e) && e.code === 'E_REFUSED' && /virtio-d2 holds ext4, which bosun did not make; leaving it untouched/.test(e.message),
    );
  });

  it('wipes a foreign disk only when the spec allows it, after stopping a stale array on it', () => {
    const obs = host('blank');
    obs.signatures['/dev/vdc'] = [sig('linux_raid_member', 'otherhost:old', 'ffff')];
    obs.devices[2] = disk('/dev/vdc', [node('/dev/md126', 'raid1')]);
    const steps = planAll(raid1Luks({ foreignSignatures: 'wipe' }), obs);
    assert.deepEqual(steps.slice(0, 3), ['mdadm --stop /dev/md126', '!wipefs --all /dev/vdc', steps[2]]);
    assert.match(steps[2]!, /^!mdadm --create .* \/dev\/vdb \/dev\/vdc$/);
  });

  it('never wipes a mounted disk, whatever the policy', () => {
    const obs = host('blank');
    obs.signatures['/dev/vdc'] = [sig('ext4')];
    obs.devices[2] = disk('/dev/vdc', [], { mountpoints: ['/srv'] });
    assert.throws(() => planAll(raid1Luks({ foreignSignatures: 'wipe' }), obs), /will not wipe a disk that is in use: \/dev\/vdc is mounted at \/srv/);
  });

  it('a RAID1 that lost a disk: assemble degraded, add the blank replacement', () => {
    const obs = host('rebooted');
    obs.signatures['/dev/vdc'] = [];
    const steps = planAll(raid1Luks(), obs);
    assert.deepEqual(steps.slice(0, 3), [
      'mdadm --assemble /dev/md/data --run --uuid=11111111:22222222:33333333:44444444 /dev/vdb',
      'wait /dev/md/data',
      'mdadm --manage /dev/md/data --add /dev/vdc',
    ]);
    assert.ok(!steps.some((s) => s.startsWith('!')));
  });

  it('a RAID0 that lost a disk is refused', () => {
    const s = raid1Luks({ raid: { level: 0, name: 'data' } });
    const obs = host('rebooted');
    obs.signatures['/dev/vdc'] = [];
    assert.throws(() => planAll(s, obs), /RAID0 array "data" cannot take the new disk/);
  });

  it('refuses to format over a filesystem of another type inside its own volume', () => {
    const s = raid1Luks({ filesystem: { type: 'ext4' } });
    assert.throws(() => planAll(s, host('built')), /holds xfs but the spec asks for ext4; refusing to format over existing data/);
  });

  it('match rules must find exactly the count they name', () => {
    const s = spec({ devices: { match: { kind: 'any', count: 3 } }, raid: { level: 0 }, filesystem: { type: 'ext4' }, mount: { path: '/data' } });
    assert.throws(
      () => planAll(s, host('blank')),
      /wants exactly 3 disks but 2 match \(\/dev\/disk\/by-id\/virtio-d1 512\.0 GiB, \/dev\/disk\/by-id\/virtio-d2 512\.0 GiB\)/,
    );
  });

  it('a match rule skips the root disk and disks with foreign data, and finds its own disks again after a reboot', () => {
    const s = spec({
      devices: { match: { kind: 'any', count: 2, minSizeGiB: 100 } },
      raid: { level: 1, name: 'data' },
      luks: { name: 'data', key: SEALED },
      filesystem: { type: 'xfs' },
      mount: { path: '/var/lib/bosun/data' },
    });
    const obs = host('rebooted');
    obs.devices.push(disk('/dev/vdd'));
    obs.signatures['/dev/vdd'] = [sig('xfs', 'someone')];
    assert.match(planAll(s, obs)[0]!, /^mdadm --assemble \/dev\/md\/data --run --uuid=\S+ \/dev\/vdb \/dev\/vdc$/);
  });

  it('RAID0 and RAID10 filesystems are aligned to the stripe', () => {
    const paths = ['/dev/vdb', '/dev/vdc', '/dev/vdd', '/dev/vde'];
    const obs: ObservedDisks = { devices: paths.map((p) => disk(p)), byId: [], signatures: {}, arrays: [] };
    const xfs0 = planAll(spec({ devices: { paths }, raid: { level: 0, chunkKiB: 256 }, filesystem: { type: 'xfs' }, mount: { path: '/d' } }), obs);
    assert.match(
      xfs0.find((x) => x.startsWith('!mkfs'))!,
      / -d su=256k,sw=4 \/dev\/md\/data$/,
    );
    const ext10 = planAll(spec({ devices: { paths }, raid: { level: 10 }, filesystem: { type: 'ext4' }, mount: { path: '/d' } }), obs);
    assert.match(
      ext10.find((x) => x.startsWith('!mkfs'))!,
      / -E nodiscard,stride=128,stripe_width=256 \/dev\/md\/data$/,
    );
  });

  it('keeps other lines of mdadm.conf and crypttab and replaces only its own', () => {
    const obs = host('built');
    obs.mdadmConf =
      'MAILADDR root\nARRAY /dev/md/data metadata=1.2 UUID=00000000:00000000:00000000:00000000 name=data\nARRAY /dev/md/other UUID=99999999:99999999:99999999:99999999\n';
    const st = diskStages[0]!;
    const write = st.plan(raid1Luks(), obs, ctx).find((s) => s.kind === 'write');
    assert.ok(write && write.kind === 'write');
    assert.equal(
      write.content,
      'MAILADDR root\nARRAY /dev/md/data metadata=1.2 UUID=11111111:22222222:33333333:44444444 name=data\nARRAY /dev/md/other UUID=99999999:99999999:99999999:99999999\n',
    );
  });

  it('refuses when something else is mounted at the mount point, or the owner is unknown', () => {
    const obs = host('rebooted');
    obs.devices.push(disk('/dev/vdz', [], { mountpoints: ['/var/lib/bosun/data'] }));
    obs.signatures['/dev/vdz'] = [sig('ext4')];
    assert.throws(() => planAll(raid1Luks(), obs), /\/dev\/vdz is already mounted at \/var\/lib\/bosun\/data/);
    const named = raid1Luks({ mount: { path: '/var/lib/bosun/data', owner: 'postgres' } });
    assert.throws(() => planAll(named, { ...host('built'), passwd: 'root:x:0:0::/root:/bin/sh\n' }), /the user "postgres" for the data volume does not exist/);
    assert.ok(!planAll(named, { ...host('built'), passwd: 'postgres:x:26:26::/var/lib/pgsql:/bin/sh\n', mountPoint: { uid: 26, gid: 0, mode: 0o750 } }).length);
  });
});

describe('disks observation parsing', () => {
  it('reads lsblk trees with stacked devices', () => {
    const devs = parseLsblk(
      JSON.stringify({
        blockdevices: [
          {
            name: '/dev/vdb',
            type: 'disk',
            size: 536870912,
            tran: null,
            model: null,
            serial: 'd1',
            ro: false,
            fstype: 'linux_raid_member',
            uuid: 'x',
            label: 'any:data',
            mountpoints: [null],
            children: [
              {
                name: '/dev/md127',
                type: 'raid1',
                size: 535822336,
                ro: false,
                fstype: 'crypto_LUKS',
                mountpoints: [null],
                children: [{ name: '/dev/mapper/data', type: 'crypt', size: 519045120, ro: false, fstype: 'xfs', mountpoints: ['/var/lib/bosun/data'] }],
              },
            ],
          },
        ],
      }),
    );
    assert.equal(devs[0]!.serial, 'd1');
    assert.deepEqual(devs[0]!.mountpoints, []);
    assert.deepEqual(devs[0]!.children[0]!.children[0]!.mountpoints, ['/var/lib/bosun/data']);
  });

  it('reads wipefs and mdadm --export output', () => {
    assert.deepEqual(parseWipefs('{"signatures": [{"device":"vdb","offset":"0x1000","type":"linux_raid_member","uuid":"1a2b","label":"any:data"}]}'), [
      { type: 'linux_raid_member', offset: '0x1000', uuid: '1a2b', label: 'any:data' },
    ]);
    assert.deepEqual(parseWipefs(''), []);
    // LUKS2's primary and secondary headers are one signature; two different things are two.
    const luks2 = parseWipefs(
      '{"signatures": [{"offset":"0x0","type":"crypto_LUKS","uuid":"u1","label":"bosun-data"},{"offset":"0x4000","type":"crypto_LUKS","uuid":"u1","label":"bosun-data"}]}',
    );
    assert.deepEqual(
      luks2.map((x) => x.offset),
      ['0x0'],
    );
    assert.equal(parseWipefs('{"signatures": [{"offset":"0x0","type":"crypto_LUKS","uuid":"u1"},{"offset":"0x438","type":"ext4","uuid":"u2"}]}').length, 2);
    const ex = parseExport('MD_LEVEL=raid1\nMD_DEVICES=2\nMD_NAME=any:data\nMD_UUID=11111111:22222222:33333333:44444444\nMD_DEVICE_dev_vdb_DEV=/dev/vdb\n');
    assert.equal(ex.get('MD_NAME'), 'any:data');
    assert.equal(ex.get('MD_DEVICE_dev_vdb_DEV'), '/dev/vdb');
  });

  it('escapes mount unit names as systemd-escape --path does', () => {
    assert.equal(escapeUnitPath('/var/lib/bosun/data'), 'var-lib-bosun-data');
    assert.equal(escapeUnitPath('/srv/my-data/'), 'srv-my\\x2ddata');
    assert.equal(escapeUnitPath('/'), '-');
    assert.equal(escapeUnitPath('/mnt/.hidden'), 'mnt-\\x2ehidden');
  });

  it('plans UUIDs that are stable for a spec version and distinct per role and node', () => {
    const a = plannedUuid({ cluster: 'c', node: 'n', version: 1 }, 'fs');
    assert.equal(a, plannedUuid({ cluster: 'c', node: 'n', version: 1 }, 'fs'));
    assert.notEqual(a, plannedUuid({ cluster: 'c', node: 'm', version: 1 }, 'fs'));
    assert.notEqual(a, plannedUuid({ cluster: 'c', node: 'n', version: 1 }, 'luks'));
    assert.match(a, /^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });
});

describe('disks health', () => {
  it('reports a degraded array, a closed volume and a missing mount', async () => {
    const { disksHealth } = await import('../../src/phases/disks/health.js');
    const built = host('built');
    const ok = disksHealth(raid1Luks(), built, { sizeBytes: 100, usedBytes: 10, availBytes: 90 });
    assert.deepEqual([ok.ok, ok.problems], [true, []]);
    built.arrays[0] = { ...built.arrays[0]!, degraded: 1, syncAction: 'recover', members: ['/dev/vdb'] };
    const bad = disksHealth(raid1Luks(), built, { sizeBytes: 100, usedBytes: 97, availBytes: 3 });
    assert.deepEqual(bad.problems, ['array data is degraded: 1 of 2 members missing, recover', '/var/lib/bosun/data is 97% full']);
    const down = disksHealth(raid1Luks(), host('rebooted'));
    assert.deepEqual(down.problems, ['array data is not assembled', 'LUKS volume data is not open', '/var/lib/bosun/data is not mounted']);
  });
});
