// Power cuts at random points while a node builds itself (issue 11). One VM,
// two data disks; the spec asks for every boot phase: RAID1 + LUKS2 + xfs, an
// IPsec mesh with one peer that does not exist (this node is the responder, so
// nothing waits for it), a restore from a backup in MinIO on the host (made
// with `bosun backup create`), and the demo service in a locked-down
// systemd-nspawn machine on the data volume. Each round cuts the VM's power (SIGKILL to qemu) at a point a
// seeded PRNG picks during `bosun apply`, powers it on, applies again, and
// checks:
//   - the re-apply completes (and says it resumed when a journal was left);
//   - the journal found after the cut is whole, for this spec, its stages a
//     prefix of the boot order and its step counters in range;
//   - nothing is formatted twice: the array's, the LUKS header's and the
//     filesystem's UUIDs, once made, never change; no re-apply after a
//     complete one runs mdadm --create, luksFormat or mkfs;
//   - a marker file written after the first complete apply survives every
//     later cut, byte for byte;
//   - the data volume holds exactly the backup (every file kind: modes,
//     owners, symlinks, a hard link, a sparse file), restored once, with the
//     completion marker; no staging area or restore journal is left; the
//     service answers.
// Round 1 starts from blank disks; each later round first cuts the power of
// the built, idle node, boots it and cuts the boot-time apply (assemble,
// open, mount, start the machine), which is what a real node runs after every
// power-on. Where a round cuts: the seed picks a stage of the boot order
// (uniformly: restore is one long step, the disks many short ones) and a step
// in it, plus up to 2 s; or (odds 0.15) a time in the first 8 s (start-up).
// Last, the converged node is decommissioned, and that too is cut by a power
// cut (after its first step): after power-on the host says it is being
// retired and refuses a normal spec; the replayed decommission resumes and
// stops the machine, leaves the mesh, unmounts, closes and crypto-erases the
// volume (no keyslot left, the old key opens nothing); status says
// decommissioned and safe to delete; a replay is a no-op; a later normal spec
// is refused with the disks untouched.
//
//   npm run build && node --test dist/test/lab/faults.test.js
//   BOSUN_FAULT_SEEDS=13,7,4 node --test dist/test/lab/faults.test.js       # other / more seeds
//   BOSUN_FAULT_ROUNDS=10 BOSUN_FAULT_SEED=100 node --test dist/test/lab/faults.test.js
//
// Seeds: BOSUN_FAULT_SEEDS (comma list), or BOSUN_FAULT_ROUNDS=n with
// BOSUN_FAULT_SEED=first (seeds first, first+1, …). Default 5,10, chosen for
// CI's two rounds (each is one or two boots under TCG): seed 5 aims at the
// blank build's restore, seed 10 at the boot-time apply's container stage.
// Each round's record (seed, target, cut point, outcome, times) goes to
// stderr and to // .cache/lab/artifacts/faults-powercut.json.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { publicKeyString } from '../../src/identity/seal.js';
import { phasesFor } from '../../src/phases/index.js';
import { parseNodeSpec } from '../../src/spec/validate.js';
import { requireServices, type ServiceEnv } from '../services/env.js';
import { guestListing, hostListing, makeEveryKind } from './data-tree.js';
import { demoContainer } from './demo-spec.js';
import { GUEST_BOSUN, GUEST_HOST_ADDRESS, labCacheDir, labRunDir, repoRoot, startLab, type Lab, type Vm } from './driver.js';
import { applyIn, applyThenCut, describeJournalPoint, guestSh, plannedSteps, readGuestJournal, sealTo, writeSpec, type JournalView } from './guest-apply.js';

const LAB = 'faults-power';
const NODE = 'faults-a';
const DISK = (n: number) => `/dev/disk/by-id/virtio-bosun-disk${n}`;
const MOUNT = '/var/lib/bosun/data';
const PORT = 18080;
const PREFIX = `bosun-lab/faults/${randomUUID().slice(0, 8)}/`;
const run = promisify(execFile);
/** The running array's device: /dev/md/data, or /dev/md127 when the initramfs assembled it without the link. */
const MD = "$(lsblk -lnpo NAME,TYPE | awk '$2 ~ /^raid/ {print $1; exit}')";

