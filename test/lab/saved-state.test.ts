// Guests started from the saved guest state (saved-state.ts) are each their
// own machine: own hostname, machine id, MACs, link-local and private
// addresses, clock, freshly seeded kernel randomness, their own data disks
// plugged in, the share mounted and host services forwarded, and their own
// journal; after a power cut they boot for real from their own disks, and the
// journal lists both boots.
//
//   npm run build && node --test dist/test/lab/saved-state.test.js
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { GUEST_BOSUN, GUEST_HOST_ADDRESS, startLab, type Lab, type Vm } from './driver.js';
import { journalGuard } from './guard.js';

const LAB = 'saved-state';
const GUEST_PORT = 18111;
let lab: Lab | undefined;
let echo: Server | undefined;
const guarded = journalGuard(LAB, () => lab);

function vm(name: string): Vm {
  if (!lab) throw new Error('the lab did not start (see the before hook)');
  return lab.vm(name);
}

async function out(guest: Vm, script: string): Promise<string> {
  return (await guest.check(script)).stdout.trim();
}

describe('guests started from the saved state', { timeout: 1_800_000 }, () => {
  before(async () => {
    // A host service on loopback that answers with a fixed line: the guests reach it through guestfwd.
    echo = createServer((socket) => socket.end('hello from the host\n'));
    const port = await new Promise<number>((resolve) => echo!.listen(0, '127.0.0.1', () => resolve((echo!.address() as { port: number }).port)));
    lab = await startLab({
      name: LAB,
      forwards: [{ guestPort: GUEST_PORT, hostPort: port }],
      nodes: [{ name: 'saved-a', disks: [{ sizeMiB: 256 }, { sizeMiB: 320 }] }, { name: 'saved-b' }],
      onProgress: (line) => process.stderr.write(`[lab] ${line}\n`),
    });
  });

  after(async () => {
    await lab?.stop();
    echo?.close();
  });

  it('starts every fresh guest from the saved state, not by booting', () => {
    for (const name of ['saved-a', 'saved-b']) {
      assert.equal(vm(name).restoreTimesMs.length, 1, `${name} restored once`);
      assert.equal(vm(name).bootTimesMs.length, 0, `${name} did not boot`);
    }
  });

  it('gives each guest its own hostname, machine id, MACs and addresses, the host clock and its own journal', async () => {
    await guarded('identity', async () => {
      for (const [name, index] of [
        ['saved-a', 1],
        ['saved-b', 2],
      ] as const) {
        const guest = vm(name);
        assert.equal(await out(guest, 'hostname'), name);
        assert.equal(await out(guest, 'cat /etc/machine-id'), createHash('md5').update(`${LAB}/${name}`).digest('hex'));
        await guest.check(`logger -t saved-state-test "written on ${name}"`);
        assert.match(await out(guest, 'journalctl -b --no-pager -t saved-state-test'), new RegExp(`written on ${name}`), 'journalctl reads what it logs');
        assert.equal(await out(guest, 'cat /sys/class/net/eth1/address'), `52:54:00:b0:01:0${index}`);
        const addrs = await out(guest, 'ip -6 -o addr show dev eth1');
        assert.match(addrs, new RegExp(`inet6 fd00:b05:0:1::${index}/64`));
        assert.match(addrs, new RegExp(`inet6 fe80::5054:ff:feb0:10${index}/64`), 'link-local made from the new MAC');
        assert.doesNotMatch(addrs, /feb0:101.*\n.*feb0:101|fd00:b05:0:1::1\/64[\s\S]*fd00:b05:0:1::1\/64/);
        const skew = Math.abs(Number(await out(guest, 'date +%s')) - Date.now() / 1000);
        assert.ok(skew < 30, `${name}'s clock is ${skew.toFixed(0)} s off the host's`);
      }
      await vm('saved-a').check('ping -6 -c 2 -W 5 fd00:b05:0:1::2');
      await vm('saved-b').check('ping -6 -c 2 -W 5 fe80::5054:ff:feb0:101%eth1');
    });
  });

  it("reseeds each guest's kernel random pool at the restore", async () => {
    await guarded('random', async () => {
      const samples = new Set<string>();
      for (const name of ['saved-a', 'saved-b']) {
        assert.match(await out(vm(name), 'dmesg'), /crng reseeded due to virtual machine fork/);
        samples.add(await out(vm(name), 'head -c 32 /dev/urandom | od -An -tx1 | tr -d " \\n"'));
      }
      assert.equal(samples.size, 2);
    });
  });

  it('plugs in its own data disks, mounts the share and forwards host services', async () => {
    await guarded('devices', async () => {
      const a = vm('saved-a');
      assert.equal(await out(a, 'blockdev --getsize64 /dev/disk/by-id/virtio-bosun-disk1'), String(256 * 1024 * 1024));
      assert.equal(await out(a, 'blockdev --getsize64 /dev/disk/by-id/virtio-bosun-disk2'), String(320 * 1024 * 1024));
      assert.equal(await out(a, 'readlink -f /dev/disk/by-id/virtio-bosun-disk1'), '/dev/vdb');
      assert.equal(await out(vm('saved-b'), 'ls /dev/disk/by-id | grep -c virtio-bosun-disk || true'), '0');
      assert.match(await out(a, `${GUEST_BOSUN.join(' ')} --help`), /bosun/);
      const reply = await out(a, `exec 3<>/dev/tcp/${GUEST_HOST_ADDRESS}/${GUEST_PORT}; cat <&3`);
      assert.equal(reply, 'hello from the host');
    });
  });

  it('boots for real from its own disks after a power cut', async (t) => {
    await guarded('power-cut', async () => {
      const a = vm('saved-a');
      await a.check('echo kept > /root/marker && sync && printf disk1 | dd of=/dev/disk/by-id/virtio-bosun-disk1 conv=fsync status=none');
      const before = a.bootId;
      await a.powerCut();
      await a.start();
      assert.equal(a.bootTimesMs.length, 1, 'the second start boots');
      assert.notEqual(a.bootId, before);
      assert.equal(await out(a, 'hostname'), 'saved-a');
      assert.equal(await out(a, 'cat /etc/machine-id'), createHash('md5').update(`${LAB}/saved-a`).digest('hex'), 'its own machine id');
      assert.equal((await out(a, 'journalctl --list-boots --no-pager -q')).split('\n').length, 2, 'the journal lists the restored boot and this one');
      assert.equal(await out(a, 'cat /root/marker'), 'kept');
      assert.equal(await out(a, 'head -c 5 /dev/disk/by-id/virtio-bosun-disk1'), 'disk1');
      assert.match(await out(a, 'ip -6 -o addr show dev eth1'), /fd00:b05:0:1::1\/64/);
      assert.match(await out(a, 'mount'), / on \/opt\/bosun type 9p /);
    });
    // Not asserted (a timing): the same guest's start from the saved state against its real boot, in this run.
    const a = vm('saved-a');
    const [restore, boot] = [a.restoreTimesMs[0]!, a.bootTimesMs[0]!];
    t.diagnostic(
      `saved-a: start from the saved state ${(restore / 1000).toFixed(1)} s, real boot ${(boot / 1000).toFixed(1)} s (${(boot / restore).toFixed(1)}x)`,
    );
  });
});
