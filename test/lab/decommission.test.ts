// Decommission on a real kernel: the real agent builds RAID1 + LUKS2 + xfs and
// boots the lab's demo service in an nspawn machine with a file on the data
// volume; then a decommission spec stops the machine, unmounts, closes and
// crypto-erases the volume (luksErase: no keyslot left, the old key opens
// nothing), and the status says decommissioned and safe to delete. A replay
// is a no-op; a later normal spec is refused and the disks stay untouched.
// The decommission is first cut by a power cut (SIGKILL to qemu) once its
// first step (stopping the machine) is done, and finishes after power-on.
// One VM for the whole file.
//
//   npx tsc -p tsconfig.json && node --test dist/test/lab/decommission.test.js
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { labRunDir, startLab, type Lab, type Vm } from './driver.js';
import { journalGuard } from './guard.js';
import { BOSUN, applyIn, applyThenCut, describeJournalPoint, guestSh, sealTo, writeSpec } from './guest-apply.js';

const LAB = 'decom-lab';
const NODE = 'decom-a';
const DISK = (n: number) => `/dev/disk/by-id/virtio-bosun-disk${n}`;
/** The running array's device: /dev/md/data, or /dev/md127 when assembled without the link. */
const MD = "$(lsblk -lnpo NAME,TYPE | awk '$2 ~ /^raid/ {print $1; exit}')";
const figures: Record<string, unknown> = {};
let lab: Lab | undefined;
let vm: Vm;

const sh = (script: string, timeoutMs?: number): Promise<string> => guestSh(vm, script, timeoutMs);
const apply = (spec: unknown) => applyIn(vm, spec);

/** Runs a check; on failure saves the guests' journals under .cache/lab/artifacts/decom-<label>/ and names the directory in the error. */
const guarded = journalGuard('decom', () => lab);

const spec = (version: number, key: { sealed: string }, decommission?: { confirmNode: string; erase?: 'crypto' | 'none' }) => ({
  apiVersion: 'bosun/v1',
  cluster: 'lab',
  node: NODE,
  version,
  disks: {
    devices: { paths: [DISK(1), DISK(2)] },
    raid: { level: 1, name: 'data' },
    luks: { name: 'data', key },
    filesystem: { type: 'xfs' },
    mount: { path: '/var/lib/bosun/data', mode: '0755' },
  },
  container: {
    name: 'demo',
    image: '/var/lib/machines/bosun-demo',
    service: { unit: 'demo.service', health: ['/usr/local/bin/node', '/usr/local/lib/bosun-lab/demo/health.mjs'] },
    network: { mode: 'private', ports: [{ host: 18080, container: 8080 }] },
    config: { mountPoint: '/etc/demo', files: { 'demo.conf': { format: 'conf', settings: { port: 8080, admin_port: 9090, greeting: 'hello', version: String(version) } } } },
    dataMountPoint: '/var/lib/demo',
  },
  ...(decommission ? { decommission } : {}),
});

interface Status {
  lifecycle: { state: string; safeToDelete: boolean; finishedAt?: string; evidence?: { luks: { device: string; keyslots: number | null; open: boolean }[]; container: { active: string } | null; dataVolumeMounted: boolean } };
}

async function status(): Promise<Status> {
  const r = await vm.exec([...BOSUN, 'status', '--json']);
  assert.equal(r.exitCode, 0, r.stderr);
  return JSON.parse(r.stdout) as Status;
}

