// Fleet-scale figures for the control loop, against the real broker (issue 9):
//  1. with a 100 000-key desired topic, the messages and bytes one agent reads to find its own spec;
//  2. produce-to-applied-status latency of a config change for N agents in one process (p50, p99);
//  3. idle RSS and CPU of a real `bosun run` process.
// Prints figures; asserts nothing. Sizes: BENCH_KEYS (100000), BENCH_AGENTS (200), BENCH_IDLE_SECONDS (60).
//
//   npx tsc -p tsconfig.json && bash test/services/run-with-services node dist/test/bench/fleet.bench.js
import { spawn } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import kafkajs from 'kafkajs';
import { Agent } from '../../src/daemon/agent.js';
import { startDesiredConsumer } from '../../src/bus/desired.js';
import { signEnvelope } from '../../src/bus/envelope.js';
import type { SignedReport } from '../../src/bus/reporter.js';
import type { Planner } from '../../src/engine/apply.js';
import { Redactor } from '../../src/secrets/redact.js';
import { BlankProbe, DISTROS, Host } from '../../src/host/index.js';
import { loadOrCreateIdentity } from '../../src/identity/host-identity.js';
import { publicKeyString } from '../../src/identity/seal.js';
import { createLogger } from '../../src/log.js';
import { parseAgentSettings } from '../../src/spec/validate.js';
import { requireServices } from '../services/env.js';
import { repoRoot } from '../helpers.js';

const { Kafka, logLevel } = kafkajs;
const KEYS = Number(process.env.BENCH_KEYS ?? 100_000);
const AGENTS = Number(process.env.BENCH_AGENTS ?? 200);
const IDLE = Number(process.env.BENCH_IDLE_SECONDS ?? 60);
const PARTITIONS = 32;
const out = (s: string) => process.stdout.write(`${s}\n`);
const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))]!;

const env = await requireServices();
const run = randomBytes(3).toString('hex');
const topics = { desired: `bench.desired.${run}`, status: `bench.status.${run}`, events: `bench.events.${run}` };
const kafka = new Kafka({ clientId: 'bosun-bench', brokers: env.kafkaBrokers, logLevel: logLevel.NOTHING });
const admin = kafka.admin();
await admin.connect();
await admin.createTopics({
  waitForLeaders: true,
  topics: [
    { topic: topics.desired, numPartitions: PARTITIONS, configEntries: [{ name: 'cleanup.policy', value: 'compact' }] },
    { topic: topics.status, numPartitions: 8, configEntries: [{ name: 'cleanup.policy', value: 'compact' }] },
    { topic: topics.events, numPartitions: 8 },
  ],
});
const cp = generateKeyPairSync('ed25519');
const trusted = [{ id: 'cp', publicKey: publicKeyString('ed25519', cp.publicKey) }];
const spec = (node: string, version: number) => ({
  apiVersion: 'bosun/v1',
  cluster: 'bench',
  node,
  version,
  auxiliary: [{ name: 'telegraf', unit: 'telegraf.service', config: { path: '/etc/telegraf/bosun.conf', content: `v${version}\n` } }],
});
const producer = kafka.producer();
await producer.connect();

// 1. A 100 000-key topic.
let t = Date.now();
for (let i = 0; i < KEYS; i += 2000) {
  const messages = [];
  for (let j = i; j < Math.min(KEYS, i + 2000); j++)
    messages.push({ key: `node-${j}`, value: JSON.stringify(signEnvelope(spec(`node-${j}`, 1), 'cp', cp.privateKey)) });
  await producer.send({ topic: topics.desired, messages });
}
out(`fleet: produced ${KEYS} desired states over ${PARTITIONS} partitions in ${((Date.now() - t) / 1000).toFixed(1)} s`);
const { logger } = createLogger({ redactor: new Redactor(), target: 'stderr', level: 'error' });
const reads: { messages: number; bytes: number }[] = [];
for (const node of ['node-17', 'node-4242', `node-${KEYS - 1}`]) {
  let found = false;
  const c = await startDesiredConsumer({ kafka, topic: topics.desired, node, logger, onMessage: () => Promise.resolve(void (found = true)) });
  t = Date.now();
  while (!found && Date.now() - t < 120_000) await new Promise((r) => setTimeout(r, 50));
  reads.push({ ...c.stats });
  out(
    `fleet: ${node} found its spec after reading ${c.stats.messages} messages (${(c.stats.bytes / 1024).toFixed(0)} KiB) of ${KEYS}; N/partitions = ${Math.round(KEYS / PARTITIONS)}; ${Date.now() - t} ms`,
  );
  await c.stop();
}
out(
  `fleet: median messages read per agent ${pct(
    reads.map((r) => r.messages),
    50,
  )} = ${(
    pct(
      reads.map((r) => r.messages),
      50,
    ) /
    (KEYS / PARTITIONS)
  ).toFixed(2)} x N/partitions`,
);

