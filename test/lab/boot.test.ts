// Boot through the package: the RPM built from this checkout (rpm/build) is
// installed in a Debian guest with `rpm --nodeps`, its scriptlet enables
// bosun.service, and a reboot has systemd start the agent from the unit: it
// reaches READY, keeps the watchdog fed, is restarted by systemd after kill -9
// and converges without redoing what is done. The spec has a LUKS data volume
// and the demo service machine, as a real node does: at boot the volume is
// closed, so bosun.service must open it and start the machine, which is
// ordered after bosun.service (units/bosun-nspawn.conf) and therefore can start
// only after READY=1. The auxiliary phase starts a packaged daemon
// (prometheus-node-exporter, standing in for telegraf and journalpump, which
// Debian does not ship) and restarts it only on a config change. One VM.
//
//   npm run build && node --test dist/test/lab/boot.test.js
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { relative } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { keyValueLines } from '../../src/host/probe.js';
import { transientUnitArgv } from '../../src/host/systemd.js';
import { publicKeyString } from '../../src/identity/seal.js';
import { demoContainer } from './demo-spec.js';
import { GUEST_HOST_ADDRESS, repoRoot, startLab, type Lab, type Vm } from './driver.js';
import { sealTo } from './guest-apply.js';

const run = promisify(execFile);
/** Shorter than the unit's 60 s so the test waits two full intervals in less than a minute. */
const WATCHDOG_SEC = 20;
let lab: Lab | undefined;
let vm: Vm;
const figures: Record<string, number | string> = {};
/** the data volume's LUKS key (the plaintext, for checking logs), and sealed to the guest's host key once the package is installed */
const luksPlain = randomBytes(64).toString('base64');
let luksKey: { sealed: string };
const MACHINE = 'systemd-nspawn@demo.service';

async function sh(script: string, timeoutMs = 120_000): Promise<string> {
  const r = await vm.exec(['bash', '-euo', 'pipefail', '-c', script], { timeoutMs });
  assert.equal(r.exitCode, 0, `${script}\n${r.stdout}\n${r.stderr}`);
  return r.stdout.trim();
}

async function unitProps(): Promise<Record<string, string>> {
  const out = await sh(
    'systemctl show bosun.service -p ActiveState -p SubState -p StatusText -p NRestarts -p MainPID -p WatchdogUSec -p Result -p ExecMainStartTimestampMonotonic -p ActiveEnterTimestampMonotonic',
  );
  return Object.fromEntries(keyValueLines(out));
}

async function waitFor(what: string, ok: (p: Record<string, string>) => boolean, timeoutMs = 600_000): Promise<Record<string, string>> {
  const start = Date.now();
  let p: Record<string, string> = {};
  while (Date.now() - start < timeoutMs) {
    p = await unitProps();
    if (ok(p)) return p;
    await new Promise((r) => setTimeout(r, 2000));
  }
  const journal = await vm.exec(['journalctl', '-b', '-u', 'bosun', '--no-pager', '-n', '60']);
  assert.fail(`${what}: not within ${timeoutMs / 1000} s; bosun.service: ${JSON.stringify(p)}\n${journal.stdout}`);
}

const exporterArgs = (collectors: string) => `# written by bosun\nARGS="--web.listen-address=127.0.0.1:9100 --collector.disable-defaults ${collectors}"\n`;

function spec(version: number, collectors: string): Record<string, unknown> {
  return {
    apiVersion: 'bosun/v1',
    cluster: 'lab',
    node: 'a',
    version,
    disks: {
      devices: { paths: ['/dev/disk/by-id/virtio-bosun-disk1'] },
      luks: { name: 'data', key: luksKey },
      filesystem: { type: 'ext4' },
      mount: { path: '/var/lib/bosun/data', mode: '0755' },
    },
    container: demoContainer(18080, 'boot'),
    auxiliary: [
      {
        name: 'node-exporter',
        unit: 'prometheus-node-exporter.service',
        config: { path: '/etc/default/prometheus-node-exporter', content: exporterArgs(collectors), mode: '0644' },
      },
    ],
  };
}

