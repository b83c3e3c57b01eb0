// What the disks phase costs on a blank host and on a host it already built (issue 5):
//  1. in a lab VM (qemu TCG): `bosun apply` of RAID1 + LUKS2 + xfs on blank disks, then the same
//     apply again N times (nothing to do): engine time per run, and how much of it the inspection
//     tools took (lsblk, mdadm, cryptsetup, ... from a probe recording);
//  2. on this machine, natively: the agent's own observe + plan of that already-built host,
//     replayed from the recording many times (no tools run), wall and CPU per re-run.
// Emulation inflates everything in (1) several times over; (2) is the agent's own time on real
// hardware. Prints figures; asserts only that the re-run had nothing to do.
// Sizes: BENCH_RERUNS (5 in the VM), BENCH_REPLAYS (300 natively).
//
//   npx tsc -p tsconfig.json && node dist/test/bench/disks-rerun.bench.js
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { DISTROS } from '../../src/host/distro.js';
import { ReplayProbe, type ProbeRecording } from '../../src/host/probe-record.js';
import { seal, x25519PublicFromString } from '../../src/identity/seal.js';
import { planNode } from '../../src/phases/index.js';
import { parseNodeSpec } from '../../src/spec/validate.js';
import { GUEST_BOSUN, labRunDir, startLab, type Vm } from '../lab/driver.js';
import { median, repoRoot } from '../helpers.js';
import { join } from 'node:path';

const RERUNS = Number(process.env.BENCH_RERUNS ?? 5);
const REPLAYS = Number(process.env.BENCH_REPLAYS ?? 300);
const NAME = 'bench-disks';
const out = (s: string) => process.stdout.write(`${s}\n`);
const r1 = (x: number) => Math.round(x * 10) / 10;

async function guest(vm: Vm, argv: string[], stdin?: string): Promise<string> {
  const r = await vm.exec(argv, { timeoutMs: 600_000, ...(stdin !== undefined ? { stdin } : {}) });
  if (r.exitCode !== 0) throw new Error(`${argv.join(' ')} failed (${r.exitCode}): ${r.stderr}\n${r.stdout}`);
  return r.stdout;
}

