// The control loop against the real broker: signed desired state in, signed status and events out.
import assert from 'node:assert/strict';
import { generateKeyPairSync, randomBytes, verify } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import kafkajs, { type Consumer, type Producer } from 'kafkajs';
import { Agent } from '../../src/daemon/agent.js';
import { signEnvelope } from '../../src/bus/envelope.js';
import { partitionFor } from '../../src/bus/murmur2.js';
import type { SignedReport } from '../../src/bus/reporter.js';
import type { Planner } from '../../src/engine/apply.js';
import { Redactor } from '../../src/secrets/redact.js';
import { DISTROS, Host, BlankProbe } from '../../src/host/index.js';
import { loadOrCreateIdentity } from '../../src/identity/host-identity.js';
import { publicKeyString } from '../../src/identity/seal.js';
import { createLogger } from '../../src/log.js';
import { parseAgentSettings } from '../../src/spec/validate.js';
import { ed25519PublicFromString } from '../../src/bus/envelope.js';
import { requireServices, stateFilePath, type ServiceEnv } from '../services/env.js';
import { repoRoot, waitFor } from '../helpers.js';
import { createTopicsAndWatch, runTopics } from './harness.js';

const { Kafka, logLevel } = kafkajs;
const run = randomBytes(4).toString('hex');
const topics = runTopics(run);
const PARTITIONS = 6;

