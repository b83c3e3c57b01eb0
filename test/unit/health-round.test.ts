import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { collectHealth, healthUnits } from '../../src/health/collect.js';
import type { ExecResult } from '../../src/host/exec.js';
import type { HostProbe } from '../../src/host/probe.js';
import { showUnits, withUnitStates } from '../../src/host/unit-states.js';
import { loadExample } from '../helpers.js';

// A health round runs every interval on every host, so what it costs is a test's business: which commands it
// spawns (each costs a small guest ~0.2-0.4 s of CPU under TCG), not only what it reports.

const LSBLK = JSON.stringify({
  blockdevices: ['/dev/nvme1n1', '/dev/nvme2n1'].map((disk) => ({
    name: disk,
    type: 'disk',
    size: 107374182400,
    ro: false,
    fstype: 'linux_raid_member',
    mountpoints: [null],
    children: [
      {
        name: '/dev/md127',
        type: 'raid1',
        size: 107240000000,
        ro: false,
        fstype: 'crypto_LUKS',
        mountpoints: [null],
        children: [{ name: '/dev/mapper/data', type: 'crypt', size: 107200000000, ro: false, fstype: 'xfs', mountpoints: ['/var/lib/bosun/data'] }],
      },
    ],
  })),
});

const UNIT_BLOCK = (active: string): string => `LoadState=loaded\nActiveState=${active}\nUnitFileState=enabled\n`;

interface FakeHost {
  probe: HostProbe;
  ran: string[][];
  asked: string[];
}

/** A host where the data volume is up, the mesh has an SA with node-b only, and the machine's leader is `leader`. */
function healthyHost(opts: { leader?: string; unitsAnswer?: (units: string[]) => ExecResult } = {}): FakeHost {
  const ran: string[][] = [];
  const asked: string[] = [];
  const ok = (stdout: string): ExecResult => ({ exitCode: 0, stdout, stderr: '' });
  const run = (argv: readonly string[]): Promise<ExecResult> => {
    ran.push([...argv]);
    const line = argv.join(' ');
    if (argv[0] === 'lsblk') return Promise.resolve(ok(LSBLK));
    if (line.startsWith('mdadm --detail --export /dev/md127'))
      return Promise.resolve(
        ok(
          'MD_LEVEL=raid1\nMD_DEVICES=2\nMD_NAME=host:data\nMD_UUID=0a1b2c3d:4e5f6071:8293a4b5:c6d7e8f9\nMD_DEVICE_dev_nvme1n1_DEV=/dev/nvme1n1\nMD_DEVICE_dev_nvme2n1_DEV=/dev/nvme2n1\n',
        ),
      );
    if (argv[0] === 'systemctl' && argv[1] === 'show') {
      const units = argv.slice(argv.indexOf('--') + 1);
      return Promise.resolve(opts.unitsAnswer?.(units) ?? ok(units.map(() => UNIT_BLOCK('active')).join('\n')));
    }
    if (line === 'ipsec --version') return Promise.resolve(ok('Libreswan 4.10\n'));
    if (line === 'ipsec status')
      return Promise.resolve(ok('000 "bosun-node-b": fd00:b05:0:1::a...fd00:b05:0:1::b\n000 "bosun-node-c": fd00:b05:0:1::a...fd00:b05:0:1::c\n'));
    if (line === 'ipsec trafficstatus') return Promise.resolve(ok('006 #2: "bosun-node-b", type=ESP, add_time=1, inBytes=100, outBytes=200, maxBytes=2^63B\n'));
    if (argv[0] === 'nft') return Promise.resolve(ok('table inet bosun_ipsec {}\n'));
    if (argv[0] === 'machinectl') return Promise.resolve(ok(`State=running\nLeader=${opts.leader ?? '4242'}\n`));
    if (argv[0] === 'nsenter') return Promise.resolve(ok(argv.includes('is-active') && !argv.includes('--quiet') ? 'active\n' : ''));
    return Promise.resolve({ exitCode: 1, stdout: '', stderr: `not on this fake host: ${line}` });
  };
  const probe: HostProbe = {
    blank: false,
    readFile: (path) =>
      Promise.resolve(
        path.startsWith('/sys/block/md127/md/') ? Buffer.from({ array_state: 'clean', degraded: '0', sync_action: 'idle' }[path.slice(20)] ?? '') : undefined,
      ),
    unitState: (unit) => {
      asked.push(unit);
      return Promise.resolve({ enabled: 'enabled', active: 'active' });
    },
    run,
    links: () => Promise.resolve([]),
    listDir: () => Promise.resolve([]),
    stat: () => Promise.resolve(undefined),
    usage: () => Promise.resolve({ sizeBytes: 1000, usedBytes: 100, availBytes: 900 }),
  };
  return { probe, ran, asked };
}