function seedsFromEnv(): number[] {
  const list = process.env.BOSUN_FAULT_SEEDS;
  if (list) return list.split(',').map((s) => Number(s.trim()));
  if (process.env.BOSUN_FAULT_ROUNDS === undefined && process.env.BOSUN_FAULT_SEED === undefined) return [5, 10];
  const rounds = Number(process.env.BOSUN_FAULT_ROUNDS ?? 2);
  const first = Number(process.env.BOSUN_FAULT_SEED ?? 1);
  return Array.from({ length: rounds }, (_, i) => first + i);
}
const SEEDS = seedsFromEnv();

/** mulberry32: a small seeded PRNG, uniform in [0, 1). */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface RoundRecord {
  seed: number;
  round: number;
  start: 'blank disks' | 'built node, power cut while idle';
  /** steps the apply that was cut announced (undefined: cut before it said) */
  plannedSteps: number | undefined;
  /** the stage the seed aimed at (undefined: a start-up cut at jitterMs after launch) */
  targetStage: string | undefined;
  /** the cut point the seed picked: after this many finished steps of the stage it reached (+ jitter) */
  cutAfterSteps: number;
  jitterMs: number;
  cutAfterMs: number;
  /** where the journal polled just before the cut said the apply was */
  seenBeforeCut: string;
  /** where the journal on disk after power-on says it stopped */
  journalAfterPowerOn: string;
  finishedBeforeCut: boolean;
  bootMs: number;
  /** a long boot's job lists, as the driver's wait saw them (why it did not count the guest booted sooner) */
  bootJobLooks?: string[];
  reapplyMs: number;
  resumed: boolean;
  outcome: string;
}

const records: RoundRecord[] = [];
const decommissionFigures: Record<string, unknown> = {};
let lab: Lab | undefined;
let vm: Vm;

type Sealed = { sealed: string };
interface Secrets {
  key: Sealed;
  psk: Sealed;
  s3Id: Sealed;
  s3Secret: Sealed;
  backupKey: Sealed;
}
let services: ServiceEnv;
/** The LUKS key in the clear, to show it opens the volume before the crypto-erase and nothing after. */
let luksKey: string;

function specFor({ key, psk, s3Id, s3Secret, backupKey }: Secrets, version = 1, decommission?: { confirmNode: string }) {
  return {
    apiVersion: 'bosun/v1',
    cluster: 'lab',
    node: NODE,
    version,
    ...(decommission ? { decommission } : {}),
    disks: {
      devices: { paths: [DISK(1), DISK(2)] },
      raid: { level: 1, name: 'data' },
      luks: { name: 'data', key },
      filesystem: { type: 'xfs' },
      mount: { path: MOUNT, mode: '0755' },
    },
    network: {
      ipsec: {
        address: vm.ipv6,
        // A peer that never answers: faults-0 sorts before faults-a, so this node only responds and no step waits for it.
        peers: [{ node: 'faults-0', address: 'fd00:b05:0:1::99', psk }],
      },
    },
    restore: {
      from: 'object-storage',
      bucket: services.s3.bucket,
      prefix: PREFIX,
      backup: 'latest',
      credentials: { accessKeyId: s3Id, secretAccessKey: s3Secret },
      backupKey,
    },
    container: demoContainer(PORT, 'hello from faults-a'),
  };
}

/** `bosun status --json` in the guest, parsed. */
async function guestStatus<T>(): Promise<T> {
  return JSON.parse(await guestSh(vm, `${GUEST_BOSUN.join(' ')} status --json`)) as T;
}

/** What the demo service answers on the node's published port. */
async function demoGreeting(): Promise<string> {
  const js = `fetch('http://10.0.2.15:${PORT}/', { signal: AbortSignal.timeout(30000) }).then((r) => r.text()).then((t) => process.stdout.write(t), (e) => { console.error(String(e)); process.exit(8); })`;
  for (let i = 0; ; i++) {
    const r = await vm.exec(['node', '-e', js], { timeoutMs: 90_000 });
    if (r.exitCode === 0) return (JSON.parse(r.stdout) as { greeting: string }).greeting;
    if (i >= 20) assert.fail(`the demo service does not answer: ${r.stderr}`);
    await new Promise((res) => setTimeout(res, 3000));
  }
}

interface Ids {
  md?: string;
  luks?: string;
  fs?: string;
}

