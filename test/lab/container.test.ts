// The container phase on a real kernel: the real agent builds a data volume
// and boots the lab's service image (/var/lib/machines/bosun-demo, a tiny node
// daemon under systemd, built into the guest image) in a systemd-nspawn
// machine, locked down, with its limits in force; a config change reloads the
// service in place; a limit change applies live; a reboot brings it back.
// One VM for the whole file.
//
//   npm run build && node --test dist/test/lab/container.test.js
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { GUEST_BOSUN, labRunDir, startLab, type Lab, type Vm } from './driver.js';
import { journalGuard } from './guard.js';
import { guestSh } from './guest-apply.js';

const LAB = 'container-lab';
const CG = '/sys/fs/cgroup/machine.slice/systemd-nspawn@demo.service';
/** A command inside the running machine, as root of its user namespace. */
const IN = 'nsenter --target "$(machinectl show demo --property=Leader --value)" --all --';
const figures: Record<string, unknown> = {};
let lab: Lab | undefined;
let vm: Vm;

const sh = (script: string, timeoutMs?: number): Promise<string> => guestSh(vm, script, timeoutMs);

/** Exit code and stderr of a script that is expected to fail. */
async function fails(script: string): Promise<string> {
  const r = await vm.exec(['sh', '-c', script], { timeoutMs: 60_000 });
  assert.notEqual(r.exitCode, 0, `${script} should fail`);
  return r.stderr.trim();
}

interface Applied {
  code: number;
  out: Record<string, unknown>;
  stderr: string;
  /** the container phase: first step logged to the end of the apply (its last step is the health check) */
  containerMs?: number;
}

async function apply(spec: unknown): Promise<Applied> {
  const w = await vm.exec(['sh', '-c', 'cat > /root/spec.json'], { stdin: JSON.stringify(spec) });
  assert.equal(w.exitCode, 0);
  const r = await vm.exec([...GUEST_BOSUN, 'apply', '/root/spec.json', '--json'], { timeoutMs: 600_000 });
  const lines = r.stderr
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { time: number; phase?: string; msg: string });
  const first = lines.find((l) => l.phase === 'container');
  const done = lines.find((l) => /^version \d+ applied$/.test(l.msg));
  return {
    code: r.exitCode ?? -1,
    out: r.stdout.trim() ? (JSON.parse(r.stdout) as Record<string, unknown>) : {},
    stderr: `${r.stderr}\n${r.stdout}`,
    containerMs: first && done ? done.time - first.time : undefined,
  };
}

/** What the demo service answers on a host address and port, or undefined when nothing answers. */
async function demo(port: number): Promise<{ pid: number; started: string; reloads: number; greeting: string; version: string } | undefined> {
  // Exit 7 only for a refused connection: a slow answer (TCG, CPU quota) is an error, not "unreachable".
  const js = `fetch('http://10.0.2.15:${port}/', { signal: AbortSignal.timeout(30000) }).then((r) => r.text()).then((t) => process.stdout.write(t), (e) => { console.error(String(e), e.cause); process.exit(e.cause?.code === 'ECONNREFUSED' ? 7 : 8); })`;
  const r = await vm.exec(['node', '-e', js], { timeoutMs: 90_000 });
  if (r.exitCode === 7) return undefined;
  assert.equal(r.exitCode, 0, r.stderr);
  return JSON.parse(r.stdout) as never;
}

/** Runs a check; on failure saves the guests' journals under .cache/lab/artifacts/container-<label>/ and names the directory in the error. */
const guarded = journalGuard('container', () => lab);

