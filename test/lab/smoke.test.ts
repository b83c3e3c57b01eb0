// Lab smoke test: two guests booted once for the whole file prove that the
// things a container cannot test work on a real kernel here: md RAID1, LUKS2,
// XFS, ESP xfrm states, systemd-nspawn, IPv6 between guests over the private
// hub (and that the hub sees and can cut it), and the host's Kafka and S3
// through guestfwd. Every check can fail; on failure the guests' journals and
// serial logs are written to .cache/lab/artifacts/smoke-<check>/.
//
//   npm run build && node --test dist/test/lab/smoke.test.js
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { Kafka, logLevel } from 'kafkajs';
import { requireServices, splitHostPort, type ServiceEnv } from '../services/env.js';
import { GUEST_BOSUN, GUEST_HOST_ADDRESS, ensureImage, labCacheDir, repoRoot, startLab, type Lab } from './driver.js';
import { IPPROTO_ESP, IPPROTO_ICMPV6, diffCounters, ipv6Frames } from './hub.js';
import { median } from '../helpers.js';

const fileStarted = Date.now();
const A = 'smoke-a';
const B = 'smoke-b';
const ADDR_A = 'fd00:b05:0:1::1';
const ADDR_B = 'fd00:b05:0:1::2';
const SMOKE_TOPIC = 'bosun-lab-smoke';

let lab: Lab | undefined;
let services: ServiceEnv;
let kafkaGuest: { host: string; port: number };
/** The LUKS key and file the storage checks leave on smoke-a, for the power-cut check. */
let luksKey = '';
let fileContent = '';
let s3Guest: { url: string };
const figures: Record<string, unknown> = {};
const progress: string[] = [];

function theLab(): Lab {
  if (!lab) throw new Error('the lab did not start (see the before hook)');
  return lab;
}

/** Runs a check; on failure saves the guests' journals and names the directory in the error. */
async function guarded(label: string, fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (err) {
    let where = '';
    if (lab) {
      try {
        where = await lab.collectJournals(`smoke-${label}`);
      } catch (collectErr) {
        where = `(collecting journals failed: ${collectErr instanceof Error ? collectErr.message : String(collectErr)})`;
      }
    }
    if (err instanceof Error) {
      err.message += `\n[lab] journals and serial logs: ${where}`;
      throw err;
    }
    throw new Error(`${String(err)}\n[lab] journals and serial logs: ${where}`, { cause: err });
  }
}

function run(cmd: string, args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, output }));
  });
}

/**
 * The test services (Kafka with its lab listener, MinIO): used if they answer,
 * else started with test/services/up; what this file started it stops again.
 */
let startedServicesFile: string | undefined;
async function servicesUp(): Promise<ServiceEnv> {
  try {
    return await requireServices();
  } catch (first) {
    const dir = mkdtempSync(join(tmpdir(), 'bosun-lab-'));
    startedServicesFile = join(dir, 'started');
    const up = await run('bash', [join(repoRoot(), 'test/services/up')], { BOSUN_UP_STARTED_FILE: startedServicesFile });
    if (up.code !== 0) {
      throw new Error(
        `test services are not up (${first instanceof Error ? first.message : String(first)}) and test/services/up failed:\n${up.output.slice(-3000)}`,
        {
          cause: first,
        },
      );
    }
    return requireServices();
  }
}

async function stopStartedServices(): Promise<void> {
  if (!startedServicesFile) return;
  let started: string[] = [];
  try {
    started = [
      ...new Set(
        readFileSync(startedServicesFile, 'utf8')
          .split('\n')
          .filter((s) => s !== ''),
      ),
    ];
  } catch {
    /* nothing started */
  }
  if (started.length > 0) await run('bash', [join(repoRoot(), 'test/services/down'), ...started]);
  rmSync(join(startedServicesFile, '..'), { recursive: true, force: true });
}

