// The node lifecycle of a cluster, driven only by messages on Kafka as a
// control plane would (issues #11, #9, #8). The guests run the real `bosun run`;
// this file only publishes signed specs on bosun.desired and reads
// bosun.status / bosun.events (test/lab/control-plane.ts), and looks inside
// the VMs to check what the agents did.
//
//   1. node-a, node-b, node-c come up from the example specs (RAID1 + LUKS2 +
//      xfs, IPsec PSK mesh, the demo service in a systemd-nspawn machine
//      instead of PostgreSQL); node-a restores its data from a backup in MinIO
//      on the host made with `bosun backup create`. All report healthy.
//   2. A config change for node-b only: its service reloads in place; node-a
//      and node-c are not touched; disks and IPsec of node-b are not touched.
//   3. node-d is added: it restores from peer node-a over the IPsec mesh while
//      the others keep serving; its data equals node-a's.
//   4. node-c, which node-d replaces, is decommissioned: its machine stops, it
//      leaves every peer's mesh, its LUKS keyslots are erased, and it reports
//      that it is safe to delete.
//   5. node-b loses power and boots while Kafka is unreachable from it (its
//      packets to the broker dropped, as in a partition): the agent starts,
//      rebuilds the host from its last good spec and serves without Kafka;
//      once the broker is reachable it reports, and applies the spec the
//      control plane published in the meantime.
//   Time to serve (power-on to first healthy status, per phase) is the lifecycle
//   benchmark's (test/bench/lifecycle.bench.ts, `npm run bench`): the guests
//   here start from the saved guest state, and the figures need a quiet machine.
//
//   npm run build && BOSUN_LAB_KEEP=30 node --test --test-concurrency=1 dist/test/lab/scenario.test.js
//   (BOSUN_LAB_COLLECT=1 keeps the guests' journals of a green run as well)
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { rmSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CLUSTER_ADDR as ADDR, CLUSTER_DATA as DATA, ClusterSpecs, DEMO_PORT as PORT, DISK_STAGES } from './cluster-specs.js';
import { ControlPlane, isEvent, isHealthy } from './control-plane.js';
import { GUEST_BOSUN, GUEST_HOST_ADDRESS, labRunDir, startLab, type Lab, type Vm } from './driver.js';
import { dataSums, hostSums, makeSource } from './data-tree.js';
import { journalGuard } from './guard.js';

const LAB = 'scen-cluster';
const NODES = ['node-a', 'node-b', 'node-c'] as const;
const RUN = randomUUID().slice(0, 8);
const PREFIX = `bosun-lab/scenario/${RUN}/`;
/** Generous limits for a loaded 2-core machine running TCG guests; a hang still fails. */
const CONVERGE_MS = 15 * 60_000;

let lab: Lab | undefined;
let cp: ControlPlane | undefined;
let work: string;
let sourceListing: string;
const figures: Record<string, unknown> = {};
/** agent.json settings beyond the control plane's (object storage on the host) */
let agentSettings: Record<string, unknown> = {};
let specs: ClusterSpecs | undefined;

function theLab(): Lab {
  assert.ok(lab, 'the lab did not start');
  return lab;
}
function thecp(): ControlPlane {
  assert.ok(cp, 'the control plane did not start');
  return cp;
}
function theSpecs(): ClusterSpecs {
  assert.ok(specs, 'the control plane did not start');
  return specs;
}
const nodeSpec = (...args: Parameters<ClusterSpecs['nodeSpec']>) => theSpecs().nodeSpec(...args);
const objectStorageRestore = (node: string) => theSpecs().objectStorageRestore(node);
const nodeAPeerServe = () => theSpecs().peerServe(['node-d']);

async function sh(vm: Vm, script: string, timeoutMs = 120_000): Promise<string> {
  const r = await vm.exec(['bash', '-c', script], { timeoutMs });
  assert.equal(r.exitCode, 0, `${vm.name}: ${script}\n${r.stderr}`);
  return r.stdout.trim();
}

/**
 * No ESP state is left on `vm` (with `peer`, if given). A keyed SA (SPI not 0) must be gone at once: deleting the
 * conn deletes its SAs. A larval one (SPI 0: the kernel's ACQUIRE for a packet that met the conn's policy just
 * before the delete) holds no key and expires on its own after net.core.xfrm_acq_expires (30 s), so it gets 60 s.
 * af0d746's CI, under load, saw node-c keep one such state while it was still trying to reach node-d.
 */