const spec = (version: number, change: { greeting?: string; memoryMax?: string; tasksMax?: number } = {}) => ({
  apiVersion: 'bosun/v1',
  cluster: 'lab',
  node: 'container-a',
  version,
  disks: {
    devices: { paths: ['/dev/disk/by-id/virtio-bosun-disk1'] },
    filesystem: { type: 'ext4' },
    mount: { path: '/var/lib/bosun/data', mode: '0755' },
  },
  container: {
    name: 'demo',
    image: '/var/lib/machines/bosun-demo',
    service: { unit: 'demo.service', onConfigChange: 'reload', health: ['/usr/local/bin/node', '/usr/local/lib/bosun-lab/demo/health.mjs'] },
    limits: { memoryMax: change.memoryMax ?? '256M', cpuQuota: '100%', ioWeight: 200, tasksMax: change.tasksMax ?? 200 },
    network: { mode: 'private', ports: [{ host: 18080, container: 8080 }] },
    config: {
      mountPoint: '/etc/demo',
      files: {
        'demo.conf': {
          format: 'conf',
          settings: { port: 8080, admin_port: 9090, greeting: 'hello', version: String(version) },
          required: ['port', 'admin_port'],
        },
      },
      overrides: change.greeting ? { 'demo.conf': { greeting: change.greeting } } : {},
    },
    dataMountPoint: '/var/lib/demo',
  },
});