describe('decommission in a VM', { timeout: 30 * 60_000 }, () => {
  before(async () => {
    rmSync(labRunDir(LAB), { recursive: true, force: true });
    lab = await startLab({ name: LAB, forwards: [], nodes: [{ name: NODE, disks: [{ sizeMiB: 512 }, { sizeMiB: 512 }] }] });
    vm = lab.vm(NODE);
  });

  after(async () => {
    process.stderr.write(`[lab] decommission figures: ${JSON.stringify(figures)}\n`);
    await lab?.stop();
  });

  it('stops the service, crypto-erases the volume, reports safe to delete; a replay is a no-op; a later normal spec is refused', () =>
    guarded('decom', async () => {
      const t0 = Date.now();
      const secret = randomBytes(64).toString('base64');
      const [key] = (await sealTo(vm, secret)) as [{ sealed: string }];

      const built = await apply(spec(1, key));
      assert.equal(built.code, 0, built.stderr);
      figures.buildMs = built.ms;
      await sh(`nsenter --target "$(machinectl show demo --property=Leader --value)" --all -- sh -c 'echo precious > /var/lib/demo/precious'`);
      assert.equal(await sh('cat /var/lib/bosun/data/precious'), 'precious');
      assert.equal((await status()).lifecycle.state, 'serving');
      // The key opens the volume before: the check below can fail.
      const before = await vm.exec(['sh', '-c', `cryptsetup open --test-passphrase --key-file=- ${MD}`], { stdin: secret });
      assert.equal(before.exitCode, 0, before.stderr);

      // A decommission for another node is refused whole; nothing stops.
      const typo = await apply(spec(2, key, { confirmNode: 'decom-b' }));
      assert.notEqual(typo.code, 0);
      assert.match(typo.stderr, /decommission\.confirmNode/);
      assert.equal(await sh('systemctl is-active systemd-nspawn@demo.service'), 'active');

      // Power cut in the middle of the decommission: after its first step, before it finished.
      await writeSpec(vm, spec(2, key, { confirmNode: NODE }));
      const cut = await applyThenCut(vm, (j) => j?.current?.phase === 'decommission' && j.current.next >= 1);
      figures.powerCutAt = describeJournalPoint(cut.seen);
      assert.ok(!cut.finishedFirst && cut.seen?.current?.phase === 'decommission', `the cut came too late or too early: ${JSON.stringify(cut.seen)}`);
      await vm.start();
      const mid = await status();
      assert.equal(mid.lifecycle.state, 'decommissioning', 'after the cut the host knows it is being retired');
      assert.equal(mid.lifecycle.safeToDelete, false);
      const refusedMid = await apply(spec(3, key));
      assert.notEqual(refusedMid.code, 0, 'a half-decommissioned host does not rebuild either');
      assert.match(refusedMid.stderr, /being decommissioned/);

      const d = await apply(spec(2, key, { confirmNode: NODE }));
      assert.equal(d.code, 0, d.stderr);
      assert.match(d.stderr, /resuming the unfinished apply of version 2/);
      figures.decommissionMs = d.ms;
      assert.match(d.stderr, /cryptsetup luksErase --batch-mode/);
      assert.doesNotMatch(d.stderr, /mkfs|luksFormat|systemctl start/);
      assert.doesNotMatch(d.stderr, new RegExp(secret.slice(0, 16).replace(/[+/]/g, '.')), 'the key is never logged');
      // The machine is gone, the volume unmounted and closed, no keyslot left.
      assert.notEqual((await vm.exec(['machinectl', 'status', 'demo'])).exitCode, 0, 'machine demo is gone');
      assert.match(await sh('systemctl is-enabled systemd-nspawn@demo.service || true'), /disabled|not-found/);
      assert.equal((await vm.exec(['findmnt', '/var/lib/bosun/data'])).exitCode, 1);
      assert.equal((await vm.exec(['test', '-e', '/dev/mapper/data'])).exitCode, 1);
      const dump = await sh(`cryptsetup luksDump ${MD}`);
      assert.doesNotMatch(dump.split(/^Tokens:/m)[0]!.split(/^Keyslots:/m)[1] ?? 'missing', /^\s+\d+: luks2/m, `no keyslot left:\n${dump}`);
      const after = await vm.exec(['sh', '-c', `cryptsetup open --test-passphrase --key-file=- ${MD}`], { stdin: secret });
      assert.notEqual(after.exitCode, 0, 'the old key opens nothing');
      const st = await status();
      assert.equal(st.lifecycle.state, 'decommissioned');
      assert.equal(st.lifecycle.safeToDelete, true);
      assert.equal(st.lifecycle.evidence?.luks[0]?.keyslots, 0);
      assert.equal(st.lifecycle.evidence?.dataVolumeMounted, false);

      // Replay: nothing to do, same status.
      const again = await apply(spec(2, key, { confirmNode: NODE }));
      assert.equal(again.code, 0, again.stderr);
      assert.equal(again.out.result, 'unchanged');
      assert.equal((await status()).lifecycle.finishedAt, st.lifecycle.finishedAt);

      // A newer normal spec: refused, disks untouched.
      const headerBefore = await sh(`cryptsetup luksDump ${MD} | sha256sum`);
      const normal = await apply(spec(4, key));
      assert.notEqual(normal.code, 0);
      assert.match(normal.stderr, /E_DECOMMISSIONED|decommissioned/);
      assert.doesNotMatch(normal.stderr, /luksFormat|mkfs|cryptsetup open/);
      assert.equal(await sh(`cryptsetup luksDump ${MD} | sha256sum`), headerBefore);
      assert.equal((await vm.exec(['machinectl', 'status', 'demo'])).exitCode === 0, false);
      figures.totalMs = Date.now() - t0;
    }));
});
