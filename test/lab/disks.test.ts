// The disks phase on a real kernel: md RAID, LUKS2, xfs/ext4 and mount units
// built by the real agent from blank virtual disks, kept across a reboot,
// refused on foreign data, and a degraded array reported and
// repaired (power cuts at random points: faults.test.ts). One VM for the whole
// file; disks are reset between scenarios.
//
//   npm run build && node --test dist/test/lab/disks.test.js
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { rmSync } from 'node:fs';
import { GUEST_BOSUN, labRunDir, startLab, type Lab, type Vm } from './driver.js';
import { journalGuard } from './guard.js';
import { applyIn, guestSh, sealTo, type ApplyResult } from './guest-apply.js';

const DISK = (n: number) => `/dev/disk/by-id/virtio-bosun-disk${n}`;
const figures: Record<string, unknown> = {};
let lab: Lab | undefined;
let vm: Vm;

/** The running array's device: /dev/md/data, or /dev/md127 when the initramfs assembled it without the link. */
const MD = "$(lsblk -lnpo NAME,TYPE | awk '$2 ~ /^raid/ {print $1; exit}')";

const sh = (script: string, timeoutMs?: number): Promise<string> => guestSh(vm, script, timeoutMs);
const apply = (spec: unknown, extra: string[] = []): Promise<ApplyResult> => applyIn(vm, spec, extra);
/** This boot's sealing key seals the LUKS key (the overlay reset makes a new host). */
const sealKey = async (secret: string): Promise<{ sealed: string }> => (await sealTo(vm, secret))[0]!;

async function freshHost(): Promise<void> {
  if (vm.running) await vm.kill();
  await vm.resetDisks();
  await vm.start();
}

/** Runs a check; on failure saves the guests' journals under .cache/lab/artifacts/disks-<label>/ and names the directory in the error. */
const guarded = journalGuard('disks', () => lab);

const raid1Spec = (key: { sealed: string }, version = 1) => ({
  apiVersion: 'bosun/v1',
  cluster: 'lab',
  node: 'disks-a',
  version,
  disks: {
    devices: { paths: [DISK(1), DISK(2)] },
    raid: { level: 1, name: 'data' },
    luks: { name: 'data', key },
    filesystem: { type: 'xfs' },
    mount: { path: '/var/lib/bosun/data', owner: 1234, group: 1234, mode: '0750' },
  },
});