describe('container phase in a VM', { timeout: 30 * 60_000 }, () => {
  before(async () => {
    rmSync(labRunDir(LAB), { recursive: true, force: true });
    lab = await startLab({ name: LAB, forwards: [], nodes: [{ name: 'container-a', disks: [{ sizeMiB: 512 }] }] });
    vm = lab.vm('container-a');
  });

  after(async () => {
    process.stderr.write(`[lab] container figures: ${JSON.stringify(figures)}\n`);
    await lab?.stop();
  });

  it('boots the service image locked down, with its limits, binds and one published port, healthy', () =>
    guarded('boot', async () => {
      const first = await apply(spec(1));
      assert.equal(first.code, 0, first.stderr);
      assert.equal(first.out.result, 'applied');
      figures.phaseStartToHealthyMs = first.containerMs;
      figures.firstApplyAgentMs = first.out.durationMs;

      // Limits in force in the machine's cgroup.
      assert.equal(await sh(`cat ${CG}/memory.max ${CG}/cpu.max ${CG}/pids.max ${CG}/io.weight`), '268435456\n100000 100000\n200\ndefault 200');
      // Its own user namespace: root inside is an unprivileged id range on the host.
      const uidMap = (await sh('cat /proc/$(machinectl show demo --property=Leader --value)/uid_map')).split(/\s+/);
      assert.equal(uidMap[0], '0');
      assert.notEqual(uidMap[1], '0', 'container root is not host root');
      assert.equal(uidMap[2], '65536');
      // Only the init's capabilities (CHOWN DAC_OVERRIDE FOWNER KILL SETGID SETUID SETPCAP SYS_ADMIN), no new privileges.
      assert.match(await sh(`${IN} grep -E '^(CapBnd|NoNewPrivs)' /proc/1/status`), /^CapBnd:\s+00000000002001eb\nNoNewPrivs:\s+1$/);
      // The root and the config are read-only; the data volume is writable and is the host's data volume.
      assert.match(await fails(`${IN} touch /probe`), /Read-only file system/);
      assert.match(await fails(`${IN} touch /usr/probe`), /Read-only file system/);
      assert.match(await fails(`${IN} touch /etc/demo/probe`), /Read-only file system/);
      await sh(`${IN} sh -c 'echo from-inside > /var/lib/demo/probe'`);
      assert.equal(await sh('cat /var/lib/bosun/data/probe'), 'from-inside');
      assert.match(await sh('cat /var/lib/bosun/data/starts'), /pid \d+/, 'the service recorded its start in the data volume');
      // Of the host's filesystems it sees exactly its image, its config and its data (and nspawn's
      // /run/host/os-release, the host's OS name, which every nspawn machine gets).
      const real = (await sh(`${IN} findmnt -rn -o TARGET,FSTYPE`))
        .split('\n')
        .map((l) => l.split(' '))
        .filter(([, t]) => t === 'ext4' || t === 'xfs');
      assert.deepEqual([...new Set(real.map(([m]) => m).filter((m) => m !== '/run/host/os-release'))].sort(), ['/', '/etc/demo', '/var/lib/demo']);
      assert.match(await sh(`${IN} findmnt -n -o OPTIONS /etc/demo`), /^ro,/);

      // Reachable on the published port only, from the host's address.
      const answer = await demo(18080);
      assert.equal(answer?.greeting, 'hello');
      assert.equal(await demo(9090), undefined, 'the admin port is not published');
      assert.equal(await demo(8080), undefined, 'the container port is not the host port');
      assert.match(
        await sh(`${IN} node -e "fetch('http://127.0.0.1:9090/').then((r) => r.json()).then((j) => console.log(j.greeting))"`),
        /hello/,
        'the admin port does listen inside',
      );

      const st = await vm.exec([...GUEST_BOSUN, 'status', '--health', '--json']);
      assert.equal(st.exitCode, 0, st.stderr);
      const health = (JSON.parse(st.stdout) as { health: { ok: boolean; container: { healthy: boolean; state: string; service: string } } }).health;
      assert.equal(health.ok, true, JSON.stringify(health));
      assert.deepEqual([health.container.healthy, health.container.service], [true, 'active']);

      const again = await apply(spec(1));
      assert.equal(again.code, 0, again.stderr);
      assert.equal(again.out.result, 'unchanged', 'a built host needs nothing');
    }));

  it('reloads the service for a config change: same process, same machine, new settings', () =>
    guarded('reload', async () => {
      const before = await demo(18080);
      const leader = await sh('machinectl show demo --property=Leader --value');
      const r = await apply(spec(2, { greeting: 'hi' }));
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /systemctl reload demo\.service/);
      assert.doesNotMatch(r.stderr, /systemctl restart/);
      figures.configReloadAgentMs = r.out.durationMs;
      const now = await demo(18080);
      assert.deepEqual(
        [now?.pid, now?.started, now?.reloads, now?.greeting, now?.version],
        [before?.pid, before?.started, (before?.reloads ?? 0) + 1, 'hi', '2'],
      );
      assert.equal(await sh('machinectl show demo --property=Leader --value'), leader, 'the machine was not restarted');
      assert.match(await sh('cat /etc/bosun/container/demo/demo.conf'), /^greeting = 'hi'$/m);
    }));

  it('applies a limit change to the running machine without a restart', () =>
    guarded('limits', async () => {
      const before = await demo(18080);
      const leader = await sh('machinectl show demo --property=Leader --value');
      const r = await apply(spec(3, { greeting: 'hi', memoryMax: '192M', tasksMax: 150 }));
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /set-property --runtime systemd-nspawn@demo\.service MemoryMax=192M/);
      figures.liveLimitAgentMs = r.out.durationMs;
      assert.equal(await sh(`cat ${CG}/memory.max ${CG}/pids.max`), '201326592\n150');
      assert.equal(await sh('machinectl show demo --property=Leader --value'), leader, 'the machine was not restarted');
      assert.equal((await demo(18080))?.pid, before?.pid);
    }));

  it('comes back after a reboot with its limits and config, without the agent', () =>
    guarded('reboot', async () => {
      const t = Date.now();
      await vm.reboot();
      const deadline = Date.now() + 240_000;
      let answer: Awaited<ReturnType<typeof demo>>;
      while (!(answer = await demo(18080)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 3000));
      figures.rebootToServiceMs = Date.now() - t;
      assert.equal(answer?.greeting, 'hi', 'the service answers on its published port after the reboot');
      assert.equal(await sh(`cat ${CG}/memory.max ${CG}/pids.max`), '201326592\n150');
      assert.equal((await sh('wc -l < /var/lib/bosun/data/starts')).trim(), '2', 'one more start recorded in the same data volume');
      const r = await apply(spec(3, { greeting: 'hi', memoryMax: '192M', tasksMax: 150 }));
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.out.result, 'unchanged');
    }));
});