/** UUIDs of whatever layers exist right now (the filesystem only while the LUKS volume is open). */
async function layerIds(): Promise<Ids> {
  const out = await guestSh(
    vm,
    `MD=${MD}; echo "md=$([ -n "$MD" ] && mdadm --detail --export "$MD" 2>/dev/null | sed -n 's/^MD_UUID=//p')"; ` +
      `echo "luks=$([ -n "$MD" ] && cryptsetup luksUUID "$MD" 2>/dev/null)"; ` +
      `echo "fs=$([ -e /dev/mapper/data ] && blkid -p -s UUID -o value /dev/mapper/data 2>/dev/null)"`,
  );
  const ids: Ids = {};
  for (const line of out.split('\n')) {
    const [k, v] = line.split('=', 2) as [keyof Ids, string];
    if (v) ids[k] = v;
  }
  return ids;
}

/** The journal a cut left behind must be whole and describe this spec's apply, stages in boot order. */
function checkJournal(j: JournalView | undefined | { unreadable: string }, order: string[], where: string): void {
  if (j === undefined) return;
  assert.ok(!('unreadable' in j), `${where}: the journal is not JSON after the cut: ${JSON.stringify(j)}`);
  assert.equal(j.format, 2, where);
  assert.equal(j.specVersion, 1, where);
  assert.deepEqual(
    j.donePhases,
    order.slice(0, j.donePhases.length),
    `${where}: finished stages ${JSON.stringify(j.donePhases)} are not a prefix of ${JSON.stringify(order)}`,
  );
  assert.ok((j.stepsDone ?? -1) >= 0 && (j.runs ?? 0) >= 1, `${where}: counters ${JSON.stringify({ stepsDone: j.stepsDone, runs: j.runs })}`);
  if (j.current) {
    assert.ok(order.includes(j.current.phase) && !j.donePhases.includes(j.current.phase), `${where}: current stage ${j.current.phase}`);
    assert.ok(j.current.next >= 0 && j.current.next <= j.current.steps.length, `${where}: next ${j.current.next} of ${j.current.steps.length}`);
    if (j.current.inFlight !== undefined) assert.equal(j.current.inFlight, j.current.next, where);
    for (const s of j.current.steps)
      assert.ok(s.phase === j.current.phase || j.current.phase.startsWith(`${s.phase}/`), `${where}: a step of ${s.phase} in stage ${j.current.phase}`);
  }
}