describe('disks phase in a VM', { timeout: 45 * 60_000 }, () => {
  before(async () => {
    // Pristine root and disks: a run dir left by an earlier run keeps its overlay and disk images.
    rmSync(labRunDir('disks'), { recursive: true, force: true });
    lab = await startLab({ name: 'disks', nodes: [{ name: 'disks-a', disks: [512, 512, 512, 512].map((sizeMiB) => ({ sizeMiB })) }] });
    vm = lab.vm('disks-a');
  });

  after(async () => {
    process.stderr.write(`[lab] disks figures: ${JSON.stringify(figures)}\n`);
    await lab?.stop();
  });

  it('builds RAID1 + LUKS2 + xfs from blank disks, does nothing on a re-run, and keeps everything across a reboot', () =>
    guarded('raid1', async () => {
      const key = await sealKey(randomBytes(64).toString('base64'));
      const first = await apply(raid1Spec(key));
      assert.equal(first.code, 0, first.stderr);
      assert.equal(first.out.result, 'applied');
      figures.blankApplyMs = first.ms;
      figures.blankAgentMs = first.out.durationMs;
      assert.match(await sh('cat /proc/mdstat'), /md\d+ : active raid1 vd[bc]\[\d\] vd[bc]\[\d\]/);
      assert.match(await sh('cryptsetup status data'), /is active/);
      assert.match(await sh('cryptsetup luksDump /dev/md/data'), /Version:\s+2[\s\S]*PBKDF:\s+pbkdf2/);
      assert.equal(await sh('findmnt -n -o FSTYPE,SOURCE /var/lib/bosun/data'), 'xfs    /dev/mapper/data');
      assert.equal(await sh("stat -c '%u:%g %a' /var/lib/bosun/data"), '1234:1234 750');
      assert.match(await sh('cat /etc/mdadm/mdadm.conf'), /^ARRAY \/dev\/md\/data metadata=1\.2 UUID=[0-9a-f:]{35} name=data$/m);
      assert.match(await sh('cat /etc/crypttab'), /^data UUID=[0-9a-f-]{36} none luks,discard,noauto$/m);
      const sum = await sh('head -c 8M /dev/urandom > /var/lib/bosun/data/f && sync && sha256sum /var/lib/bosun/data/f');
      const ids = await sh(`blkid -s UUID -o value ${MD}; blkid -s UUID -o value /dev/mapper/data`);

      const again = await apply(raid1Spec(key));
      assert.equal(again.code, 0, again.stderr);
      assert.equal(again.out.result, 'unchanged', 'a built host needs nothing');
      figures.rerunApplyMs = again.ms;
      figures.rerunAgentMs = again.out.durationMs;

      await vm.reboot();
      const plan = await vm.exec([...GUEST_BOSUN, 'plan', '/root/spec.json', '--json']);
      assert.equal(plan.exitCode, 0, plan.stderr);
      const steps = (JSON.parse(plan.stdout) as { steps: { argv?: string[]; destructive?: boolean }[] }).steps;
      assert.deepEqual(
        steps.filter((s) => s.destructive),
        [],
        'nothing is formatted after a reboot',
      );
      assert.ok(
        steps.some((s) => s.argv?.join(' ').startsWith('cryptsetup open')),
        'the volume is opened again',
      );
      const after = await apply(raid1Spec(key));
      assert.equal(after.code, 0, after.stderr);
      figures.afterRebootApplyMs = after.ms;
      assert.equal(await sh('sha256sum /var/lib/bosun/data/f'), sum, 'data written before the reboot is still there');
      assert.equal(await sh(`blkid -s UUID -o value ${MD}; blkid -s UUID -o value /dev/mapper/data`), ids, 'same LUKS header and filesystem');
    }));

  it('reports a RAID1 that lost a member as degraded, and rebuilds onto a blank replacement', () =>
    guarded('degraded', async () => {
      await sh(`MD=${MD}; mdadm $MD --fail /dev/vdc && mdadm $MD --remove /dev/vdc && wipefs -a -q /dev/vdc`);
      const st = await vm.exec([...GUEST_BOSUN, 'status', '--health', '--json']);
      assert.equal(st.exitCode, 0, st.stderr);
      const health = (JSON.parse(st.stdout) as { health: { ok: boolean; problems: string[] } }).health;
      assert.equal(health.ok, false);
      assert.ok(
        health.problems.some((p) => /array data is degraded: 1 of 2 members missing/.test(p)),
        JSON.stringify(health),
      );
      const spec = JSON.parse(await sh('cat /root/spec.json')) as unknown;
      const r = await apply(spec);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /mdadm --manage \/dev\/md(\/data|\d+) --add \/dev\/vdc/);
      assert.match(await sh(`mdadm --detail ${MD}`), /Raid Devices : 2[\s\S]*(Active Devices : 2|Rebuild Status|recovering|spare rebuilding)/);
    }));

  it('refuses a disk that holds a filesystem bosun did not make, and leaves it untouched', () =>
    guarded('foreign', async () => {
      await sh('mkfs.ext4 -q -F -L someones /dev/vdd');
      const r = await apply({
        apiVersion: 'bosun/v1',
        cluster: 'lab',
        node: 'disks-a',
        version: 50,
        disks: { devices: { paths: [DISK(3)] }, filesystem: { type: 'xfs' }, mount: { path: '/srv/other' } },
      });
      assert.equal(r.code, 6, r.stderr);
      assert.match(r.stderr, /virtio-bosun-disk3 holds ext4, which bosun did not make; leaving it untouched/);
      assert.equal(await sh('blkid -s TYPE -s LABEL -o value /dev/vdd | tr "\\n" " "'), 'someones ext4');
    }));

  it('builds RAID10 + ext4 without LUKS on four disks, aligned to the stripe', () =>
    guarded('raid10', async () => {
      await freshHost();
      const r = await apply({
        apiVersion: 'bosun/v1',
        cluster: 'lab',
        node: 'disks-a',
        version: 1,
        disks: {
          devices: { paths: [1, 2, 3, 4].map(DISK) },
          raid: { level: 10, name: 'data' },
          filesystem: { type: 'ext4' },
          mount: { path: '/srv/data', mode: '0700' },
        },
      });
      assert.equal(r.code, 0, r.stderr);
      assert.match(await sh('cat /proc/mdstat'), /active raid10( vd[b-e]\[\d\]){4}/);
      assert.equal(await sh('findmnt -n -o FSTYPE /srv/data'), 'ext4');
      assert.match(await sh('tune2fs -l /dev/md/data'), /RAID stride:\s+128[\s\S]*RAID stripe width:\s+256/);
    }));
});
