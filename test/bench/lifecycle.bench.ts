// Time to serve (issue 26): how long a new node takes from power-on to its
// first healthy status on Kafka, driven only by Kafka as in the lifecycle
// scenario (test/lab/scenario.test.ts), with its parts: the VM's boot, the
// lab's setup, the agent's start, each phase of the apply, the first health
// round. node-a restores from object storage (a backup the host made with
// `bosun backup create`), node-d from peer node-a over the IPsec mesh. These
// guests boot for real (a new host boots); the tests start theirs from the
// saved guest state, so the figures live here, not in a test.
//
// Also, in the same run: a lab guest's start from the saved guest state
// against a real boot of the same guest (median of BENCH_STARTS each, one
// guest at a time).
//
// Prints the figures and writes them to docs/reliability.md between the
// "bench:lifecycle" markers (BENCH_WRITE_DOCS=0: print only). Needs the test
// services (npm run bench starts them) and a quiet machine: the guests run
// under TCG on the host's cores.
//
//   npm run build && bash test/services/run-with-services node dist/test/bench/lifecycle.bench.js
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { rmSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLUSTER_ADDR, ClusterSpecs, timeToServe, timesLine } from '../lab/cluster-specs.js';
import { ControlPlane, isHealthy } from '../lab/control-plane.js';
import { makeSource } from '../lab/data-tree.js';
import { GUEST_HOST_ADDRESS, labRunDir, repoRoot, startLab, type Lab } from '../lab/driver.js';
import { median } from '../helpers.js';

const STARTS = Number(process.env.BENCH_STARTS ?? 3);
const CONVERGE_MS = 20 * 60_000;
const out = (line: string): boolean => process.stdout.write(`${line}\n`);
const seconds = (ms: number): string => (ms / 1000).toFixed(1);

/** Restores then boots each of STARTS fresh guests, one at a time; returns the milliseconds of each kind. */
async function startVsBoot(): Promise<{ restoreMs: number[]; bootMs: number[] }> {
  const name = 'bench-start';
  rmSync(labRunDir(name), { recursive: true, force: true });
  const nodes = Array.from({ length: STARTS }, (_, i) => ({ name: `start-${i + 1}`, disks: [{ sizeMiB: 512 }, { sizeMiB: 512 }], deferStart: true }));
  const lab = await startLab({ name, nodes, forwards: [] });
  try {
    for (const vm of lab.vms) {
      await vm.start(); // fresh: from the saved state
      await vm.kill();
      await vm.start(); // the same guest again: a real boot from its own disks
      await vm.kill();
    }
    return { restoreMs: lab.vms.map((v) => v.restoreTimesMs[0]!), bootMs: lab.vms.map((v) => v.bootTimesMs[0]!) };
  } finally {
    await lab.stop();
  }
}

type Times = Record<string, number | string>;

interface LifecycleFigures {
  objectStorage: Times;
  peer: Times;
}

/** node-a from object storage, then node-d from peer node-a; each guest boots for real. */
async function timeToServeRun(work: string): Promise<LifecycleFigures> {
  const name = 'bench-life';
  rmSync(labRunDir(name), { recursive: true, force: true });
  const cp = await ControlPlane.open(work, { out: process.stderr });
  let lab: Lab | undefined;
  try {
    const specs = new ClusterSpecs(cp, `bosun-lab/bench-lifecycle/${randomUUID().slice(0, 8)}/`);
    const src = join(work, 'src');
    await mkdir(src);
    await makeSource(src);
    await specs.backUpFromHost(src);
    const s3Port = Number(new URL(cp.env.s3.endpoint).port || 80);
    const kafkaPort = Number(cp.env.kafkaLabListener?.split(':')[1] ?? 19094);
    const settings = { objectStorage: { endpoint: `http://${GUEST_HOST_ADDRESS}:${s3Port}`, region: cp.env.s3.region } };
    const onA = Date.now();
    lab = await startLab({
      name,
      nodes: ['node-a', 'node-d'].map((node) => ({
        name: node,
        ipv6: `${CLUSTER_ADDR[node]}/64`,
        disks: [{ sizeMiB: 512 }, { sizeMiB: 512 }],
        coldBoot: true,
        deferStart: node === 'node-d',
      })),
      forwards: [kafkaPort, { guestPort: s3Port, hostPort: s3Port }],
      onProgress: (line) => process.stderr.write(`[lab] ${line}\n`),
    });
    const a = lab.vm('node-a');
    await cp.startAgent(a, settings);
    await cp.publish(await specs.nodeSpec('node-a', ['node-a'], { restore: specs.objectStorageRestore('node-a') }));
    await cp.waitFor('node-a healthy', isHealthy('node-a', 1), CONVERGE_MS, onA);
    const objectStorage = timeToServe(cp, 'node-a', a, 1, onA);
    out(`time to serve node-a (object storage): ${timesLine(objectStorage)}`);

    const onD = Date.now();
    const d = lab.vm('node-d');
    await d.start();
    await cp.startAgent(d, settings);
    const mesh = ['node-a', 'node-d'];
    await cp.publish(await specs.nodeSpec('node-a', mesh, { restore: specs.objectStorageRestore('node-a'), peerServe: specs.peerServe(['node-d']) }));
    await cp.publish(await specs.nodeSpec('node-d', mesh, { restore: specs.peerRestore('node-a') }));
    await cp.waitFor('node-d healthy', isHealthy('node-d', 1), CONVERGE_MS, onD);
    const peer = timeToServe(cp, 'node-d', d, 1, onD);
    out(`time to serve node-d (peer node-a): ${timesLine(peer)}`);
    return { objectStorage, peer };
  } finally {
    await cp.close();
    await lab?.stop();
  }
}