describe('power cuts at random points while a node builds itself', { timeout: 60 * 60_000 }, () => {
  let secrets: Secrets;
  let sourceListing: string;
  let backupId: string;
  let work: string | undefined;
  let order: string[];
  /** UUIDs after the first complete apply; never to change again */
  let baseline: Required<Ids> | undefined;
  let marker: string | undefined;
  let roundFailed = false;

  before(async () => {
    rmSync(labRunDir(LAB), { recursive: true, force: true });
    services = await requireServices();
    // The backup the node restores, made by the CLI on the host and sealed to a backup key.
    work = await mkdtemp(join(tmpdir(), 'bosun-faults-'));
    const src = join(work, 'src');
    await mkdir(src);
    await makeEveryKind(src);
    sourceListing = await hostListing(src);
    const backupKey = generateKeyPairSync('x25519');
    const s3 = services.s3;
    const created = await run(
      process.execPath,
      [
        join(repoRoot(), 'dist/src/cli.js'),
        'backup',
        'create',
        src,
        '--bucket',
        s3.bucket,
        '--prefix',
        PREFIX,
        '--to',
        publicKeyString('x25519', backupKey.publicKey),
        '--endpoint',
        s3.endpoint,
        '--region',
        s3.region,
        '--json',
      ],
      {
        env: { ...process.env, AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey },
      },
    );
    backupId = (JSON.parse(created.stdout) as { backupId: string }).backupId;
    assert.ok(backupId, created.stdout);
    const s3Port = Number(new URL(s3.endpoint).port || 80);
    // Boots after a cut wait for pluto too (the mesh is enabled): allow twice the driver's default on a busy machine.
    lab = await startLab({
      name: LAB,
      nodes: [{ name: NODE, disks: [{ sizeMiB: 512 }, { sizeMiB: 512 }], ipv6: 'fd00:b05:0:1::a/64' }],
      forwards: [{ guestPort: s3Port, hostPort: s3Port }],
      bootTimeoutMs: 600_000,
    });
    vm = lab.vm(NODE);
    // The object store's address comes from agent.json, as on a real host; credentials and keys are sealed in the spec.
    // (kafka and trustedKeys are required settings; `bosun apply` never talks to Kafka.)
    const settings = {
      node: NODE,
      kafka: { brokers: [`${GUEST_HOST_ADDRESS}:19094`] },
      trustedKeys: [{ id: 'lab', publicKey: publicKeyString('ed25519', generateKeyPairSync('ed25519').publicKey) }],
      objectStorage: { endpoint: `http://${GUEST_HOST_ADDRESS}:${s3Port}`, region: s3.region },
    };
    const w = await vm.exec(['sh', '-c', 'mkdir -p /etc/bosun && cat > /etc/bosun/agent.json'], { stdin: JSON.stringify(settings) });
    assert.equal(w.exitCode, 0, w.stderr);
    luksKey = randomBytes(64).toString('base64');
    const sealed = await sealTo(
      vm,
      luksKey,
      randomBytes(32).toString('base64url'),
      s3.accessKeyId,
      s3.secretAccessKey,
      backupKey.privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
    );
    secrets = { key: sealed[0]!, psk: sealed[1]!, s3Id: sealed[2]!, s3Secret: sealed[3]!, backupKey: sealed[4]! };
    const parsed = parseNodeSpec(specFor(secrets));
    assert.ok(parsed.ok, JSON.stringify(parsed));
    order = phasesFor(parsed.value);
    assert.deepEqual(order.slice(-2), ['restore', 'container'], `the cuts can land in every boot phase: ${order.join(', ')}`);
    await writeSpec(vm, specFor(secrets));
  });

  after(async () => {
    const dir = join(labCacheDir(), 'artifacts');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'faults-powercut.json'), JSON.stringify({ seeds: SEEDS, rounds: records }, null, 1) + '\n');
    process.stderr.write(`[lab] faults power-cut rounds (seeds ${SEEDS.join(',')}):\n${records.map((r) => JSON.stringify(r)).join('\n')}\n`);
    process.stderr.write(`[lab] decommission figures: ${JSON.stringify(decommissionFigures)}\n`);
    await lab?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  for (const [round, seed] of SEEDS.entries()) {
    it(`round ${round + 1}, seed ${seed}: cut at a random point, power on, apply again → complete, nothing re-formatted, marker intact`, async () => {
      try {
        const rnd = prng(seed);
        const start: RoundRecord['start'] = round === 0 ? 'blank disks' : 'built node, power cut while idle';
        if (round > 0) {
          // A built node loses power while idle, then builds itself again at power-on: that apply is cut.
          await vm.powerCut();
          await vm.start();
          assert.deepEqual(await layerIds(), { md: baseline!.md, luks: baseline!.luks }, 'array and LUKS header after a power-on');
        }
        // The seed picks the cut: with odds 0.15 during start-up (up to 8 s after launch: node loading, observing,
        // planning); otherwise a stage of the boot order (uniform, so a one-step stage such as restore is as
        // likely as the many small steps of the disks), then a step of it (k uniform in 0..steps-1: cut once k of
        // its steps are done) plus up to 2 s. A stage this apply does not run (a built node's boot-time apply
        // has nothing to restore) is passed over: the cut lands in the next stage that has steps.
        const early = rnd() < 0.15;
        const target = order[Math.floor(rnd() * order.length)]!;
        const u = rnd();
        const jitterMs = Math.floor(rnd() * (early ? 8_000 : 2_000));
        let k = 0;
        const cut = await applyThenCut(
          vm,
          (j, ms) => {
            if (early) return ms >= jitterMs;
            if (!j) return false;
            const past = j.donePhases.includes(target) || j.donePhases.some((p) => order.indexOf(p) > order.indexOf(target));
            const cur = j.current;
            if (!cur) return past;
            if (cur.phase !== target && !(past || order.indexOf(cur.phase) > order.indexOf(target))) return false;
            k = Math.floor(u * cur.steps.length);
            return cur.next >= k;
          },
          { jitterMs: early ? 0 : jitterMs },
        );
        const planned = plannedSteps(cut.log);

        const t0 = Date.now();
        await vm.start();
        const bootMs = Date.now() - t0;
        const left = await readGuestJournal(vm);
        checkJournal(left, order, `seed ${seed}`);
        const before = await layerIds();
        if (baseline) assert.deepEqual(before, { md: baseline.md, luks: baseline.luks }, `seed ${seed}: array and LUKS header after the cut`);

        const r = await applyIn(vm, specFor(secrets));
        assert.equal(r.code, 0, `seed ${seed}: the apply after the cut failed:\n${r.stderr}`);
        assert.equal(r.out.result, 'applied');
        const resumed = /resuming the unfinished apply of version 1/.test(r.stderr);
        assert.equal(resumed, left !== undefined && !('unreadable' in left), `seed ${seed}: resumes exactly when a journal was left`);
        if (before.md) assert.doesNotMatch(r.stderr, /mdadm --create/, `seed ${seed}: the array made before the cut is kept`);
        if (before.luks) assert.doesNotMatch(r.stderr, /luksFormat/, `seed ${seed}: the LUKS volume made before the cut is kept`);
        if (left && !('unreadable' in left) && left.donePhases.some((p) => /^disks\/(fs|filesystem)/.test(p)))
          assert.doesNotMatch(r.stderr, /mkfs/, `seed ${seed}: the filesystem made before the cut is kept`);
        if (baseline) assert.doesNotMatch(r.stderr, /mdadm --create|luksFormat|mkfs/, `seed ${seed}: nothing is formatted on a built node`);

        const ids = await layerIds();
        assert.ok(ids.md && ids.luks && ids.fs, `seed ${seed}: every layer exists after the re-apply: ${JSON.stringify(ids)}`);
        if (before.md) assert.equal(ids.md, before.md, `seed ${seed}: array UUID`);
        if (before.luks) assert.equal(ids.luks, before.luks, `seed ${seed}: LUKS UUID`);
        assert.equal(await guestSh(vm, `findmnt -n -o FSTYPE,SOURCE ${MOUNT}`), 'xfs    /dev/mapper/data');
        assert.equal((await vm.exec(['nft', 'list', 'table', 'inet', 'bosun_ipsec'])).exitCode, 0, 'the IPsec drop policy is loaded');
        assert.match(await guestSh(vm, 'ipsec status 2>&1 || true'), /"bosun-faults-0"/, 'the conn to the peer is loaded');
        assert.equal((await readGuestJournal(vm)) ?? null, null, 'no journal is left after a complete apply');
        const applied = JSON.parse(await guestSh(vm, 'cat /var/lib/bosun/applied.json')) as { specVersion: number };
        assert.equal(applied.specVersion, 1);
        // Restore and container: the volume holds exactly the backup (and the marker), restored once, and the service answers.
        // Every file kind (modes, owners, symlinks, hard link, sparse file) as on the host; the demo service's own files and the test's marker aside.
        assert.equal(
          await guestSh(vm, guestListing(MOUNT, ['starts', 'last-reload', 'marker'])),
          sourceListing,
          `seed ${seed}: the data volume holds exactly the backup`,
        );
        const sparseKiB = Number(await guestSh(vm, `du -k ${MOUNT}/sparse.img | cut -f1`));
        assert.ok(sparseKiB < 8 * 1024, `seed ${seed}: sparse.img takes ${sparseKiB} KiB: its holes were filled`);
        assert.equal(await guestSh(vm, `stat -c '%u:%g %a' ${MOUNT}`), '0:0 755', `seed ${seed}: the mount point keeps the owner and mode the spec gives it`);
        const restored = JSON.parse(await guestSh(vm, `cat ${MOUNT}/.bosun-restored.json`)) as Record<string, unknown>;
        assert.equal(restored.backupId, backupId, `seed ${seed}: the restore's completion marker names the backup`);
        assert.equal(restored.source, `s3://${services.s3.bucket}/${PREFIX}`);
        assert.equal(
          await guestSh(vm, `ls -A ${MOUNT} | grep -cE '^\\.bosun-restore(\\.journal)?$' || true`),
          '0',
          `seed ${seed}: no restore staging or journal left`,
        );
        if (baseline) assert.doesNotMatch(r.stderr, /restore s3:\/\/|restore: manifest verified/, `seed ${seed}: a restored volume is not restored again`);
        assert.equal(await demoGreeting(), 'hello from faults-a', `seed ${seed}: the service answers`);

        if (!baseline) {
          baseline = ids as Required<Ids>;
          marker = await guestSh(vm, `head -c 4M /dev/urandom > ${MOUNT}/marker && sync && sha256sum ${MOUNT}/marker`);
        } else {
          assert.deepEqual(ids, baseline, `seed ${seed}: array, LUKS and filesystem UUIDs unchanged since the first complete apply`);
          assert.equal(await guestSh(vm, `sha256sum ${MOUNT}/marker`), marker, `seed ${seed}: the marker written after the first complete apply survives`);
        }
        if (round === SEEDS.length - 1) {
          const again = await applyIn(vm, specFor(secrets));
          assert.equal(again.code, 0, again.stderr);
          assert.equal(again.out.result, 'unchanged', 'converged: a further apply has nothing to do');
          const status = await guestStatus<{ restore: { state: string; percent: number; backupId: string } }>();
          assert.deepEqual(
            [status.restore.state, status.restore.percent, status.restore.backupId],
            ['done', 100, backupId],
            'bosun status reports the restore',
          );
          // Secrets never reach output, logs or the state dir's readable files.
          const everything = `${r.stderr}\n${again.stderr}\n${await guestSh(vm, 'cat /var/lib/bosun/restore-progress.json; journalctl -b --no-pager | tail -n 3000')}`;
          assert.ok(!everything.includes(services.s3.secretAccessKey), 'the S3 secret key leaked');
          assert.ok(!everything.includes('PRIVATE KEY'), 'the backup key leaked');
        }
        records.push({
          seed,
          round: round + 1,
          start,
          plannedSteps: planned,
          targetStage: early ? undefined : target,
          cutAfterSteps: k,
          jitterMs,
          cutAfterMs: cut.cutAfterMs,
          seenBeforeCut: describeJournalPoint(cut.seen),
          journalAfterPowerOn: left && !('unreadable' in left) ? describeJournalPoint(left) : 'none',
          finishedBeforeCut: cut.finishedFirst,
          bootMs,
          ...(bootMs > 80_000 ? { bootJobLooks: vm.bootJobLooks } : {}),
          reapplyMs: r.ms,
          resumed,
          outcome: 'completed; no re-format; UUIDs and marker unchanged',
        });
      } catch (err) {
        roundFailed = true;
        const where = lab ? await lab.collectJournals(`faults-seed-${seed}`).catch((e: unknown) => `(collecting journals failed: ${String(e)})`) : '(no lab)';
        if (err instanceof Error)
          err.message = `[seed ${seed}, round ${round + 1}; rerun with BOSUN_FAULT_SEEDS=${SEEDS.slice(0, round + 1).join(',')}] ${err.message}\n[lab] journals and serial logs: ${where}`;
        throw err;
      }
    });
  }
  // The node the rounds built (every phase, converged) is then retired: the decommission is cut by a power
  // cut once its first step is done, and finishes after power-on. It runs here rather than on a VM of its
  // own: a built node is what a decommission needs, and building one is most of a lab file's time.
  it('decommission, cut by a power cut: stops the service, leaves the mesh, crypto-erases the volume, reports safe to delete; a replay is a no-op; a later normal spec is refused', async () => {
    assert.ok(!roundFailed && baseline, 'not run: a power-cut round before it failed, so there is no converged node to retire');
    const t0 = Date.now();
    const status = () =>
      guestStatus<{
        lifecycle: {
          state: string;
          safeToDelete: boolean;
          finishedAt?: string;
          evidence?: { luks: { keyslots: number | null }[]; dataVolumeMounted: boolean };
        };
      }>();
    const opens = async () => (await vm.exec(['sh', '-c', `cryptsetup open --test-passphrase --key-file=- ${MD}`], { stdin: luksKey })).exitCode;
    await guestSh(vm, `nsenter --target "$(machinectl show demo --property=Leader --value)" --all -- sh -c 'echo precious > /var/lib/demo/precious'`);
    assert.equal(await guestSh(vm, `cat ${MOUNT}/precious`), 'precious');
    assert.equal((await status()).lifecycle.state, 'serving');
    assert.equal(await opens(), 0, 'the key opens the volume before (so the check after can fail)');

    // A decommission for another node is refused whole; nothing stops.
    const typo = await applyIn(vm, specFor(secrets, 2, { confirmNode: 'faults-b' }));
    assert.notEqual(typo.code, 0);
    assert.match(typo.stderr, /decommission\.confirmNode/);
    assert.equal(await guestSh(vm, 'systemctl is-active systemd-nspawn@demo.service'), 'active');

    await writeSpec(vm, specFor(secrets, 2, { confirmNode: NODE }));
    const cut = await applyThenCut(vm, (j) => j?.current?.phase === 'decommission' && j.current.next >= 1);
    decommissionFigures.powerCutAt = describeJournalPoint(cut.seen);
    assert.ok(!cut.finishedFirst && cut.seen?.current?.phase === 'decommission', `the cut came too late or too early: ${JSON.stringify(cut.seen)}`);
    await vm.start();
    const mid = await status();
    assert.equal(mid.lifecycle.state, 'decommissioning', 'after the cut the host knows it is being retired');
    assert.equal(mid.lifecycle.safeToDelete, false);
    const refusedMid = await applyIn(vm, specFor(secrets, 3));
    assert.notEqual(refusedMid.code, 0, 'a half-decommissioned host does not rebuild either');
    assert.match(refusedMid.stderr, /being decommissioned/);

    const d = await applyIn(vm, specFor(secrets, 2, { confirmNode: NODE }));
    assert.equal(d.code, 0, d.stderr);
    assert.match(d.stderr, /resuming the unfinished apply of version 2/);
    decommissionFigures.resumedDecommissionMs = d.ms;
    assert.match(d.stderr, /cryptsetup luksErase --batch-mode/);
    assert.doesNotMatch(d.stderr, /mkfs|luksFormat|systemctl start/);
    assert.ok(!d.stderr.includes(luksKey) && !d.stderr.includes(luksKey.slice(0, 16)), 'the key is never logged');
    // The machine is gone, the node out of the mesh, the volume unmounted and closed, no keyslot left.
    assert.notEqual((await vm.exec(['machinectl', 'status', 'demo'])).exitCode, 0, 'machine demo is gone');
    assert.match(await guestSh(vm, 'systemctl is-enabled systemd-nspawn@demo.service || true'), /disabled|not-found/);
    assert.doesNotMatch(await guestSh(vm, 'ipsec status 2>&1 || true'), /"bosun-faults-0"/, 'the conn to the peer is gone');
    assert.equal((await vm.exec(['findmnt', MOUNT])).exitCode, 1);
    assert.equal((await vm.exec(['test', '-e', '/dev/mapper/data'])).exitCode, 1);
    const dump = await guestSh(vm, `cryptsetup luksDump ${MD}`);
    assert.doesNotMatch(dump.split(/^Tokens:/m)[0]!.split(/^Keyslots:/m)[1] ?? 'missing', /^\s+\d+: luks2/m, `no keyslot left:\n${dump}`);
    assert.notEqual(await opens(), 0, 'the old key opens nothing');
    const st = await status();
    assert.equal(st.lifecycle.state, 'decommissioned');
    assert.equal(st.lifecycle.safeToDelete, true);
    assert.equal(st.lifecycle.evidence?.luks[0]?.keyslots, 0);
    assert.equal(st.lifecycle.evidence?.dataVolumeMounted, false);

    // Replay: nothing to do, same status.
    const again = await applyIn(vm, specFor(secrets, 2, { confirmNode: NODE }));
    assert.equal(again.code, 0, again.stderr);
    assert.equal(again.out.result, 'unchanged');
    assert.equal((await status()).lifecycle.finishedAt, st.lifecycle.finishedAt);

    // A newer normal spec: refused, disks untouched.
    const headerBefore = await guestSh(vm, `cryptsetup luksDump ${MD} | sha256sum`);
    const normal = await applyIn(vm, specFor(secrets, 4));
    assert.notEqual(normal.code, 0);
    assert.match(normal.stderr, /E_DECOMMISSIONED|decommissioned/);
    assert.doesNotMatch(normal.stderr, /luksFormat|mkfs|cryptsetup open/);
    assert.equal(await guestSh(vm, `cryptsetup luksDump ${MD} | sha256sum`), headerBefore);
    decommissionFigures.totalMs = Date.now() - t0;
  });
});
