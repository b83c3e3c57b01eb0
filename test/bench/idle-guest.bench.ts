// What an idle lab guest costs the host, and where it goes: one guest from the saved state, first bare, then
// with bosun running and no spec, then with a one-node spec applied and healthy (disks, IPsec daemon, the demo
// machine, health rounds every 30 s). Per window: qemu's CPU (utime + stime from /proc) as a share of one host
// core, and the guest's own CPU by cgroup (bosun's unit, the lab's guest agent, the machine, the rest). Then
// the guest-CPU cost of each command a health round runs, 5 runs each with bosun stopped. Asserts nothing.
// The lab is CPU-bound (TCG): every idle guest's share is taken from the guests that have work.
//
//   npm run build && bash test/services/run-with-services node dist/test/bench/idle-guest.bench.js   # BENCH_WINDOW_S=90
import { randomUUID } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLUSTER_ADDR, ClusterSpecs } from '../lab/cluster-specs.js';
import { ControlPlane, isHealthy } from '../lab/control-plane.js';
import { labRunDir, startLab, type Vm } from '../lab/driver.js';

const WINDOW_S = Number(process.env.BENCH_WINDOW_S ?? 90);
const UNITS = ['bosun-lab-agent-run.service', 'bosun-lab-agent.service', 'machine.slice', 'system.slice'];
const out = (line: string): boolean => process.stdout.write(`${line}\n`);
const sleep = (ms: number): Promise<void> => new Promise((wake) => setTimeout(wake, ms));

async function sh(vm: Vm, script: string): Promise<string> {
  const r = await vm.exec(['bash', '-c', script], { timeoutMs: 300_000 });
  if (r.exitCode !== 0) throw new Error(`${vm.name}: ${script}: exit ${r.exitCode}: ${r.stderr}`);
  return r.stdout;
}

/** qemu's CPU seconds so far (utime + stime, in clock ticks of 1/100 s). */
function qemuSeconds(vm: Vm): number {
  const fields = readFileSync(`/proc/${vm.pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** The guest's CPU nanoseconds so far, per unit of UNITS and for the whole guest ("all"). */
async function guestUsage(vm: Vm): Promise<Record<string, number>> {
  const text = await sh(
    vm,
    `for u in ${UNITS.join(' ')}; do echo "$u $(systemctl show -p CPUUsageNSec --value $u)"; done; echo "all $(grep usage_usec /sys/fs/cgroup/cpu.stat | cut -d' ' -f2)000"`,
  );
  return Object.fromEntries(
    text
      .trim()
      .split('\n')
      .map((line) => line.split(' '))
      .map(([unit, ns]) => [unit!, Number(ns)]),
  );
}

async function window(vm: Vm, label: string): Promise<void> {
  const [q0, u0, t0] = [qemuSeconds(vm), await guestUsage(vm), Date.now()];
  await sleep(WINDOW_S * 1000);
  const [q1, u1, wall] = [qemuSeconds(vm), await guestUsage(vm), (Date.now() - t0) / 1000];
  const share = (ns: number): string => (Number.isFinite(ns) ? `${((ns / 1e9 / wall) * 100).toFixed(1)} %` : '–');
  out(
    `${label}: qemu ${(((q1 - q0) / wall) * 100).toFixed(1)} % of a host core; guest CPU: ` +
      Object.keys(u1)
        .map((unit) => `${unit} ${share(u1[unit]! - u0[unit]!)}`)
        .join(', '),
  );
}

const COMMANDS = [
  'true',
  'lsblk --json --bytes --paths --output NAME,TYPE,SIZE,TRAN,MODEL,SERIAL,RO,FSTYPE,UUID,LABEL,MOUNTPOINTS',
  'mdadm --detail --export /dev/md127',
  'wipefs --no-act --json /dev/vdb',
  'systemctl show --property=LoadState,ActiveState,UnitFileState -- ipsec.service',
  'systemctl show --property=LoadState,ActiveState,UnitFileState -- ipsec.service bosun-ipsec-policy.service systemd-nspawn@demo.service',
  'ipsec status',
  'ipsec trafficstatus',
  'nft list table inet bosun_ipsec',
  'machinectl show demo --property=State --property=Leader',
  'nsenter --target $(machinectl show demo --property=Leader --value) --all -- systemctl is-active demo.service',
  '/usr/local/bin/node -e 0',
];

/** Guest CPU milliseconds per run of each command (5 runs; the guest otherwise idle). */
async function commandCosts(vm: Vm): Promise<void> {
  const script = [
    "busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }",
    'cost() { local b=$(busy); for i in 1 2 3 4 5; do bash -c "$1" >/dev/null 2>&1; done; echo "$(( ($(busy)-b)*10/5 )) ms: $1"; }',
    ...COMMANDS.map((command) => `cost '${command.replaceAll("'", "'\\''")}'`),
  ].join('\n');
  await sh(vm, 'systemctl stop bosun-lab-agent-run.service; sleep 3');
  out(`guest CPU per command (5 runs each, bosun stopped):\n${(await sh(vm, script)).trimEnd().replace(/^/gm, '  ')}`);
}

const name = 'bench-idle';
rmSync(labRunDir(name), { recursive: true, force: true });
const work = await mkdtemp(join(tmpdir(), 'bosun-bench-idle-'));
const cp = await ControlPlane.open(work, { out: process.stderr });
const kafkaPort = Number(cp.env.kafkaLabListener?.split(':')[1] ?? 19094);
const lab = await startLab({
  name,
  nodes: [{ name: 'node-a', ipv6: `${CLUSTER_ADDR['node-a']}/64`, disks: [{ sizeMiB: 512 }, { sizeMiB: 512 }] }],
  forwards: [kafkaPort],
  onProgress: (line) => process.stderr.write(`[lab] ${line}\n`),
});
try {
  const vm = lab.vm('node-a');
  await sleep(20_000);
  await window(vm, 'restored guest, nothing running');
  await cp.startAgent(vm);
  await sleep(20_000);
  await window(vm, 'bosun running, no spec');
  const since = Date.now();
  await cp.publish(await new ClusterSpecs(cp, `bench-idle/${randomUUID().slice(0, 8)}/`).nodeSpec('node-a', ['node-a']));
  await cp.waitFor('node-a healthy', isHealthy('node-a', 1), 20 * 60_000, since);
  await window(vm, 'one node applied and healthy, health rounds every 30 s');
  await commandCosts(vm);
} finally {
  await cp.close();
  await lab.stop();
  await rm(work, { recursive: true, force: true });
}
