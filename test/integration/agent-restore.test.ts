// The agent (src/daemon/agent.ts, in this process) against the real broker and the
// real S3 service, with a spec whose only stage is a restore from object
// storage, and a data volume too small for the backup: a 6 MiB tmpfs (a real
// ENOSPC from the kernel) and a 12 MiB backup. What the control plane sees on
// Kafka (events, status), what is left on the volume and in the state dir,
// and what happens once the volume is grown: the agent's own retry converges.
// Runs as root (it mounts a tmpfs); unmounted in `after`.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import kafkajs, { type Consumer, type Producer } from 'kafkajs';
import { pino } from 'pino';
import { Agent } from '../../src/daemon/agent.js';
import type { BackupResult } from '../../src/backup/index.js';
import { signEnvelope } from '../../src/bus/envelope.js';
import type { Planner } from '../../src/engine/apply.js';
import { Redactor } from '../../src/secrets/redact.js';
import { Host } from '../../src/host/index.js';
import { LiveProbe } from '../../src/host/probe.js';
import { loadOrCreateIdentity, type HostIdentity } from '../../src/identity/host-identity.js';
import { publicKeyString, seal, x25519PublicFromString } from '../../src/identity/seal.js';
import { ObservationReuse, planPhase } from '../../src/phases/index.js';
import { parseAgentSettings } from '../../src/spec/validate.js';
import { requireServices, type ServiceEnv } from '../services/env.js';
import { waitFor } from '../helpers.js';
import { backupToMinio, createTopicsAndWatch, runTopics, verifiedReport, type Received } from './harness.js';
import { assertSameTree, describeTree } from './tree.js';

const { Kafka, logLevel } = kafkajs;
const MiB = 1024 * 1024;
const run = randomBytes(4).toString('hex');
const topics = runTopics(run);
const MOUNT = '/var/lib/bosun/data';
const node = 'node-r';
const RETRY_SECONDS = 2;