describe('lab smoke (2 guests under TCG)', { timeout: 30 * 60_000 }, () => {
  before(
    async () => {
      services = await servicesUp();
      const labListener = services.kafkaLabListener;
      const labBroker = services.kafkaLabBrokers[0];
      if (!labListener || !labBroker) throw new Error(`Kafka has no lab listener (KAFKA_LAB_LISTENER / KAFKA_LAB_BROKERS unset in ${services.stateFile})`);
      const [, hostKafkaPort] = splitHostPort(labListener);
      const [guestKafkaHost, guestKafkaPort] = splitHostPort(labBroker);
      assert.equal(guestKafkaHost, GUEST_HOST_ADDRESS, `the Kafka lab listener must be advertised as ${GUEST_HOST_ADDRESS}`);
      kafkaGuest = { host: guestKafkaHost, port: guestKafkaPort };
      const s3 = new URL(services.s3.endpoint);
      const s3Port = Number(s3.port || 80);
      s3Guest = { url: `http://${GUEST_HOST_ADDRESS}:${s3Port}` };

      const imageStarted = Date.now();
      const image = await ensureImage({ onProgress: (l) => progress.push(l) });
      figures.imageReadyMs = Date.now() - imageStarted;
      figures.imageFirstBuildSeconds = image.manifest.buildSeconds;
      figures.imageKey = image.manifest.key;

      const disks = [{ sizeMiB: 512 }, { sizeMiB: 512 }];
      const bootStarted = Date.now();
      lab = await startLab({
        name: 'smoke',
        image: image.dir,
        nodes: [
          { name: A, disks, ipv6: `${ADDR_A}/64` },
          { name: B, disks, ipv6: `${ADDR_B}/64` },
        ],
        forwards: [
          { guestPort: guestKafkaPort, hostPort: hostKafkaPort },
          { guestPort: s3Port, hostPort: s3Port },
        ],
        onProgress: (l) => progress.push(l),
      });
      figures.labStartMs = Date.now() - bootStarted;
    },
    { timeout: 20 * 60_000 },
  );

  after(async () => {
    figures.fileMs = Date.now() - fileStarted;
    if (lab) figures.startMs = Object.fromEntries(lab.vms.map((v) => [v.name, v.startTimesMs]));
    figures.progress = progress;
    try {
      await mkdir(join(labCacheDir(), 'artifacts'), { recursive: true });
      await writeFile(join(labCacheDir(), 'artifacts', 'smoke-figures.json'), JSON.stringify(figures, null, 2) + '\n');
    } finally {
      await lab?.stop();
      await stopStartedServices();
    }
  });

  it('boots both guests: agent answers, systemd finished, private link addressed', (t: TestContext) =>
    guarded('boot', async () => {
      for (const vm of theLab().vms) {
        assert.equal(vm.failedUnits.length, 0, `${vm.name}: failed units at boot: ${vm.failedUnits.join(', ')}`);
        const r = await vm.check('hostname; ip -6 -br addr show dev eth1; ip -4 -br addr show dev eth0; findmnt -n -o FSTYPE /opt/bosun');
        const [hostname, eth1, eth0, share] = r.stdout.trim().split('\n');
        assert.equal(hostname, vm.name);
        assert.ok((eth1 ?? '').includes(`${vm.ipv6}/64`), `${vm.name}: eth1 lacks ${vm.ipv6}: ${eth1}`);
        assert.match(eth0 ?? '', /10\.0\.2\.15\/24/);
        assert.equal(share, '9p', `${vm.name}: the repository is not mounted at /opt/bosun`);
      }
      const boots = theLab().vms.flatMap((v) => v.bootTimesMs);
      t.diagnostic(`boot (power-on to agent ready and systemd done): ${boots.map((b) => `${(b / 1000).toFixed(1)} s`).join(', ')}`);
    }));

  it('runs the built agent from the shared repository with the host node binary', () =>
    guarded('node', async () => {
      const vm = theLab().vm(A);
      const r = await vm.check([...GUEST_BOSUN, '--help'], { timeoutMs: 120_000 });
      assert.match(r.stdout + r.stderr, /usage: bosun/);
      const v = await vm.check(['node', '--version']);
      assert.equal(v.stdout.trim(), process.version, 'the guest runs the host node binary');
    }));

  it('creates an md RAID1 on the two virtual disks', () =>
    guarded('raid', async () => {
      const vm = theLab().vm(A);
      await vm.check(
        'mdadm --create /dev/md/t --level=1 --raid-devices=2 --run --assume-clean --metadata=1.2 ' +
          '/dev/disk/by-id/virtio-bosun-disk1 /dev/disk/by-id/virtio-bosun-disk2 && udevadm settle',
        { timeoutMs: 120_000 },
      );
      const mdstat = (await vm.check(['cat', '/proc/mdstat'])).stdout;
      assert.match(mdstat, /^md\d+ : active raid1 (vd[bc]\[\d\] ?){2}$/m, `/proc/mdstat:\n${mdstat}`);
      const detail = (await vm.check(['mdadm', '--detail', '/dev/md/t'])).stdout;
      assert.match(detail, /Raid Level : raid1/);
      assert.match(detail, /Active Devices : 2/);
      assert.match(detail, /State : clean/);
    }));

  it('formats LUKS2 on the array and opens it with the key, not without', () =>
    guarded('luks', async () => {
      const vm = theLab().vm(A);
      const key = randomBytes(32).toString('hex');
      luksKey = key;
      await vm.check(
        ['cryptsetup', 'luksFormat', '--type', 'luks2', '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '--batch-mode', '--key-file=-', '/dev/md/t'],
        { stdin: key, timeoutMs: 120_000 },
      );
      const dump = (await vm.check(['cryptsetup', 'luksDump', '/dev/md/t'])).stdout;
      assert.match(dump, /^Version:\s+2$/m, dump);
      const wrong = await vm.exec(['cryptsetup', 'open', '--test-passphrase', '--key-file=-', '/dev/md/t'], { stdin: `${key}x` });
      assert.notEqual(wrong.exitCode, 0, 'a wrong key must not open the volume');
      await vm.check(['cryptsetup', 'open', '--key-file=-', '/dev/md/t', 't'], { stdin: key });
      const status = (await vm.check(['cryptsetup', 'status', 't'])).stdout;
      assert.match(status, /type:\s+LUKS2/);
      assert.match(status, /device:\s+\/dev\/md/);
    }));

  it('makes XFS on the LUKS device, mounts it, and reads back a file after a remount', () =>
    guarded('xfs', async () => {
      const vm = theLab().vm(A);
      const content = randomBytes(4096).toString('base64');
      fileContent = content;
      await vm.check('mkfs.xfs -q /dev/mapper/t && mkdir -p /mnt/t && mount /dev/mapper/t /mnt/t', { timeoutMs: 120_000 });
      assert.equal((await vm.check(['findmnt', '-n', '-o', 'FSTYPE,SOURCE', '/mnt/t'])).stdout.trim(), 'xfs    /dev/mapper/t');
      await vm.check('cat > /mnt/t/hello && sync', { stdin: content });
      await vm.check('umount /mnt/t && mount /dev/mapper/t /mnt/t');
      assert.equal((await vm.check(['cat', '/mnt/t/hello'])).stdout, content);
    }));

  it('adds an ESP xfrm state (AES-GCM)', () =>
    guarded('xfrm', async () => {
      const vm = theLab().vm(A);
      const key = `0x${randomBytes(20).toString('hex')}`;
      await vm.check([
        'ip',
        'xfrm',
        'state',
        'add',
        'src',
        ADDR_A,
        'dst',
        ADDR_B,
        'proto',
        'esp',
        'spi',
        '0x00b05001',
        'reqid',
        '1',
        'mode',
        'transport',
        'aead',
        'rfc4106(gcm(aes))',
        key,
        '128',
      ]);
      const states = (await vm.check(['ip', 'xfrm', 'state', 'list'])).stdout;
      assert.match(states, new RegExp(`src ${ADDR_A} dst ${ADDR_B}\\n\\s+proto esp spi 0x00b05001`), states);
      assert.match(states, /aead rfc4106\(gcm\(aes\)\)/);
      await vm.check(['ip', 'xfrm', 'state', 'flush']);
    }));

  it('runs a command in a systemd-nspawn container', () =>
    guarded('nspawn', async () => {
      const vm = theLab().vm(A);
      const outside = await vm.exec(['systemd-detect-virt', '--container']);
      assert.equal(outside.stdout.trim(), 'none');
      const inside = await vm.check(
        ['systemd-nspawn', '--quiet', '--directory=/', '--volatile=yes', '--register=no', '--pipe', '/usr/bin/systemd-detect-virt', '--container'],
        { timeoutMs: 120_000 },
      );
      assert.equal(inside.stdout.trim(), 'systemd-nspawn');
    }));

  it('pings between the guests over IPv6 on the private link, which the hub sees and can cut', (t: TestContext) =>
    guarded('ping', async () => {
      const l = theLab();
      const a = l.vm(A);
      const before = await l.hub.counters();
      const r = await a.exec(['ping', '-6', '-n', '-c', '3', '-i', '0.3', '-W', '3', ADDR_B], { timeoutMs: 30_000 });
      assert.equal(r.exitCode, 0, `ping failed:\n${r.stdout}${r.stderr}`);
      assert.match(r.stdout, /3 packets transmitted, 3 received/);
      const delta = diffCounters(before, await l.hub.counters());
      t.diagnostic(`hub frames during the ping: ${JSON.stringify(delta.byNode)}`);
      assert.ok(ipv6Frames(delta, IPPROTO_ICMPV6, A) >= 3, `hub saw ${ipv6Frames(delta, IPPROTO_ICMPV6, A)} ICMPv6 frames from ${A}`);
      assert.ok(ipv6Frames(delta, IPPROTO_ICMPV6, B) >= 3, `hub saw ${ipv6Frames(delta, IPPROTO_ICMPV6, B)} ICMPv6 frames from ${B}`);
      assert.equal(ipv6Frames(delta, IPPROTO_ESP), 0, 'no ESP expected without IPsec');

      await l.hub.cut(B);
      try {
        const cut = await a.exec(['ping', '-6', '-n', '-c', '2', '-i', '0.3', '-W', '1', ADDR_B], { timeoutMs: 30_000 });
        assert.notEqual(cut.exitCode, 0, `ping got through a cut link:\n${cut.stdout}`);
      } finally {
        await l.hub.heal(B);
      }
      const healed = await a.exec(['ping', '-6', '-n', '-c', '1', '-W', '3', ADDR_B], { timeoutMs: 30_000 });
      assert.equal(healed.exitCode, 0, `ping after heal failed:\n${healed.stdout}${healed.stderr}`);
    }));

  it('reaches the host Kafka through guestfwd: the guest produces, the host sees the message', () =>
    guarded('kafka', async () => {
      const vm = theLab().vm(B);
      const kafka = new Kafka({ clientId: 'bosun-lab-smoke', brokers: services.kafkaBrokers, logLevel: logLevel.NOTHING });
      const admin = kafka.admin();
      await admin.connect();
      try {
        await admin.createTopics({ topics: [{ topic: SMOKE_TOPIC, numPartitions: 1 }], waitForLeaders: true });
        const offset = async (): Promise<number> => Number((await admin.fetchTopicOffsets(SMOKE_TOPIC))[0]?.high ?? -1);
        const beforeOffset = await offset();
        const value = `from ${B} ${randomBytes(8).toString('hex')}`;
        const script = `
          const { Kafka, logLevel } = require('kafkajs');
          const kafka = new Kafka({ clientId: 'lab-guest', brokers: [process.argv[1]], logLevel: logLevel.NOTHING, connectionTimeout: 20000, requestTimeout: 60000 });
          (async () => {
            const admin = kafka.admin();
            await admin.connect();
            const cluster = await admin.describeCluster();
            await admin.disconnect();
            const producer = kafka.producer();
            await producer.connect();
            await producer.send({ topic: process.argv[2], messages: [{ value: process.argv[3] }] });
            await producer.disconnect();
            process.stdout.write(JSON.stringify(cluster.brokers));
          })().catch((err) => { process.stderr.write(String(err && err.stack || err)); process.exit(1); });`;
        const r = await vm.check(['node', '-e', script, `${kafkaGuest.host}:${kafkaGuest.port}`, SMOKE_TOPIC, value], {
          cwd: '/opt/bosun',
          timeoutMs: 180_000,
        });
        const brokers = JSON.parse(r.stdout) as Array<{ host: string; port: number }>;
        assert.deepEqual(
          brokers.map((b) => `${b.host}:${b.port}`),
          [`${kafkaGuest.host}:${kafkaGuest.port}`],
          'the guest must see the lab listener as the advertised broker',
        );
        assert.equal(await offset(), beforeOffset + 1, 'the message the guest produced is in the host Kafka');
      } finally {
        await admin.disconnect();
      }
    }));

  it('reaches the host S3 (MinIO) through guestfwd', () =>
    guarded('s3', async () => {
      const vm = theLab().vm(B);
      const script = `fetch(process.argv[1] + '/minio/health/live').then((r) => process.stdout.write(JSON.stringify({ status: r.status, server: r.headers.get('server') })), (e) => { process.stderr.write(String(e && e.cause || e)); process.exit(1); })`;
      const r = await vm.check(['node', '-e', script, s3Guest.url], { timeoutMs: 60_000 });
      const reply = JSON.parse(r.stdout) as { status: number; server: string | null };
      assert.equal(reply.status, 200, r.stdout);
      assert.match(reply.server ?? '', /MinIO/i, `the server answering at ${s3Guest.url} is not MinIO`);
    }));

  it('survives a power cut (smoke-a: array, LUKS and file intact) and a clean reboot (smoke-b: new boot)', () =>
    guarded('powercut', async () => {
      const l = theLab();
      const a = l.vm(A);
      const b = l.vm(B);
      assert.notEqual(luksKey, '', 'needs the storage checks above');
      const bootB = b.bootId;
      await Promise.all([
        (async () => {
          await a.powerCut();
          assert.equal(a.running, false);
          await a.start();
          // The initramfs (mdadm's hook) assembles the array again at boot, before the hostname is
          // set, so it comes back as /dev/md127 without the /dev/md/t link: find it by its name.
          await a.check('udevadm settle', { timeoutMs: 60_000 });
          const mdstat = (await a.check(['cat', '/proc/mdstat'])).stdout;
          assert.match(mdstat, /^md\d+ : active (\(auto-read-only\) )?raid1 (vd[bc]\[\d\] ?){2}$/m, mdstat);
          const scan = (await a.check(['mdadm', '--detail', '--scan'])).stdout;
          const array = new RegExp(`^ARRAY (\\S+) .*name=${A}:t `, 'm').exec(scan)?.[1];
          assert.ok(array, `no array named ${A}:t after the power cut:\n${scan}`);
          await a.check(['cryptsetup', 'open', '--key-file=-', array, 't'], { stdin: luksKey });
          await a.check('mkdir -p /mnt/t && mount /dev/mapper/t /mnt/t');
          assert.equal((await a.check(['cat', '/mnt/t/hello'])).stdout, fileContent);
        })(),
        (async () => {
          await b.reboot();
          assert.notEqual(b.bootId, bootB, 'reboot() must come back with a new boot id');
          const boots = (await b.check(['journalctl', '--list-boots', '--no-pager', '-q'])).stdout.trim().split('\n');
          assert.ok(boots.length >= 2, `journal lists ${boots.length} boot(s)`);
        })(),
      ]);
    }));

  it('resets a stopped VM to a pristine root and blank disks', () =>
    guarded('reset', async () => {
      const a = theLab().vm(A);
      await a.powerCut();
      await a.resetDisks();
      await a.start();
      const r = await a.exec(['sh', '-c', 'ls /mnt/t 2>&1; blkid -p /dev/disk/by-id/virtio-bosun-disk1; echo blkid=$?; cat /proc/mdstat']);
      assert.match(r.stdout, /No such file or directory/, 'the overlay was reset: /mnt/t is gone');
      assert.match(r.stdout, /blkid=2/, `disk1 is blank again:\n${r.stdout}`);
      assert.doesNotMatch(r.stdout, /active raid1/);
    }));

  it('collects a guest journal and the serial log as artifacts', async () => {
    const vm = theLab().vm(B);
    const dir = await vm.collectJournal('smoke-collect');
    const journal = readFileSync(join(dir, 'journal.txt'), 'utf8');
    assert.match(journal, /bosun-lab-agent/);
    assert.match(journal, new RegExp(B));
    assert.match(readFileSync(join(dir, 'serial.log'), 'utf8'), /Linux version/);
  });

  it('reports the figures', (t: TestContext) => {
    const l = theLab();
    const boots = l.vms.flatMap((v) => v.bootTimesMs);
    t.diagnostic(
      `image: first build ${String(figures.imageFirstBuildSeconds)} s, this run ${((figures.imageReadyMs as number) / 1000).toFixed(1)} s (key ${String(figures.imageKey)})`,
    );
    t.diagnostic(
      `boot median ${(median(boots) / 1000).toFixed(1)} s over ${boots.length} boots; lab start ${((figures.labStartMs as number) / 1000).toFixed(1)} s`,
    );
    t.diagnostic(`file so far ${((Date.now() - fileStarted) / 1000).toFixed(1)} s`);
    assert.ok(boots.length >= 2);
  });
});