describe('a health round', () => {
  it('asks systemd once for every unit and spawns no wipefs, df or second machinectl', async () => {
    const spec = await loadExample('node-a');
    const host = healthyHost();
    const health = await collectHealth(spec, host.probe);
    const systemctl = host.ran.filter((argv) => argv[0] === 'systemctl');
    assert.equal(systemctl.length, 1, JSON.stringify(systemctl));
    assert.deepEqual(systemctl[0]!.slice(systemctl[0]!.indexOf('--') + 1), healthUnits(spec));
    assert.deepEqual(host.asked, [], 'no unit was asked about on its own');
    assert.deepEqual(
      host.ran.map((argv) => argv[0]),
      ['systemctl', 'lsblk', 'mdadm', 'ipsec', 'ipsec', 'nft', 'machinectl', 'nsenter', 'nsenter'],
    );
    assert.deepEqual((health.disks as { usage: unknown }).usage, { sizeBytes: 1000, usedBytes: 100, availBytes: 900 });
    assert.deepEqual(health.problems, ['network: no IPsec SA with node-c (fd00:b05:0:1::c); this node keeps retrying']);
    const peers = (health.network as { peers: { peer: string; loaded: boolean; up: boolean }[] }).peers;
    assert.deepEqual(
      peers.map((p) => [p.peer, p.loaded, p.up]),
      [
        ['node-b', true, true],
        ['node-c', true, false],
      ],
    );
  });

  it('names the units of the mesh, the auxiliary agents and the service machine', async () => {
    assert.deepEqual(healthUnits(await loadExample('node-a')), [
      'ipsec.service',
      'bosun-ipsec-policy.service',
      'telegraf.service',
      'systemd-nspawn@postgres.service',
    ]);
  });

  it("enters the machine at the leader machinectl names for the service's unit and its health check", async () => {
    const spec = await loadExample('node-a');
    const host = healthyHost({ leader: '777' });
    const health = await collectHealth(spec, host.probe);
    const entered = host.ran.filter((argv) => argv[0] === 'nsenter');
    assert.deepEqual(entered, [
      ['nsenter', '--target', '777', '--all', '--', 'systemctl', 'is-active', 'postgresql.service'],
      ['nsenter', '--target', '777', '--all', '--', 'pg_isready', '-q', '-h', '/run/postgresql'],
    ]);
    assert.deepEqual(health.container, {
      ok: true,
      machine: 'postgres',
      unit: 'active',
      state: 'running',
      service: 'active',
      healthy: true,
      problems: [],
    });
  });

  it('reports a running machine without a leader as a problem, without entering it', async () => {
    const host = healthyHost({ leader: '' });
    const health = await collectHealth(await loadExample('node-a'), host.probe);
    assert.equal(host.ran.filter((argv) => argv[0] === 'nsenter').length, 0);
    assert.ok((health.problems as string[]).includes('machine postgres has no leader process (machinectl: state running)'), String(health.problems));
    assert.equal(health.ok, false);
  });
});

describe('unit states from one systemctl show', () => {
  it('reads one block per unit in the order asked, a unit systemd does not know as not-found', async () => {
    const host = healthyHost({
      unitsAnswer: () => ({
        exitCode: 0,
        stdout: `${UNIT_BLOCK('active')}\nLoadState=not-found\nActiveState=inactive\nUnitFileState=\n\n${UNIT_BLOCK('failed')}`,
        stderr: '',
      }),
    });
    const states = await showUnits(host.probe, ['a.service', 'gone.service', 'b.service']);
    assert.deepEqual(Object.fromEntries(states), {
      'a.service': { enabled: 'enabled', active: 'active' },
      'gone.service': { enabled: 'not-found', active: 'inactive' },
      'b.service': { enabled: 'enabled', active: 'failed' },
    });
  });

  it('asks unit by unit when the answer does not have one block per unit, or systemctl fails', async () => {
    for (const answer of [
      { exitCode: 0, stdout: UNIT_BLOCK('active'), stderr: '' },
      { exitCode: 1, stdout: '', stderr: 'Failed to connect to bus' },
    ]) {
      const host = healthyHost({ unitsAnswer: () => answer });
      const probe = await withUnitStates(host.probe, ['a.service', 'b.service']);
      assert.deepEqual(await probe.unitState('b.service'), { enabled: 'enabled', active: 'active' });
      assert.deepEqual(host.asked, ['b.service']);
    }
  });
});