describe('boot through the RPM and bosun.service', () => {
  before(async () => {
    const t0 = Date.now();
    // The package, built into the repository (the guests see it at /opt/bosun) so no other helper's build is touched.
    const top = `${repoRoot()}/dist/rpm-lab`;
    const built = await run('bash', ['rpm/build'], { cwd: repoRoot(), env: { ...process.env, BOSUN_RPM_TOPDIR: top }, maxBuffer: 16 << 20 });
    const rpmFile = built.stdout.trim().split('\n').pop()!;
    figures.rpmBuildSeconds = Math.round((Date.now() - t0) / 1000);
    const t1 = Date.now();
    // Boots under TCG on a machine other labs share can take minutes; the driver's default 300 s is not enough then.
    lab = await startLab({ name: 'rpm-boot', nodes: [{ name: 'a', disks: [{ sizeMiB: 256 }] }], bootTimeoutMs: 900_000 });
    vm = lab.vm('a');
    figures.firstBootSeconds = Math.round((Date.now() - t1) / 1000);
    // The guest runs the host's node binary from /usr/local/bin; the package's /usr/bin/bosun runs /usr/bin/node, as on Fedora.
    await sh(`ln -sf /usr/local/bin/node /usr/bin/node && rpm -i --nodeps --force-debian /opt/bosun/${relative(repoRoot(), rpmFile)}`, 300_000);
    const { publicKey } = generateKeyPairSync('ed25519');
    const settings = {
      node: 'a',
      stateDir: '/var/lib/bosun',
      kafka: { brokers: [`${GUEST_HOST_ADDRESS}:19094`] },
      topics: { desired: 'bosun.desired', status: 'bosun.status', events: 'bosun.events' },
      trustedKeys: [{ id: 'lab', publicKey: publicKeyString('ed25519', publicKey) }],
    };
    await vm.exec(['sh', '-c', 'cat > /etc/bosun/agent.json'], { stdin: JSON.stringify(settings) });
    luksKey = (await sealTo(vm, luksPlain))[0]!;
    await sh(
      `mkdir -p /etc/systemd/system/bosun.service.d && printf '[Service]\\nWatchdogSec=${WATCHDOG_SEC}s\\n' > /etc/systemd/system/bosun.service.d/lab.conf`,
    );
  });

  after(async () => {
    if (lab) {
      await lab.collectJournals('rpm-boot').catch(() => undefined);
      await lab.stop();
    }
    process.stdout.write(`# boot test figures: ${JSON.stringify(figures)}\n`);
  });

  it('the package installs the agent and its scriptlet enables bosun.service', async () => {
    assert.equal(await sh('stat -c %a /var/lib/bosun /etc/bosun /etc/bosun/agent.json | paste -sd,'), '700,750,640');
    assert.equal(await sh('systemctl is-enabled bosun.service'), 'enabled');
    assert.match(await sh('bosun --help'), /usage: bosun <command>/);
    // A first apply by hand: the node has a last good spec that the boot converges to.
    await vm.exec(['sh', '-c', 'cat > /root/spec.json'], { stdin: JSON.stringify(spec(1, '--collector.loadavg')) });
    const r = await vm.exec(['bosun', 'apply', '/root/spec.json', '--json'], { timeoutMs: 600_000 });
    assert.equal(r.exitCode, 0, r.stdout + r.stderr);
    assert.equal(await sh(`systemctl is-active prometheus-node-exporter ${MACHINE}; systemctl is-enabled ${MACHINE}`), 'active\nactive\nenabled');
    assert.equal(await sh('findmnt -n -o SOURCE /var/lib/bosun/data'), '/dev/mapper/data');
  });

  it('after a reboot bosun.service opens the volume, reaches READY and the machine ordered after it starts', async () => {
    const t = Date.now();
    await vm.reboot();
    // Before the fix of the READY/ordering deadlock this wait ran into bosun's start timeout: the boot-time
    // apply's `systemctl start` of the machine waited for bosun.service's READY, which waited for the apply.
    const p = await waitFor('bosun active (READY)', (q) => q.ActiveState === 'active' && q.SubState === 'running');
    figures.bootToReadySeconds = Math.round((Date.now() - t) / 1000);
    figures.agentStartToReadySeconds = Math.round((Number(p.ActiveEnterTimestampMonotonic) - Number(p.ExecMainStartTimestampMonotonic)) / 1e6);
    assert.equal(p.WatchdogUSec, `${WATCHDOG_SEC}s`);
    assert.equal(p.NRestarts, '0');
    // The closed volume is opened and mounted (not formatted) and READY goes out before the container stage: the
    // machine's start job, queued at boot by machines.target and ordered after bosun.service, then runs (the
    // stage finds it started, or starts it itself when nothing had queued it), and the apply finishes after it.
    // The apply goes on after READY (the container stage waits for the service's health check): wait for its end.
    let journal = '';
    for (let i = 0; i < 90 && !/^version 1 applied/m.test(journal); i++) {
      if (i > 0) await new Promise((r) => setTimeout(r, 2000));
      journal = await sh('journalctl -b -u bosun --no-pager -o cat');
    }
    const at = (re: RegExp) => journal.split('\n').findIndex((l) => re.test(l));
    const [open, ready, container, applied] = [
      at(/cryptsetup open/),
      at(/^ready: host built; starting the service machine/),
      at(/^container[ :]/),
      at(/^version 1 applied/),
    ];
    assert.ok(
      open >= 0 && ready > open && container > ready && applied > container,
      `open ${open} < ready ${ready} < container ${container} < applied ${applied}\n${journal}`,
    );
    assert.doesNotMatch(journal, /luksFormat|mkfs/);
    assert.ok(!journal.includes(luksPlain) && !journal.includes(luksPlain.slice(0, 24)), 'the LUKS key is not in the journal');
    assert.equal(
      await sh(`for i in $(seq 120); do systemctl is-active -q ${MACHINE} && break; sleep 1; done; systemctl is-active ${MACHINE}`, 180_000),
      'active',
    );
    // and the service in it answers its health check, as bosun's own health round sees it
    let health: unknown;
    for (let i = 0; i < 60; i++) {
      health = (JSON.parse(await sh('bosun status --health --json')) as { health: unknown }).health;
      if ((health as { ok?: boolean } | null)?.ok === true) break;
      await new Promise((r) => setTimeout(r, 2000));
    }
    assert.equal((health as { ok?: boolean } | null)?.ok, true, JSON.stringify(health));
    assert.equal(await sh('findmnt -n -o SOURCE /var/lib/bosun/data'), '/dev/mapper/data');
    const status = await waitFor('the status to name the applied version', (q) => /version 1 applied/.test(q.StatusText ?? ''), 120_000);
    assert.equal(status.MainPID, p.MainPID);
    // More than two watchdog intervals later: same process, no restart.
    await new Promise((r) => setTimeout(r, (2 * WATCHDOG_SEC + 5) * 1000));
    const later = await unitProps();
    assert.deepEqual([later.ActiveState, later.NRestarts, later.MainPID, later.Result], ['active', '0', p.MainPID, 'success']);
    assert.doesNotMatch(await sh('journalctl -b -u bosun --no-pager -o cat'), /[Ww]atchdog timeout/);
  });

  it('kill -9 of the agent: systemd restarts it and it converges without redoing finished work', async () => {
    const before = await unitProps();
    const t = Date.now();
    await sh(`kill -9 ${before.MainPID}`);
    const p = await waitFor(
      'bosun restarted and READY',
      (q) => q.NRestarts === '1' && q.ActiveState === 'active' && q.SubState === 'running' && q.MainPID !== before.MainPID,
    );
    figures.restartToReadySeconds = Math.round((Date.now() - t) / 1000);
    // READY goes out before the service phases; the status names the version once the (empty) apply has ended.
    const converged = await waitFor('the restarted agent to report version 1 applied', (q) => /version 1 applied/.test(q.StatusText ?? ''), 120_000);
    assert.equal(converged.MainPID, p.MainPID);
    const journal = await sh(`journalctl -b _SYSTEMD_UNIT=bosun.service _PID=${p.MainPID} --no-pager -o cat`);
    assert.match(journal, /version 1: the host already matches; nothing to do/);
    assert.doesNotMatch(journal, /applying version 1/);
    // the machine kept running through the agent's restart
    assert.equal(await sh(`systemctl show -p NRestarts --value ${MACHINE}; systemctl is-active ${MACHINE}`), '0\nactive');
    // the auxiliary daemon was not restarted by the agent's restart
    assert.equal(await sh('systemctl show -p NRestarts --value prometheus-node-exporter'), '0');
  });

  it('the auxiliary daemon is restarted only when its configuration changes', async () => {
    const pid1 = await sh('systemctl show -p MainPID --value prometheus-node-exporter');
    await vm.exec(['sh', '-c', 'cat > /root/spec.json'], { stdin: JSON.stringify(spec(2, '--collector.loadavg')) });
    // the agent holds the apply lock only while applying; bosun apply waits for nothing else
    const same = await vm.exec(['bosun', 'apply', '/root/spec.json', '--json'], { timeoutMs: 300_000 });
    assert.equal(same.exitCode, 0, same.stdout + same.stderr);
    assert.equal(await sh('systemctl show -p MainPID --value prometheus-node-exporter'), pid1, 'unchanged config: not restarted');
    await vm.exec(['sh', '-c', 'cat > /root/spec.json'], { stdin: JSON.stringify(spec(3, '--collector.loadavg --collector.meminfo')) });
    const changed = await vm.exec(['bosun', 'apply', '/root/spec.json', '--json'], { timeoutMs: 300_000 });
    assert.equal(changed.exitCode, 0, changed.stdout + changed.stderr);
    assert.notEqual(await sh('systemctl show -p MainPID --value prometheus-node-exporter'), pid1, 'changed config: restarted');
    // dnf runs outside bosun's sandbox the way Host.refreshPackages starts it: output and exit code come back.
    const escaped = await vm.exec(transientUnitArgv(['sh', '-c', 'echo from-transient-unit; touch /usr/bosun-rw-check && rm /usr/bosun-rw-check; exit 3']), {
      timeoutMs: 120_000,
    });
    assert.deepEqual([escaped.exitCode, escaped.stdout.trim()], [3, 'from-transient-unit'], escaped.stderr);
    const metrics = await sh(
      `node -e "fetch('http://127.0.0.1:9100/metrics').then(r => r.text()).then(t => console.log(t.split('\\n').filter(l => /^node_(load1|memory_MemTotal_bytes) /.test(l)).join(' ')))"`,
    );
    assert.match(metrics, /node_load1 .*node_memory_MemTotal_bytes|node_memory_MemTotal_bytes .*node_load1/);
  });
});