describe('agent control loop (real Kafka)', () => {
  let env: ServiceEnv;
  let producer: Producer;
  let watcher: Consumer;
  const statuses: Record<string, unknown>[] = [];
  const events: Record<string, unknown>[] = [];
  const cp = generateKeyPairSync('ed25519');
  const stranger = generateKeyPairSync('ed25519');
  let dir: string;
  let kafka: InstanceType<typeof Kafka>;
  const node = 'node-a';

  /** Every apply the planner is asked for, by spec version: the test's view of "did the host change". */
  const applies: number[] = [];
  const planner: Planner = {
    phases: () => ['auxiliary'],
    plan: (spec) => {
      applies.push(spec.version);
      return Promise.resolve([
        { kind: 'write', phase: 'auxiliary', path: join(dir, 'applied-version'), mode: 0o644, content: String(spec.version), why: 'test marker' },
      ]);
    },
  };

  const spec = (version: number, extra: Record<string, unknown> = {}) => ({ apiVersion: 'bosun/v1', cluster: 'pg-main', node, version, ...extra });
  const send = (key: string, value: unknown) =>
    producer.send({ topic: topics.desired, messages: [{ key, value: typeof value === 'string' ? value : JSON.stringify(value) }] });

  function decode(raw: Buffer | null, signer?: string): Record<string, unknown> {
    const r = JSON.parse(raw!.toString()) as SignedReport;
    const payload = Buffer.from(r.payload, 'base64url');
    if (signer)
      assert.ok(
        verify(null, Buffer.concat([Buffer.from(`${r.format}\0`), payload]), ed25519PublicFromString(signer), Buffer.from(r.signature, 'base64url')),
        'report signature',
      );
    return JSON.parse(payload.toString()) as Record<string, unknown>;
  }

  async function startAgent(watchdogSeconds?: number): Promise<Agent> {
    const settings = parseAgentSettings({
      node,
      stateDir: join(dir, 'state'),
      kafka: { brokers: env.kafkaBrokers },
      topics,
      trustedKeys: [{ id: 'cp-1', publicKey: publicKeyString('ed25519', cp.publicKey) }],
    });
    assert.ok(settings.ok);
    const redactor = new Redactor();
    const { logger } = createLogger({ redactor, target: 'stderr', level: 'warn' });
    const { identity } = await loadOrCreateIdentity(join(dir, 'state'));
    const agent = new Agent({
      settings: settings.value,
      stateDir: join(dir, 'state'),
      identity,
      host: new Host({ redactor }),
      probe: new BlankProbe(),
      ctx: { distro: DISTROS.fedora },
      logger,
      redactor,
      planner,
      retrySeconds: 1,
      watchdogSeconds,
    });
    await agent.start();
    return agent;
  }

  before(async () => {
    env = await requireServices();
    dir = await mkdtemp(join(tmpdir(), 'bosun-agent-'));
    kafka = new Kafka({ clientId: 'bosun-test', brokers: env.kafkaBrokers, logLevel: logLevel.NOTHING });
    producer = kafka.producer();
    await producer.connect();
    watcher = await createTopicsAndWatch(kafka, topics, {
      desiredPartitions: PARTITIONS,
      groupId: `watch-${run}`,
      onReport: (kind, value) => (kind === 'status' ? statuses : events).push(decode(value)),
    });
  });

  after(async () => {
    await watcher?.disconnect();
    await producer?.disconnect();
    if (dir) await rm(dir, { recursive: true, force: true });
    // Every agent was stopped: none may have left a Kafka client behind (it would keep this process alive for good).
    const sockets = (): number => process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap').length;
    for (let i = 0; i < 100 && sockets() > 0; i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal(sockets(), 0, 'a stopped agent left Kafka connections open');
  });

  it('applies a signed spec, reports a signed status, and refuses everything else with a reason and no change', async () => {
    // Other nodes' states on the same topic: the agent must not need to read them all.
    for (let i = 0; i < 60; i++) await send(`node-${i}`, signEnvelope(spec(1, { node: `node-${i}` }), 'cp-1', cp.privateKey));
    await send(node, signEnvelope(spec(1), 'cp-1', cp.privateKey));
    const agent = await startAgent();
    try {
      await waitFor('status with version 1', () => statuses.some((s) => s.appliedVersion === 1), 30_000);
      assert.equal(await readFile(join(dir, 'applied-version'), 'utf8'), '1');
      const raw = await readFile(join(dir, 'state/identity/ed25519.pem'));
      assert.ok(raw.length > 0);

      const s1 = signEnvelope(spec(2), 'cp-1', cp.privateKey);
      await send(node, '{"format": "bosun-envelope-v1", broken');
      await send(node, signEnvelope(spec(2), 'who', stranger.privateKey));
      await send(node, { ...s1, signature: signEnvelope(spec(2), 'cp-1', stranger.privateKey).signature });
      await send(node, signEnvelope(spec(2, { node: 'node-zz' }), 'cp-1', cp.privateKey));
      await send(node, signEnvelope(spec(2, { disks: { raid: { level: 5 } } }), 'cp-1', cp.privateKey));
      await waitFor('five refusals', () => events.filter((e) => e.kind === 'refused').length >= 5, 30_000);
      assert.deepEqual(
        events.filter((e) => e.kind === 'refused').map((e) => e.reason),
        ['malformed', 'unknown-key', 'bad-signature', 'wrong-node', 'invalid-spec'],
      );
      const invalid = events.find((e) => e.reason === 'invalid-spec') as { problems: { path: string }[] };
      assert.ok(
        invalid.problems.some((p) => p.path === 'disks.devices'),
        JSON.stringify(invalid.problems),
      );
      assert.equal(await readFile(join(dir, 'applied-version'), 'utf8'), '1', 'nothing changed');
      assert.deepEqual(applies, [1]);

      // Duplicate delivery of a new version: one apply.
      await send(node, s1);
      await send(node, s1);
      await waitFor('status with version 2', () => statuses.some((s) => s.appliedVersion === 2), 30_000);
      await new Promise((r) => setTimeout(r, 1500));
      assert.deepEqual(applies, [1, 2]);
      assert.equal(await readFile(join(dir, 'applied-version'), 'utf8'), '2');

      // Fleet scale: it read its own partition only.
      const mine = Array.from({ length: 60 }, (_, i) => `node-${i}`).filter((n) => partitionFor(n, PARTITIONS) === agent.consumer!.partition).length;
      assert.ok(agent.consumer!.stats.messages <= mine + 10, `read ${agent.consumer!.stats.messages} messages; its partition holds about ${mine + 8}`);
      assert.ok(agent.consumer!.stats.messages < 60);

      const metrics = Object.fromEntries(agent.metrics().map((m) => [m.name, m.value]));
      assert.equal(metrics.bosun_applied_version, 2);
      assert.equal(metrics.bosun_desired_refused_total, 5);

      const last = statuses.filter((s) => s.appliedVersion === 2).at(-1)!;
      assert.equal(last.node, node);
      assert.match(String(last.sealingKey), /^x25519:/);
    } finally {
      await agent.stop();
    }
  });

  it('after a restart it converges to its last good state and ignores what it already applied', async () => {
    const before = applies.length;
    const agent = await startAgent();
    try {
      await waitFor('the consumer to catch up', () => (agent.consumer?.stats.ownMessages ?? 0) > 0, 30_000);
      await new Promise((r) => setTimeout(r, 1000));
      assert.deepEqual(applies.slice(before), [2], 'one converging apply at boot, none for messages already applied');
      assert.equal(agent.counters.refused, 0, 'refusals reported by the earlier run are not reported again');
      assert.ok(agent.counters.duplicates >= 1);
    } finally {
      await agent.stop();
    }
  });

  it('a failed apply is reported with the error and retried until it succeeds', async () => {
    const agent = await startAgent();
    const failing = join(dir, 'not-a-dir');
    await (await import('node:fs/promises')).writeFile(failing, 'x');
    const orig = planner.plan.bind(planner);
    planner.plan = (s) => {
      applies.push(s.version);
      return Promise.resolve([
        { kind: 'write', phase: 'auxiliary', path: join(failing, 'f'), mode: 0o644, content: 'x', why: 'blocked by a file where a directory should be' },
      ]);
    };
    try {
      await send(node, signEnvelope(spec(3), 'cp-1', cp.privateKey));
      await waitFor('a failure event', () => events.some((e) => e.kind === 'apply-failed' && e.version === 3), 30_000);
      const f = events.find((e) => e.kind === 'apply-failed')!;
      assert.equal(f.code, 'E_WRITE');
      assert.match(String(f.message), /cannot write .*not-a-dir\/f: (ENOTDIR|EEXIST)/);
      await waitFor(
        'a status that shows the failure and the last good version',
        () => statuses.some((s) => (s.lastApply as { result?: string } | null)?.result === 'failed' && s.appliedVersion === 2),
        30_000,
      );
      planner.plan = orig;
      await waitFor('the retry to succeed', () => statuses.some((s) => s.appliedVersion === 3), 30_000);
    } finally {
      planner.plan = orig;
      await agent.stop();
    }
  });

  it('while an apply runs, its status says which version and step, and the last good version stays the applied one', async () => {
    const agent = await startAgent();
    const orig = planner.plan.bind(planner);
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let planning = false;
    planner.plan = async (s, stage) => {
      planning = true;
      await held;
      return orig(s, stage);
    };
    try {
      await send(node, signEnvelope(spec(4), 'cp-1', cp.privateKey));
      await waitFor('the apply of version 4 to begin', () => planning, 30_000);
      const since = statuses.length;
      await agent.reportProgress();
      await waitFor(
        'a status sent while version 4 applies',
        () => statuses.length > since && statuses.slice(since).some((s) => s.applying !== null && s.applying !== undefined),
        30_000,
      );
      const during = statuses.slice(since).find((s) => s.applying)!;
      const a = during.applying as { version: number; since: string; step: string };
      assert.equal(a.version, 4);
      assert.equal(a.step, 'planning');
      assert.ok(Date.now() - Date.parse(a.since) < 60_000, a.since);
      assert.equal(during.appliedVersion, 3, 'the applied version is the last good one until the apply is done');
      assert.equal(during.wantedVersion, 4);
      assert.equal(during.health, undefined, 'a progress status carries no health round');
      release();
      await waitFor('status with version 4', () => statuses.some((s) => s.appliedVersion === 4), 30_000);
      assert.equal(statuses.filter((s) => s.appliedVersion === 4).at(-1)!.applying, null, 'nothing in progress once applied');
    } finally {
      release();
      planner.plan = orig;
      await agent.stop();
    }
  });

  it('survives a minute without the broker, and a restart (boot) in the middle of it: converges to its last good spec without the broker, then catches up and flushes its reports', async () => {
    const own = existsSync(join(dirname(stateFilePath()), 'run', 'kafka.pid'));
    assert.ok(own, 'this test stops and restarts the broker, so it needs the one test/services/up started (not an external KAFKA_BROKERS)');
    let agent = await startAgent(15);
    // Without KAFKA_BROKERS in its environment, so the harness manages its own broker rather than "using that Kafka".
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('KAFKA_')));
    const sh = (cmd: string) => execFileSync('bash', [join(repoRoot, 'test/services', cmd), 'kafka'], { stdio: 'pipe', timeout: 120_000, env });
    let brokerDown = false;
    try {
      await waitFor('the agent to be reading', () => (agent.consumer?.stats.ownMessages ?? 0) > 0, 30_000);
      const lastGood = agent.lastGood!.version;
      const before = applies.length;
      const appliedEvents = () => events.filter((e) => e.kind === 'applied' && e.version === lastGood).length;
      const appliedEventsBefore = appliedEvents();
      sh('down');
      brokerDown = true;
      const outageStarted = Date.now();
      await agent.report({ ok: true, problems: [], marker: 'during-outage' });
      await new Promise((r) => setTimeout(r, 20_000));
      assert.equal(applies.length, before, 'nothing applied while the broker was away');

      // The host reboots while the broker is still away: the agent starts without it.
      await agent.stop();
      const bootStarted = Date.now();
      agent = await startAgent(15);
      const bootSeconds = (Date.now() - bootStarted) / 1000;
      assert.deepEqual(applies.slice(before), [lastGood], 'at boot, one converging apply of the last good spec, from the state dir');
      assert.ok(agent.healthy(), 'the main loop counts as sound without a broker (restarting would not bring it back)');
      assert.match(agent.summary(), new RegExp(`version ${lastGood} applied`));
      await agent.report({ ok: true, problems: [], marker: 'after-boot-without-broker' });
      await new Promise((r) => setTimeout(r, Math.max(0, 60_000 - (Date.now() - outageStarted))));
      assert.equal(applies.length, before + 1, 'nothing else applied while the broker was away');
      sh('up');
      brokerDown = false;
      const refusedBefore = agent.counters.refused;
      await waitFor(
        'the status reported after the broker-less boot to arrive',
        () => statuses.some((s) => (s.health as { marker?: string } | undefined)?.marker === 'after-boot-without-broker'),
        90_000,
      );
      await waitFor('the event of the boot-time apply made without the broker', () => appliedEvents() > appliedEventsBefore, 30_000);
      await send(node, signEnvelope(spec(5), 'cp-1', cp.privateKey));
      await waitFor('the spec sent after the outage to be applied', () => statuses.some((s) => s.appliedVersion === 5), 120_000);
      assert.equal(agent.counters.refused, refusedBefore, 'refusals already reported are not reported again after the consumer is rebuilt');
      process.stderr.write(`[agent.test] broker down 60 s; agent restarted 20 s into it, start() returned in ${bootSeconds.toFixed(1)} s without the broker\n`);
    } finally {
      if (brokerDown) sh('up');
      await agent.stop();
    }
  });
});