// 2. N agents, config change latency.
const dir = await mkdtemp(join(tmpdir(), 'bosun-bench-'));
const planner: Planner = { phases: () => ['auxiliary'], plan: () => Promise.resolve([]) };
const agents: Agent[] = [];
t = Date.now();
for (let i = 0; i < AGENTS; i++) {
  const node = `node-${i}`;
  const settings = parseAgentSettings({ node, stateDir: join(dir, node), kafka: { brokers: env.kafkaBrokers }, topics, trustedKeys: trusted, metrics: false });
  if (!settings.ok) throw new Error('settings');
  const redactor = new Redactor();
  const { identity } = await loadOrCreateIdentity(join(dir, node));
  agents.push(
    new Agent({
      settings: settings.value,
      stateDir: join(dir, node),
      identity,
      host: new Host({ redactor }),
      probe: new BlankProbe(),
      ctx: { distro: DISTROS.fedora },
      logger,
      redactor,
      planner,
    }),
  );
}
await Promise.all(agents.map((a) => a.start()));
const applied = new Map<string, number>();
const watcher = kafka.consumer({ groupId: `bench-watch-${run}` });
await watcher.connect();
await watcher.subscribe({ topic: topics.status, fromBeginning: true });
await watcher.run({
  eachMessage: async ({ message }) => {
    const r = JSON.parse(message.value!.toString()) as SignedReport;
    const body = JSON.parse(Buffer.from(r.payload, 'base64url').toString()) as { node: string; appliedVersion: number | null };
    if (body.appliedVersion === 2 && !applied.has(body.node)) applied.set(body.node, Date.now());
    await Promise.resolve();
  },
});
// Everyone has applied version 1 first.
while (agents.some((a) => a.lastGood?.version !== 1) && Date.now() - t < 600_000) await new Promise((r) => setTimeout(r, 200));
out(`fleet: ${AGENTS} agents started and applied version 1 in ${((Date.now() - t) / 1000).toFixed(1)} s`);
const sentAt = new Map<string, number>();
for (let i = 0; i < AGENTS; i++) {
  const node = `node-${i}`;
  sentAt.set(node, Date.now());
  await producer.send({ topic: topics.desired, messages: [{ key: node, value: JSON.stringify(signEnvelope(spec(node, 2), 'cp', cp.privateKey)) }] });
  await new Promise((r) => setTimeout(r, 10));
}
t = Date.now();
while (applied.size < AGENTS && Date.now() - t < 120_000) await new Promise((r) => setTimeout(r, 100));
const lat = [...applied.entries()].map(([n, at]) => at - sentAt.get(n)!);
out(
  `fleet: config change produce -> applied status, ${lat.length}/${AGENTS} agents: p50 ${pct(lat, 50)} ms, p99 ${pct(lat, 99)} ms, max ${Math.max(...lat)} ms`,
);
await watcher.disconnect();
await Promise.all(agents.map((a) => a.stop()));

// 3. Idle RSS and CPU of a real daemon.
const settingsFile = join(dir, 'agent.json');
await writeFile(
  settingsFile,
  JSON.stringify({
    node: 'node-idle',
    stateDir: join(dir, 'idle'),
    kafka: { brokers: env.kafkaBrokers },
    topics,
    trustedKeys: trusted,
    metrics: { listen: '127.0.0.1:0' },
  }),
);
const child = spawn(process.execPath, [join(repoRoot, 'dist/src/cli.js'), 'run', '--settings', settingsFile], {
  stdio: 'ignore',
  env: { ...process.env, JOURNAL_STREAM: '' },
});
await new Promise((r) => setTimeout(r, 15_000));
const cpu = async () => {
  const f = (await readFile(`/proc/${child.pid}/stat`, 'utf8')).split(') ')[1]!.split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
};
const rss = async () => Number(/VmRSS:\s+(\d+)/.exec(await readFile(`/proc/${child.pid}/status`, 'utf8'))![1]) / 1024;
const c0 = await cpu();
const rssSamples: number[] = [];
for (let i = 0; i < IDLE; i += 5) {
  await new Promise((r) => setTimeout(r, 5000));
  rssSamples.push(await rss());
}
const c1 = await cpu();
out(
  `fleet: idle daemon over ${IDLE} s: RSS median ${pct(rssSamples, 50).toFixed(1)} MB (max ${Math.max(...rssSamples).toFixed(1)} MB), CPU ${(((c1 - c0) / IDLE) * 100).toFixed(2)} % of a core`,
);
child.kill('SIGTERM');
await new Promise((r) => child.on('exit', r));

await admin.deleteTopics({ topics: Object.values(topics) }).catch(() => undefined);
await admin.disconnect();
await producer.disconnect();
await rm(dir, { recursive: true, force: true });