async function assertNoEspLeft(vm: Vm, peer: string, message: string): Promise<void> {
  const list = peer ? `ip xfrm state list src ${peer} proto esp; ip xfrm state list dst ${peer} proto esp` : 'ip xfrm state list proto esp';
  const keyed = (text: string): string[] => [...text.matchAll(/spi (0x[0-9a-f]+)/g)].map((found) => found[1]!).filter((spi) => Number(spi) !== 0);
  let text = await sh(vm, list);
  assert.deepEqual(keyed(text), [], `${message} (keyed SAs):\n${text}`);
  const deadline = Date.now() + 60_000;
  while (text !== '' && Date.now() < deadline) {
    await new Promise((wake) => setTimeout(wake, 5_000));
    text = await sh(vm, list);
  }
  assert.equal(text, '', `${message} (larval SAs still there after 60 s):\n${text}`);
}

/** Runs a check; on failure saves the guests' journals under .cache/lab/artifacts/scenario-<label>/ and names the directory in the error. */
const guarded = journalGuard('scenario', () => lab);

/** What the demo service answers on node's own published port. */
async function demo(vm: Vm): Promise<{ pid: number; started: string; reloads: number; greeting: string; version: string }> {
  // One request from inside the guest, up to three tries of 30 s: under TCG with four guests on two cores a
  // request that the service answers in milliseconds on its own can miss 30 s (7d7db22's CI: node-d, just restored).
  // Every miss is kept in figures.demoMisses, so a service that is slow, not just a starved guest, shows.
  const js = `fetch('http://10.0.2.15:${PORT}/', { signal: AbortSignal.timeout(30000) }).then((r) => r.text()).then((t) => process.stdout.write(t), (e) => { console.error(String(e)); process.exit(8); })`;
  let last = '';
  for (let attempt = 1; attempt <= 3; attempt++) {
    const r = await vm.exec(['node', '-e', js], { timeoutMs: 90_000 });
    if (r.exitCode === 0) return JSON.parse(r.stdout) as never;
    last = `exit ${r.exitCode}: ${r.stderr.trim()}`;
    ((figures.demoMisses ??= []) as string[]).push(`${vm.name} try ${attempt}: ${last.slice(0, 160)}`);
  }
  assert.fail(`${vm.name}: the demo service does not answer (3 tries of 30 s): ${last}`);
}

const leader = (vm: Vm) => sh(vm, 'machinectl show demo --property=Leader --value');

/** Every file of the data volume with its SHA-256, except what the running service writes itself. */
const DATA_SUMS = dataSums(DATA);