rmSync(labRunDir(NAME), { recursive: true, force: true });
const lab = await startLab({
  name: NAME,
  nodes: [{ name: 'bench-a', disks: [512, 512].map((sizeMiB) => ({ sizeMiB })) }],
  onProgress: (l) => out(`[lab] ${l}`),
});
try {
  const vm = lab.vm('bench-a');
  const { sealingKey } = JSON.parse(await guest(vm, [...GUEST_BOSUN, 'identity', '--json'])) as { sealingKey: string };
  const spec = {
    apiVersion: 'bosun/v1',
    cluster: 'bench',
    node: 'bench-a',
    version: 1,
    disks: {
      devices: { paths: [1, 2].map((n) => `/dev/disk/by-id/virtio-bosun-disk${n}`) },
      raid: { level: 1, name: 'data' },
      luks: { name: 'data', key: { sealed: seal(x25519PublicFromString(sealingKey), randomBytes(32)) } },
      filesystem: { type: 'xfs' },
      mount: { path: '/var/lib/bosun/data', mode: '0750' },
    },
  };
  await guest(vm, ['sh', '-c', 'cat > /root/spec.json'], JSON.stringify(spec));
  const apply = async () => {
    const t = Date.now();
    const o = JSON.parse(await guest(vm, [...GUEST_BOSUN, 'apply', '/root/spec.json', '--json'])) as { result: string; steps: number; durationMs: number };
    return { ...o, wallMs: Date.now() - t };
  };

  const first = await apply();
  out(`blank disks: ${first.steps} steps, engine ${first.durationMs} ms, command wall ${first.wallMs} ms (TCG)`);
  const reruns = [];
  for (let i = 0; i < RERUNS; i++) {
    const o = await apply();
    if (o.result !== 'unchanged') throw new Error(`re-run ${i + 1} was not a no-op: ${JSON.stringify(o)}`);
    reruns.push(o);
  }
  const nodeStart: number[] = [];
  for (let i = 0; i < RERUNS; i++) {
    const t = Date.now();
    await guest(vm, ['node', '-e', '0']);
    nodeStart.push(Date.now() - t);
  }
  await guest(vm, [...GUEST_BOSUN, 'plan', '/root/spec.json', '--record-probe', '/root/probe.json', '--json']);
  const recording = JSON.parse(await guest(vm, ['cat', '/root/probe.json'])) as ProbeRecording;
  const runs = recording.entries.filter((e) => e.op === 'run' || e.op === 'unitState');
  const toolMs = recording.entries.reduce((a, e) => a + e.ms, 0);

  // Natively: the same observe + plan against the recorded answers.
  const parsed = parseNodeSpec(spec);
  if (!parsed.ok) throw new Error('bench spec invalid');
  const replay = new ReplayProbe(recording);
  const ctx = { distro: DISTROS.debian };
  const wall: number[] = [];
  let steps = -1;
  for (let i = 0; i < 20; i++) {
    replay.rewind();
    await planNode(parsed.value, replay, ctx); // warm-up
  }
  const cpu0 = process.cpuUsage();
  for (let i = 0; i < REPLAYS; i++) {
    replay.rewind();
    const t = performance.now();
    steps = (await planNode(parsed.value, replay, ctx)).length;
    wall.push(performance.now() - t);
  }
  const cpu = process.cpuUsage(cpu0);
  if (steps !== 0) throw new Error(`replayed plan of the built host has ${steps} steps, expected none`);

  // Natively: what a whole `bosun plan` process costs in CPU (start-up, module loading, parse,
  // plan) against bare `node -e 0`, alternated, from the kernel's accounting via GNU time.
  const cpuOf = (argv: string[]) => {
    const r = execFileSync('/usr/bin/time', ['-f', '%U %S', ...argv], { stdio: ['ignore', 'ignore', 'pipe'] })
      .toString()
      .trim()
      .split('\n')
      .pop()!;
    const [u, sy] = r.split(' ').map(Number) as [number, number];
    return (u + sy) * 1000;
  };
  const cliCpu: number[] = [];
  const bareCpu: number[] = [];
  for (let i = 0; i < 7; i++) {
    cliCpu.push(cpuOf([process.execPath, join(repoRoot, 'dist/src/cli.js'), 'plan', '--blank', '--distro', 'fedora', join(repoRoot, 'examples/node-a.json')]));
    bareCpu.push(cpuOf([process.execPath, '-e', '0']));
  }

  const engine = reruns.map((o) => o.durationMs);
  const commandWall = reruns.map((o) => o.wallMs);
  out('');
  out(`disks phase, RAID1 + LUKS2 + xfs on 2 x 512 MiB virtio disks (${RERUNS} re-runs in the VM, ${REPLAYS} native replays)`);
  out(`  first apply on blank disks (TCG):            ${first.steps} steps, engine ${r1(first.durationMs / 1000)} s`);
  out(
    `  re-run, nothing to do (TCG): engine median   ${median(engine)} ms; whole \`bosun apply\` command ${median(commandWall)} ms (node start-up alone ${median(nodeStart)} ms)`,
  );
  out(
    `  re-run questions to the host:                ${recording.entries.length} (${runs.length} commands: ${[...new Set(runs.map((e) => (e.op === 'run' ? (e.args[0] as string[])[0] : 'systemctl')))].join(', ')}), tools' wall ${r1(toolMs)} ms (TCG)`,
  );
  out(
    `  re-run, agent's own observe + plan, native:  median ${median(wall).toFixed(3)} ms wall, ${((cpu.user + cpu.system) / REPLAYS / 1000).toFixed(3)} ms CPU per re-run`,
  );
  out(`  whole \`bosun plan\` process, native CPU:    median ${median(cliCpu)} ms (bare \`node -e 0\`: ${median(bareCpu)} ms)`);
  out(`  ratio re-run engine / blank engine (TCG):    ${r1((median(engine) / first.durationMs) * 100)} %`);
  out(
    JSON.stringify({
      bench: 'disks-rerun',
      blankSteps: first.steps,
      blankEngineMs: first.durationMs,
      rerunEngineMsMedian: median(engine),
      rerunCommandMsMedian: median(commandWall),
      nodeStartMsMedian: median(nodeStart),
      rerunQuestions: recording.entries.length,
      rerunCommands: runs.length,
      rerunToolMs: r1(toolMs),
      nativeOwnMsMedian: median(wall),
      nativeOwnCpuMsPerRun: (cpu.user + cpu.system) / REPLAYS / 1000,
      nativeCliProcessCpuMs: median(cliCpu),
      nativeBareNodeCpuMs: median(bareCpu),
    }),
  );
} finally {
  await lab.stop();
}