describe('the agent restoring onto a volume that fills up (real Kafka and MinIO)', { timeout: 120_000 }, () => {
  let env: ServiceEnv;
  let kafka: InstanceType<typeof Kafka>;
  let producer: Producer;
  let watcher: Consumer;
  let work: string;
  let root: string;
  let vol: string;
  let mounted = false;
  let identity: HostIdentity;
  let backup: BackupResult;
  let agent: Agent | undefined;
  const statuses: Received[] = [];
  const events: Received[] = [];
  const lines: string[] = [];
  const cp = generateKeyPairSync('ed25519');
  const backupKey = generateKeyPairSync('x25519');
  const backupKeyPem = backupKey.privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
  const prefix = `bosun-it/agent-restore-${run}/`;

  const sealed = (v: string): { sealed: string } => ({ sealed: seal(x25519PublicFromString(identity.sealingKey), Buffer.from(v)) });
  const send = (value: unknown) => producer.send({ topic: topics.desired, messages: [{ key: node, value: JSON.stringify(value) }] });

  function spec(version: number, withRestore: boolean): Record<string, unknown> {
    return {
      apiVersion: 'bosun/v1',
      cluster: 'it',
      node,
      version,
      disks: { devices: { paths: ['/dev/disk/by-id/virtio-x'] }, filesystem: { type: 'xfs' }, mount: { path: MOUNT } },
      ...(withRestore
        ? {
            restore: {
              from: 'object-storage',
              bucket: env.s3.bucket,
              prefix,
              credentials: { accessKeyId: sealed(env.s3.accessKeyId), secretAccessKey: sealed(env.s3.secretAccessKey) },
              backupKey: sealed(backupKeyPem),
            },
          }
        : {}),
    };
  }

  const mountVolume = (size: string): void => {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0750`, 'tmpfs', vol]);
    mounted = true;
  };

  before(async () => {
    assert.equal(process.getuid?.(), 0, 'this test mounts a small tmpfs and must run as root');
    env = await requireServices();
    work = await mkdtemp(join(tmpdir(), 'bosun-agent-restore-'));
    root = join(work, 'root');
    vol = root + MOUNT;
    await mkdir(vol, { recursive: true });
    identity = (await loadOrCreateIdentity(join(work, 'state'))).identity;

    // The backup: 4 × 3 MiB of random bytes and a small file, ~12 MiB, twice what the volume holds.
    const src = join(work, 'src');
    await mkdir(src);
    for (let i = 0; i < 4; i++) await writeFile(join(src, `f${i}`), randomBytes(3 * MiB));
    await writeFile(join(src, 'PG_VERSION'), '16\n');
    backup = await backupToMinio(env, src, prefix, backupKey.publicKey);

    kafka = new Kafka({ clientId: 'bosun-test', brokers: env.kafkaBrokers, logLevel: logLevel.NOTHING });
    producer = kafka.producer();
    await producer.connect();
    watcher = await createTopicsAndWatch(kafka, topics, {
      desiredPartitions: 3,
      groupId: `watch-${run}`,
      onReport: (kind, value) => (kind === 'status' ? statuses : events).push(verifiedReport(value, identity.signingKey)),
    });
  });

  after(async () => {
    await agent?.stop();
    await watcher?.disconnect();
    await producer?.disconnect();
    if (mounted) {
      try {
        execFileSync('umount', [vol]);
      } catch {
        execFileSync('umount', ['-l', vol]);
      }
      mounted = false;
    }
    assert.equal(execFileSync('findmnt', ['-rn', '-o', 'TARGET']).toString().split('\n').includes(vol), false, 'the tmpfs is still mounted');
    if (work) await rm(work, { recursive: true, force: true });
    // The agent and the test's clients were stopped: no Kafka or S3 connection may be left open.
    const sockets = (): number => process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap').length;
    for (let i = 0; i < 100 && sockets() > 0; i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal(sockets(), 0, 'a stopped agent left connections open');
  });

  it('reports ENOSPC on Kafka, keeps its last good spec, leaves no marker, and converges by its own retry once the volume is grown', async () => {
    mountVolume('6m');
    const stateDir = join(work, 'state');
    const redactor = new Redactor();
    // As createLogger makes it (every line through the redactor last), but into memory.
    const logger = pino(
      { level: 'info', base: { pid: process.pid }, hooks: { streamWrite: (s: string) => redactor.redact(s) } },
      { write: (l: string) => void lines.push(l) },
    );
    const settings = parseAgentSettings({
      node,
      stateDir,
      kafka: { brokers: env.kafkaBrokers },
      topics,
      trustedKeys: [{ id: 'cp-1', publicKey: publicKeyString('ed25519', cp.publicKey) }],
      objectStorage: { endpoint: env.s3.endpoint, region: env.s3.region, forcePathStyle: true },
    });
    assert.ok(settings.ok, JSON.stringify(settings));
    const probe = new LiveProbe(redactor, root);
    const ctx = { distro: { id: 'debian' } } as never;
    // The real restore phase (observe the volume through the probe, plan), and only it: the disks are the tmpfs.
    const reuse = new ObservationReuse();
    const planner: Planner = {
      phases: (s) => (s.restore ? ['restore'] : []),
      plan: (s, stage) => planPhase(s, stage, probe, ctx, reuse),
      changed: () => reuse.clear(),
    };
    agent = new Agent({
      settings: settings.value,
      stateDir,
      identity,
      host: new Host({ redactor, root }),
      probe,
      ctx,
      logger,
      redactor,
      planner,
      retrySeconds: RETRY_SECONDS,
    });
    await agent.start();

    // A first good version without a restore: the last good spec the failure must leave alone.
    await send(signEnvelope(spec(1, false), 'cp-1', cp.privateKey));
    await waitFor('version 1 applied', () => statuses.some((s) => s.body.appliedVersion === 1), 30_000);
    const appliedBefore = await readFile(join(stateDir, 'applied.json'), 'utf8');
    const specBefore = await readFile(join(stateDir, 'spec.json'), 'utf8');
    assert.equal((JSON.parse(appliedBefore) as { specVersion: number }).specVersion, 1);

    // Version 2 restores ~12 MiB onto the 6 MiB volume.
    const sent = Date.now();
    await send(signEnvelope(spec(2, true), 'cp-1', cp.privateKey));
    const failedEvents = () => events.filter((e) => e.body.kind === 'apply-failed' && e.body.version === 2);
    await waitFor('an apply-failed event for version 2', () => failedEvents().length > 0, 30_000);
    const failure = failedEvents()[0]!;
    const toFailure = (failure.at - sent) / 1000;
    const f = failure.body;
    assert.equal(f.phase, 'restore', JSON.stringify(f));
    assert.equal(f.step, 1);
    assert.equal(f.code, 'E_WRITE', JSON.stringify(f)); // a BackupError of reason 'space'
    assert.match(String(f.message), /ENOSPC/);
    assert.ok(String(f.message).includes(vol), `the event does not name the volume: ${String(f.message)}`);
    assert.equal(f.retryInSeconds, RETRY_SECONDS);

    // The status says so: the apply failed, the host stays at version 1, the restore's progress record failed with ENOSPC.
    type Status = {
      appliedVersion: number | null;
      wantedVersion: number | null;
      lastApply: { version: number; result: string; error?: { code: string; message: string } } | null;
      restore: { state: string; error?: string; target: string } | null;
    };
    const failedStatus = () => statuses.map((s) => s.body as unknown as Status).find((s) => s.lastApply?.result === 'failed' && s.lastApply.version === 2);
    await waitFor('a status reporting the failure', () => failedStatus() !== undefined, 15_000);
    const st = failedStatus()!;
    assert.equal(st.appliedVersion, 1);
    assert.equal(st.wantedVersion, 2);
    assert.match(st.lastApply!.error!.message, /ENOSPC/);
    assert.equal(st.restore?.state, 'failed');
    assert.match(st.restore.error ?? '', /ENOSPC/);
    assert.equal(st.restore.target, MOUNT);
    assert.match(agent.summary(), /version 2 failed .*keeping version 1; retrying/);

    // Nothing looks restored: no marker, nothing on the volume but the staging area and its journal; the last good spec untouched.
    assert.equal(existsSync(join(vol, '.bosun-restored.json')), false, 'marked restored after ENOSPC');
    const left = await readdir(vol);
    assert.deepEqual(
      left.filter((n) => !n.startsWith('.bosun-restore')),
      [],
      `on the volume: ${left.join(', ')}`,
    );
    assert.ok(left.includes('.bosun-restore.journal'), 'the restore journal is kept for the retry');
    assert.equal(await readFile(join(stateDir, 'applied.json'), 'utf8'), appliedBefore, 'applied.json changed');
    assert.equal(await readFile(join(stateDir, 'spec.json'), 'utf8'), specBefore, 'the last good spec changed');
    assert.equal(agent.lastGood?.version, 1);

    // The agent's retry (after RETRY_SECONDS) resumes the restore on the still-full volume: the same failure, the delay doubled.
    await waitFor('the first retry to fail too', () => failedEvents().length >= 2, 20_000);
    const again = failedEvents()[1]!.body;
    assert.match(String(again.message), /ENOSPC/);
    assert.equal(again.phase, 'restore');
    assert.equal(again.retryInSeconds, 2 * RETRY_SECONDS);
    assert.match(lines.join(''), /resuming the unfinished apply of version 2 at phase restore/);
    assert.equal(existsSync(join(vol, '.bosun-restored.json')), false, 'marked restored after the retry');
    assert.equal(await readFile(join(stateDir, 'applied.json'), 'utf8'), appliedBefore, 'applied.json changed by the retry');

    // Room made: the volume grown under the agent. Its retry (with backoff) converges; nothing is republished.
    execFileSync('mount', ['-o', 'remount,size=32m', vol]);
    const grown = Date.now();
    const failuresAtGrow = failedEvents().length;
    const appliedEvent = () => events.find((e) => e.body.kind === 'applied' && e.body.version === 2);
    await waitFor('the retry to apply version 2', () => appliedEvent() !== undefined, 45_000);
    const toConverge = (appliedEvent()!.at - grown) / 1000;
    const okStatus = () => statuses.map((s) => s.body as unknown as Status).find((s) => s.appliedVersion === 2 && s.lastApply?.result === 'applied');
    await waitFor('a status at version 2', () => okStatus() !== undefined, 15_000);
    assert.equal(okStatus()!.restore?.state, 'done');
    assert.equal(agent.summary(), 'version 2 applied; following desired state');

    const marker = JSON.parse(await readFile(join(vol, '.bosun-restored.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(marker.backupId, backup.backupId);
    assert.equal(marker.source, `s3://${env.s3.bucket}/${prefix}`);
    const [got, want] = [await describeTree(vol, ['.bosun-restored.json']), await describeTree(join(work, 'src'))];
    got.delete('.');
    want.delete('.');
    assertSameTree(got, want);
    assert.equal((JSON.parse(await readFile(join(stateDir, 'applied.json'), 'utf8')) as { specVersion: number }).specVersion, 2);

    // No secret anywhere the control plane or the journal sees.
    const all = [...events.map((e) => e.raw + JSON.stringify(e.body)), ...statuses.map((s) => s.raw + JSON.stringify(s.body)), ...lines].join('\n');
    const pemBody = backupKeyPem.split('\n').slice(1, -2).join('');
    for (const [name, secret] of [
      ['the S3 secret key', env.s3.secretAccessKey],
      ['the backup key', pemBody],
      ['the backup key', pemBody.slice(10, 40)],
    ] as const)
      assert.ok(!all.includes(secret), `${name} reached an event, a status or a log line`);
    assert.doesNotMatch(all, /PRIVATE KEY/);
    assert.match(lines.join(''), /ENOSPC/);

    const failures = failedEvents().length;
    process.stderr.write(`[agent-restore.test] the event's message: ${String(f.message)}\n`);
    process.stderr.write(
      `[agent-restore.test] backup ${(backup.stats.bytes / MiB).toFixed(1)} MiB onto a 6 MiB tmpfs: apply-failed on Kafka ${toFailure.toFixed(1)} s after the spec was sent; ` +
        `grown to 32 MiB, applied ${toConverge.toFixed(1)} s later by the agent's retry; ${failures} failed applies reported (${failuresAtGrow} before the volume was grown)\n`,
    );
  });
});