describe('cluster scenario driven by Kafka', { timeout: 60 * 60_000 }, () => {
  before(
    async () => {
      work = await mkdtemp(join(tmpdir(), 'bosun-scenario-'));
      const src = join(work, 'src');
      await mkdir(src);
      await makeSource(src);
      sourceListing = await hostSums(src);
      rmSync(labRunDir(LAB), { recursive: true, force: true });
      cp = await ControlPlane.open(work, { out: process.stderr });
      // The backup node-a restores from, made by the CLI on the host, sealed to a backup key.
      specs = new ClusterSpecs(cp, PREFIX);
      figures.backupCreate = await specs.backUpFromHost(src);
      const s3 = cp.env.s3;
      const s3Port = Number(new URL(s3.endpoint).port || 80);
      const kafkaPort = Number(cp.env.kafkaLabListener?.split(':')[1] ?? 19094);
      const on = Date.now();
      lab = await startLab({
        name: LAB,
        nodes: [...NODES, 'node-d'].map((name) => ({
          name,
          ipv6: `${ADDR[name]}/64`,
          disks: [{ sizeMiB: 512 }, { sizeMiB: 512 }],
          deferStart: name === 'node-d',
        })),
        forwards: [kafkaPort, { guestPort: s3Port, hostPort: s3Port }],
        bootTimeoutMs: 600_000,
        onProgress: (l) => process.stderr.write(`[lab] ${l}\n`),
      });
      figures.labStartMs = Date.now() - on;
      agentSettings = { objectStorage: { endpoint: `http://${GUEST_HOST_ADDRESS}:${s3Port}`, region: s3.region } };
      for (const n of NODES) await cp.startAgent(lab.vm(n), agentSettings);
    },
    { timeout: 20 * 60_000 },
  );

  after(async () => {
    process.stderr.write(`[scenario] figures: ${JSON.stringify(figures)}\n`);
    // BOSUN_LAB_COLLECT=1: keep every guest's journal of a green run too (to read where the time went).
    if (lab && process.env.BOSUN_LAB_COLLECT === '1')
      process.stderr.write(`[scenario] journals: ${await lab.collectJournals('scenario-final').catch((e: unknown) => String(e))}\n`);
    await cp?.close();
    await lab?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('1: node-a/b/c come up from their specs to healthy; node-a restores its data from object storage', () =>
    guarded('up', async () => {
      const c = thecp();
      const since = Date.now();
      for (const n of NODES) await c.publish(await nodeSpec(n, [...NODES], n === 'node-a' ? { restore: objectStorageRestore(n) } : {}));
      await Promise.all(NODES.map((n) => c.waitFor(`${n} healthy at version 1`, isHealthy(n, 1), CONVERGE_MS, since)));
      assert.deepEqual(
        c.find((r) => r.topic === 'events' && r.body.kind === 'apply-failed'),
        [],
        'no apply failed on the way',
      );
      for (const n of NODES) {
        const vm = theLab().vm(n);
        const applied = c.find(isEvent(n, 'applied', 1))[0]!;
        assert.deepEqual(applied.body.stages, [...DISK_STAGES, 'network', ...(n === 'node-a' ? ['restore'] : []), 'container']);
        assert.equal(await sh(vm, `findmnt -n -o FSTYPE,SOURCE ${DATA}`), 'xfs    /dev/mapper/data');
        assert.match(await sh(vm, 'cat /proc/mdstat'), /^md\d+ : active raid1 vd[bc]\[\d\] vd[bc]\[\d\]/m);
        assert.equal((await demo(vm)).greeting, `hello from ${n}`);
      }
      // node-a holds the backup, byte for byte; the mesh carries ESP between every pair.
      assert.equal(await sh(theLab().vm('node-a'), DATA_SUMS), sourceListing);
      for (const [a, b] of [
        ['node-a', 'node-b'],
        ['node-a', 'node-c'],
        ['node-b', 'node-c'],
      ] as const) {
        await sh(
          theLab().vm(a),
          `for i in $(seq 30); do ping -6 -c 1 -W 2 ${ADDR[b]} >/dev/null && break; sleep 2; done; ping -6 -c 3 -W 3 ${ADDR[b]} >/dev/null`,
          180_000,
        );
        assert.match(await sh(theLab().vm(a), `ip xfrm state | grep -c 'proto esp' || true`), /^[1-9]/, `${a} has ESP SAs`);
      }
      figures.up = { wallS: (Date.now() - since) / 1000 };
      // Time to serve is measured by the lifecycle benchmark (npm run bench); here only that the reports carry it.
      assert.ok(c.find(isEvent('node-a', 'applied', 1))[0]!.body.timings, 'the applied event carries the timings');
    }));

  it("2: a config change for node-b only reloads its service; node-a and node-c, and node-b's disks and IPsec, are not touched", (t) =>
    guarded('config', async () => {
      const c = thecp();
      const vms = Object.fromEntries(NODES.map((n) => [n, theLab().vm(n)])) as Record<string, Vm>;
      const before: Record<string, { pid: number; started: string; reloads: number; leader: string }> = {};
      for (const n of NODES) before[n] = { ...(await demo(vms[n]!)), leader: await leader(vms[n]!) };
      const xfrmBefore = await sh(vms['node-b']!, "ip xfrm state | grep -E '^src|spi' | sort");
      const since = Date.now();
      await c.publish(await nodeSpec('node-b', [...NODES], { greeting: 'hi from node-b, version 2' }));
      const applied = await c.waitFor('node-b applied version 2', isEvent('node-b', 'applied', 2), CONVERGE_MS, since);
      assert.deepEqual(applied.body.stages, ['container'], 'only the container stage ran: disks and IPsec were not touched');
      const status = await c.waitFor(
        'node-b status with version 2',
        (r) => r.topic === 'status' && r.node === 'node-b' && r.body.appliedVersion === 2,
        120_000,
        since,
      );
      assert.equal(status.body.appliedVersion, 2);
      const now = await demo(vms['node-b']!);
      assert.deepEqual(
        [now.pid, now.started, now.reloads, now.greeting],
        [before['node-b']!.pid, before['node-b']!.started, before['node-b']!.reloads + 1, 'hi from node-b, version 2'],
      );
      assert.equal(await leader(vms['node-b']!), before['node-b']!.leader, "node-b's machine was not restarted");
      assert.equal(await sh(vms['node-b']!, "ip xfrm state | grep -E '^src|spi' | sort"), xfrmBefore, "node-b's SAs are the same");
      // Wait one more health round of the others, then: nothing applied there, same processes.
      const round = Date.now();
      await Promise.all(
        ['node-a', 'node-c'].map((n) => c.waitFor(`${n} status after the change`, (r) => r.topic === 'status' && r.node === n, 120_000, round)),
      );
      assert.deepEqual(
        c.find((r) => r.at >= since && r.topic === 'events' && r.node !== 'node-b' && (r.body.kind === 'applied' || r.body.kind === 'apply-failed')),
        [],
        'node-a and node-c applied nothing',
      );
      for (const n of ['node-a', 'node-c']) {
        const d = await demo(vms[n]!);
        assert.deepEqual(
          [d.pid, d.started, d.reloads, await leader(vms[n]!)],
          [before[n]!.pid, before[n]!.started, before[n]!.reloads, before[n]!.leader],
          `${n}'s service untouched`,
        );
        const last = c.find((r) => r.topic === 'status' && r.node === n).at(-1)!;
        assert.equal(last.body.appliedVersion, 1, `${n}'s applied version is unchanged`);
      }
      // What a serving node spends its CPU on while nothing changes (a guest runs under TCG, so every
      // busy loop costs the whole lab): top over 20 s on all three at once, its busiest lines.
      const idle = await Promise.all(
        NODES.map((n) => sh(vms[n]!, "top -b -d 20 -n 2 -w 160 | awk '/^top -/{n++} n==2' | grep -E '^%Cpu|^ *[0-9]' | head -n 9", 90_000)),
      );
      NODES.forEach((n, i) => t.diagnostic(`${n} idle, top over 20 s:\n${idle[i]}`));
    }));

  it("3: node-d joins and restores from peer node-a over the mesh while the others keep serving; its data equals node-a's", (t) =>
    guarded('peer', async () => {
      const c = thecp();
      const l = theLab();
      // Continuous checks on the serving nodes: their own service every 0.5 s, and ping between node-b and node-c over the mesh.
      const probe = `const end = Date.now() + 3600e3; let ok = 0, fail = 0, gap = 0, lastOk = Date.now();
        const fs = await import('node:fs');
        while (Date.now() < end) {
          const t = Date.now();
          try { const r = await fetch('http://10.0.2.15:${PORT}/', { signal: AbortSignal.timeout(10000) }); await r.text(); ok++; gap = Math.max(gap, Date.now() - lastOk); lastOk = Date.now(); } catch { fail++; }
          fs.writeFileSync('/run/scen-probe.json.tmp', JSON.stringify({ ok, fail, maxGapMs: Math.max(gap, Date.now() - lastOk) })); fs.renameSync('/run/scen-probe.json.tmp', '/run/scen-probe.json');
          await new Promise((r) => setTimeout(r, Math.max(0, 500 - (Date.now() - t))));
        }`;
      for (const n of NODES) {
        const w = await l.vm(n).exec(['sh', '-c', 'cat > /root/probe.mjs'], { stdin: probe });
        assert.equal(w.exitCode, 0);
        await sh(l.vm(n), 'systemd-run --unit=scen-probe --collect node /root/probe.mjs');
      }
      await sh(l.vm('node-b'), `systemd-run --unit=scen-ping --collect sh -c 'exec ping -6 -i 0.5 ${ADDR['node-c']} > /run/scen-ping.txt'`);

      const d = l.vm('node-d');
      await d.start();
      await c.startAgent(d);
      const since = Date.now();
      const mesh = [...NODES, 'node-d'];
      // The others first (node-d in their mesh, node-a serving snapshots to it), then node-d itself.
      for (const n of NODES)
        await c.publish(
          await nodeSpec(
            n,
            mesh,
            n === 'node-a'
              ? { restore: objectStorageRestore(n), peerServe: nodeAPeerServe() }
              : n === 'node-b'
                ? { greeting: 'hi from node-b, version 2' }
                : {},
          ),
        );
      await c.publish(await nodeSpec('node-d', mesh, { restore: { from: 'peer', peer: 'node-a', peerKey: c.identities.get('node-a')!.signingKey } }));
      for (const n of NODES) {
        const a = await c.waitFor(`${n} applied its mesh with node-d`, isEvent(n, 'applied', theSpecs().versions[n]), CONVERGE_MS, since);
        assert.ok(
          (a.body.stages as string[]).includes('network') && !(a.body.stages as string[]).some((st) => st.startsWith('disks')),
          `${n}: the new peer changes its network, not its disks (stages ${String(a.body.stages)})`,
        );
      }
      await c.waitFor('node-d healthy', isHealthy('node-d', 1), CONVERGE_MS, since);
      const failed = c.find((r) => r.at >= since && r.topic === 'events' && r.body.kind === 'apply-failed');
      figures.peerApplyFailures = failed.map((r) => `${r.node}: ${String(r.body.message).slice(0, 200)}`);

      // Stop the checks and read what they saw.
      await sh(l.vm('node-b'), 'systemctl kill -s INT scen-ping.service; sleep 1; cat /run/scen-ping.txt | tail -n 3');
      const ping = await sh(l.vm('node-b'), 'tail -n 3 /run/scen-ping.txt');
      const loss = /(\d+) packets transmitted, (\d+) received/.exec(ping);
      assert.ok(loss, ping);
      const probes: Record<string, { ok: number; fail: number; maxGapMs: number }> = {};
      for (const n of NODES) {
        await sh(l.vm(n), 'systemctl stop scen-probe.service || true');
        probes[n] = JSON.parse(await sh(l.vm(n), 'cat /run/scen-probe.json')) as never;
      }
      figures.whileNodeDJoined = { pingNodeBToNodeC: { sent: Number(loss[1]), received: Number(loss[2]) }, service: probes };
      t.diagnostic(`while node-d joined: ping node-b -> node-c ${loss[2]}/${loss[1]}; service answers ${JSON.stringify(probes)}`);
      // node-b and node-c keep serving throughout; node-a is frozen only while its snapshot is taken (quiesce hook).
      for (const n of ['node-b', 'node-c']) {
        assert.ok(probes[n]!.ok > 20, `${n}: the probe ran`);
        assert.ok(
          probes[n]!.fail <= Math.ceil(probes[n]!.ok * 0.02),
          `${n}: the service missed ${probes[n]!.fail} of ${probes[n]!.ok + probes[n]!.fail} checks`,
        );
      }
      assert.ok(probes['node-a']!.maxGapMs < 120_000, `node-a: the service did not answer for ${probes['node-a']!.maxGapMs} ms`);
      assert.ok(Number(loss[2]) >= Number(loss[1]) * 0.97, `ping over the mesh lost ${Number(loss[1]) - Number(loss[2])} of ${loss[1]}`);

      // node-d restored node-a's data: the same files, byte for byte, and the backup's files among them.
      const applied = c.find(isEvent('node-d', 'applied', 1))[0]!;
      assert.deepEqual(applied.body.stages, [...DISK_STAGES, 'network', 'restore', 'container']);
      const sumsA = await sh(l.vm('node-a'), DATA_SUMS);
      assert.equal(await sh(d, DATA_SUMS), sumsA);
      assert.equal(sumsA, sourceListing);
      const marker = JSON.parse(await sh(d, `cat ${DATA}/.bosun-restored.json`)) as Record<string, unknown>;
      assert.match(JSON.stringify(marker), /node-a/, 'the marker names the peer');
      assert.match(await sh(d, 'journalctl -u bosun-lab-agent-run --no-pager | grep -c "snapshot of peer node-a" || true'), /^[1-9]/);
      assert.equal((await demo(d)).greeting, 'hello from node-d');
      assert.ok(applied.body.timings, 'the applied event carries the timings');
    }));

  it('4: node-c, replaced by node-d, is decommissioned: service stopped, out of every mesh, keyslots destroyed, safe to delete', () =>
    guarded('decom', async () => {
      const c = thecp();
      const l = theLab();
      const since = Date.now();
      const mesh = ['node-a', 'node-b', 'node-d'];
      await c.publish({ ...(await nodeSpec('node-c', [...NODES, 'node-d'])), decommission: { confirmNode: 'node-c', erase: 'crypto' } });
      for (const n of mesh) {
        await c.publish(
          await nodeSpec(
            n,
            mesh,
            n === 'node-a'
              ? { restore: objectStorageRestore(n), peerServe: nodeAPeerServe() }
              : n === 'node-b'
                ? { greeting: 'hi from node-b, version 2' }
                : n === 'node-d'
                  ? { restore: { from: 'peer', peer: 'node-a', peerKey: c.identities.get('node-a')!.signingKey } }
                  : {},
          ),
        );
      }
      const ev = await c.waitFor('node-c decommissioned event', isEvent('node-c', 'decommissioned'), CONVERGE_MS, since);
      assert.equal(ev.body.safeToDelete, true);
      const st = await c.waitFor(
        'node-c status: decommissioned',
        (r) => r.topic === 'status' && r.node === 'node-c' && r.body.lifecycle?.state === 'decommissioned',
        300_000,
        since,
      );
      assert.equal(st.body.lifecycle.safeToDelete, true, JSON.stringify(st.body.lifecycle));
      for (const n of mesh) {
        const a = await c.waitFor(`${n} applied its mesh without node-c`, isEvent(n, 'applied', theSpecs().versions[n]), CONVERGE_MS, since);
        assert.deepEqual(a.body.stages, ['network'], `${n}: only the network changed`);
      }
      const vc = l.vm('node-c');
      assert.notEqual((await vc.exec(['machinectl', 'status', 'demo'])).exitCode, 0, "node-c's machine is gone");
      assert.notEqual(await sh(vc, 'systemctl is-active systemd-nspawn@demo.service || true'), 'active', "node-c's service is stopped");
      await assertNoEspLeft(vc, '', 'node-c has no SA left');
      for (const n of mesh) {
        assert.equal(await sh(l.vm(n), `ipsec status | grep -c '"bosun-node-c"' || true`), '0', `${n} has no conn for node-c`);
        await assertNoEspLeft(l.vm(n), ADDR['node-c']!, `${n} has no SA with node-c`);
        assert.equal(await sh(l.vm(n), `ls /etc/ipsec.d/ | grep -c '^bosun-node-c' || true`), '0', `${n} keeps no conn file for node-c`);
      }
      const evidence = st.body.lifecycle.evidence as { luks?: { device: string; keyslots: number | null }[] } | undefined;
      const dev = evidence?.luks?.[0]?.device ?? (await sh(vc, 'blkid -c /dev/null -t TYPE=crypto_LUKS -o device | head -n1'));
      const dump = await sh(vc, `cryptsetup luksDump ${dev}`);
      assert.match(dump, /^Keyslots:/m, `${dev} is still a LUKS2 header (erased, not wiped):\n${dump}`);
      assert.doesNotMatch(dump.split(/^Tokens:/m)[0]!.split(/^Keyslots:/m)[1] ?? 'missing', /^\s+\d+: luks2/m, `no keyslot left on ${dev}:\n${dump}`);
      // The three left report their mesh healthy (an SA with each other peer) at the new version, and it carries
      // traffic. An SA can be re-negotiated meanwhile (DPD on a loaded host: stop 19's CI saw node-d -> node-b fail
      // 3 pings right after the applies), so each pair gets 30 tries; how long the first echo took is a figure.
      const meshAt = Date.now();
      await Promise.all(mesh.map((n) => c.waitFor(`${n} healthy without node-c`, isHealthy(n, theSpecs().versions[n]), 300_000, since)));
      const pairs: [string, string][] = [
        ['node-d', 'node-a'],
        ['node-d', 'node-b'],
        ['node-a', 'node-b'],
      ];
      const traffic: Record<string, number> = {};
      for (const [from, to] of pairs) {
        const started = Date.now();
        const r = await l
          .vm(from)
          .exec(['sh', '-c', `for i in $(seq 30); do ping -6 -c 1 -W 2 ${ADDR[to]} >/dev/null && exit 0; sleep 1; done; exit 1`], { timeoutMs: 180_000 });
        if (r.exitCode !== 0) {
          const state = await sh(l.vm(from), 'ipsec trafficstatus 2>&1 | tail -n 5; ip xfrm state | grep -c "proto esp" || true');
          assert.fail(`${from} -> ${to}: no echo over the mesh in 30 tries after both reported healthy:\n${state}`);
        }
        traffic[`${from}->${to}`] = (Date.now() - started) / 1000;
      }
      figures.meshWithoutNodeC = { healthyAfterS: (Date.now() - meshAt) / 1000, firstEchoS: traffic };
      figures.decommissionS = (ev.at - since) / 1000;
      // Retired and checked: its power goes off, as an operator's would, so step 5 does not share the cores with
      // an idle guest's health rounds.
      await l.vm('node-c').kill();
    }));

  it('5: node-b loses power and boots while Kafka is unreachable: it serves from its last good spec, then reports and catches up when Kafka is back', () =>
    guarded('broker', async () => {
      const c = thecp();
      const vb = theLab().vm('node-b');
      const kafkaPort = c.guestKafka.split(':')[1]!;
      const lastGood = theSpecs().versions['node-b']!;
      const statusCmd = `${GUEST_BOSUN.join(' ')} status --json`;
      type Local = { applied?: { specVersion?: number; appliedAt?: string } | null; inProgress?: unknown };
      const beforeCut = JSON.parse(await sh(vb, statusCmd)) as Local;
      await vb.powerCut();
      await vb.start();
      // Dropped, not refused: the agent's connects time out, as when the broker's network is gone.
      const block = `nft add table inet labblock && nft add chain inet labblock out '{ type filter hook output priority 0; }' && nft add rule inet labblock out ip daddr ${GUEST_HOST_ADDRESS} tcp dport ${kafkaPort} drop`;
      await sh(vb, block);
      const since = Date.now();
      await c.startAgent(vb, agentSettings);
      // Without Kafka: the last good spec is applied again from the state dir (LUKS opened, mounted, mesh and machine up).
      // Polled with cat of the state files, not `bosun status` (node loading the CLI costs seconds of the vCPU
      // node-b's apply runs on); the CLI's own view is read once, after.
      for (let i = 0; i < 150; i++) {
        const files = await sh(vb, 'cat /var/lib/bosun/applied.json 2>/dev/null || echo null; test -e /var/lib/bosun/journal.json && echo in-progress || true');
        const appliedAt = (JSON.parse(files.replace(/\nin-progress$/, '')) as Local['applied'])?.appliedAt;
        if (appliedAt !== beforeCut.applied?.appliedAt && !files.endsWith('in-progress')) break;
        await new Promise((r) => setTimeout(r, 2000));
      }
      const local = JSON.parse(await sh(vb, statusCmd)) as Local;
      assert.notEqual(local.applied?.appliedAt, beforeCut.applied?.appliedAt, `node-b applied again after the power cut: ${JSON.stringify(local)}`);
      assert.equal(local.applied?.specVersion, lastGood, `node-b converged to its last good spec without Kafka: ${JSON.stringify(local)}`);
      assert.equal((await demo(vb)).greeting, 'hi from node-b, version 2', 'node-b serves without Kafka');
      await sh(
        vb,
        `for i in $(seq 30); do ping -6 -c 1 -W 2 ${ADDR['node-a']} >/dev/null && break; sleep 2; done; ping -6 -c 3 -W 3 ${ADDR['node-a']} >/dev/null`,
        180_000,
      );
      assert.equal(await sh(vb, 'systemctl is-active bosun-lab-agent-run.service'), 'active', 'the agent keeps running without Kafka');
      assert.equal(await sh(vb, 'systemctl show -p NRestarts --value bosun-lab-agent-run.service'), '0', 'and was not restarted');
      assert.deepEqual(
        c.find((r) => r.node === 'node-b' && r.at >= since),
        [],
        'nothing from node-b reached Kafka while it was blocked (the block works)',
      );
      // The control plane moves on meanwhile; then the broker becomes reachable.
      await c.publish(await nodeSpec('node-b', ['node-a', 'node-b', 'node-d'], { greeting: 'hi from node-b, after the outage' }));
      const unblocked = Date.now();
      await sh(vb, 'nft delete table inet labblock');
      const boot = await c.waitFor("the event of node-b's boot-time apply", isEvent('node-b', 'applied', lastGood), 300_000, since);
      const applied = await c.waitFor(
        'node-b applied the spec published during the outage',
        isEvent('node-b', 'applied', theSpecs().versions['node-b']),
        300_000,
        since,
      );
      assert.deepEqual(applied.body.stages, ['container'], 'only the container stage ran for the config change');
      await c.waitFor('node-b healthy at the new version', isHealthy('node-b', theSpecs().versions['node-b']), 300_000, unblocked);
      assert.equal((await demo(vb)).greeting, 'hi from node-b, after the outage');
      figures.brokerAtBoot = { bootApplyEventAfterUnblockS: (boot.at - unblocked) / 1000, newSpecAppliedAfterUnblockS: (applied.at - unblocked) / 1000 };
    }));
});