const HEAD: Array<[string, (t: Times) => string]> = [
  ['total', (t) => num(t.totalS)],
  ['VM boot', (t) => num(t.vmStartS)],
  ['lab setup (settings, identity)', (t) => num(t.labSetupS)],
  ['agent start → apply', (t) => num(t.agentStartToApplyS)],
  ['apply: first planning pass', (t) => num(t.applyPlanS)],
];
const TAIL: Array<[string, (t: Times) => string]> = [
  ['whole apply', (t) => num(t.applyS)],
  ["tools' real work in it", (t) => num(t.toolsWorkS)],
  ["agent's own share of the apply", (t) => `${num(t.agentOverheadInApplyS)} (${Math.round((100 * Number(t.agentOverheadInApplyS)) / Number(t.applyS))} %)`],
  ['applied → first healthy status', (t) => num(t.appliedToHealthyStatusS)],
];

function num(value: number | string | undefined): string {
  return typeof value === 'number' ? value.toFixed(1) : '–';
}

function commit(): string {
  try {
    return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: repoRoot(), encoding: 'utf8' }).trim();
  } catch {
    return 'unknown';
  }
}

/** One row per phase either node ran, in the order they ran: the phase's seconds (its steps' seconds). */
function phaseRows(life: LifecycleFigures): Array<[string, (t: Times) => string]> {
  const phases = [...new Set([life.objectStorage, life.peer].flatMap((t) => Object.keys(t).filter((k) => k.endsWith('StepsS'))))];
  return phases.map((key) => {
    const phase = key.slice(0, -'StepsS'.length);
    return [`${phase} (its steps)`, (t: Times) => (t[`${phase}S`] === undefined ? '–' : `${num(t[`${phase}S`])} (${num(t[key])})`)];
  });
}

function markdown(life: LifecycleFigures, starts: { restoreMs: number[]; bootMs: number[] }): string {
  const restore = median(starts.restoreMs);
  const boot = median(starts.bootMs);
  const rows = [...HEAD, ...phaseRows(life), ...TAIL];
  return [
    `Written by \`node dist/test/bench/lifecycle.bench.js\` (\`npm run bench\`) on ${new Date().toISOString().slice(0, 10)}, commit ${commit()};`,
    'seconds on this machine under TCG (a loaded or slower machine stretches every row alike).',
    '',
    '| part | node-a (object storage) | node-d (peer node-a) |',
    '|---|---|---|',
    ...rows.map(([label, cell]) => `| ${label} | ${cell(life.objectStorage)} | ${cell(life.peer)} |`),
    '',
    `A lab guest's start, same run, one guest at a time (${starts.restoreMs.length} guests): from the saved guest state median ` +
      `${seconds(restore)} s (${starts.restoreMs.map(seconds).join(', ')}), a real boot of the same guests median ${seconds(boot)} s ` +
      `(${starts.bootMs.map(seconds).join(', ')}): **${(boot / restore).toFixed(1)}x** faster from the saved state.`,
  ].join('\n');
}

async function writeDocs(section: string): Promise<void> {
  const path = join(repoRoot(), 'docs', 'reliability.md');
  const text = await readFile(path, 'utf8');
  const begin = '<!-- bench:lifecycle -->';
  const end = '<!-- /bench:lifecycle -->';
  const from = text.indexOf(begin);
  const to = text.indexOf(end);
  if (from < 0 || to < from) throw new Error(`${path} has no ${begin} ... ${end} section to write the figures into`);
  await writeFile(path, `${text.slice(0, from + begin.length)}\n${section}\n${text.slice(to)}`);
  out(`wrote the figures to ${path}`);
}

const work = await mkdtemp(join(tmpdir(), 'bosun-bench-lifecycle-'));
try {
  const starts = await startVsBoot();
  out(`start from the saved state: ${starts.restoreMs.map(seconds).join(', ')} s; real boot: ${starts.bootMs.map(seconds).join(', ')} s`);
  const life = await timeToServeRun(work);
  const section = markdown(life, starts);
  out(section);
  if (process.env.BENCH_WRITE_DOCS !== '0') await writeDocs(section);
} finally {
  await rm(work, { recursive: true, force: true });
}
