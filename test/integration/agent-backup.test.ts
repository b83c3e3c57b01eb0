// The agent's scheduled backups (src/daemon/backups.ts, the agent in this
// process) against the real broker and the real S3 service: the spec's
// schedule runs `bosun backup job` as a child process (no systemd here, so no
// transient unit), each run is reported on Kafka, a failed run leaves the
// previous backup as the latest, and what was backed up restores byte for byte.
import assert from 'node:assert/strict';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import kafkajs, { type Consumer, type Producer } from 'kafkajs';
import { pino } from 'pino';
import { restoreFromObjectStorage, S3Transport } from '../../src/backup/index.js';
import { signEnvelope } from '../../src/bus/envelope.js';
import { Agent } from '../../src/daemon/agent.js';
import type { Planner } from '../../src/engine/apply.js';
import { BlankProbe, Host } from '../../src/host/index.js';
import { loadOrCreateIdentity, type HostIdentity } from '../../src/identity/host-identity.js';
import { openSealed, publicKeyString, seal, x25519PublicFromString } from '../../src/identity/seal.js';
import { Redactor } from '../../src/secrets/redact.js';
import { parseAgentSettings } from '../../src/spec/validate.js';
import { cliPath, waitFor } from '../helpers.js';
import { requireServices, type ServiceEnv } from '../services/env.js';
import { createTopicsAndWatch, minioClient, runTopics, verifiedReport, type Received } from './harness.js';
import { assertSameTree, describeTree, makeTree } from './tree.js';

const { Kafka, logLevel } = kafkajs;
const run = randomBytes(4).toString('hex');
const topics = runTopics(run);
const node = 'node-bk';

describe('scheduled backups by the agent (real Kafka and MinIO)', { timeout: 300_000 }, () => {
  let env: ServiceEnv;
  let kafka: InstanceType<typeof Kafka>;
  let producer: Producer;
  let watcher: Consumer;
  let s3: S3Client;
  let work: string;
  let data: string;
  let identity: HostIdentity;
  let agent: Agent | undefined;
  let version = 0;
  const statuses: Received[] = [];
  const events: Received[] = [];
  const lines: string[] = [];
  const cp = generateKeyPairSync('ed25519');
  const backupKey = generateKeyPairSync('x25519');
  const prefix = `bosun-it/agent-backup-${run}/`;
  const hookLog = (): string => join(work, 'hooks.log');

  const sealed = (v: string): { sealed: string } => ({ sealed: seal(x25519PublicFromString(identity.sealingKey), Buffer.from(v)) });
  const send = (value: unknown) => producer.send({ topic: topics.desired, messages: [{ key: node, value: JSON.stringify(value) }] });
  const eventsOf = (kind: string, since = 0): Received[] => events.filter((e) => e.body.kind === kind && e.at >= since);
  /** After a spec that stops the schedule: a run already going still ends (and reports) on its own; wait for that. */
  const runsEnded = (): Promise<void> =>
    waitFor(
      'every run started to end',
      () => eventsOf('backup-started').length === eventsOf('backup-succeeded').length + eventsOf('backup-failed').length,
      120_000,
    );

  /** The next version with this backup section (none: no backups). */
  async function publish(backup: Record<string, unknown> | undefined): Promise<number> {
    version += 1;
    const spec = {
      apiVersion: 'bosun/v1',
      cluster: 'it',
      node,
      version,
      disks: { devices: { paths: ['/dev/disk/by-id/virtio-x'] }, filesystem: { type: 'xfs' }, mount: { path: data } },
      ...(backup ? { backup } : {}),
    };
    await send(signEnvelope(spec, 'cp-1', cp.privateKey));
    await waitFor(`version ${version} applied`, () => statuses.some((s) => s.body.appliedVersion === version), 30_000);
    return version;
  }

  /** A backup section: every 2 s, no splay, the run's prefix, sealed credentials (or the given secret key). */
  function backupSection(consistency: Record<string, unknown>, secretAccessKey = env.s3.secretAccessKey): Record<string, unknown> {
    return {
      schedule: '*/2 * * * * *',
      splaySeconds: 0,
      target: {
        bucket: env.s3.bucket,
        prefix,
        credentials: { accessKeyId: sealed(env.s3.accessKeyId), secretAccessKey: sealed(secretAccessKey) },
        recipient: publicKeyString('x25519', backupKey.publicKey),
      },
      consistency,
    };
  }

  async function latestId(): Promise<string | undefined> {
    try {
      const got = await s3.send(new GetObjectCommand({ Bucket: env.s3.bucket, Key: `${prefix}latest.json` }));
      return (JSON.parse(await got.Body!.transformToString()) as { backupId: string }).backupId;
    } catch {
      return undefined;
    }
  }

  before(async () => {
    env = await requireServices();
    work = await mkdtemp(join(tmpdir(), 'bosun-agent-backup-'));
    data = join(work, 'data');
    await mkdir(data);
    await makeTree(data);
    const stateDir = join(work, 'state');
    identity = (await loadOrCreateIdentity(stateDir)).identity;
    s3 = minioClient(env);
    kafka = new Kafka({ clientId: 'bosun-test', brokers: env.kafkaBrokers, logLevel: logLevel.NOTHING });
    producer = kafka.producer();
    await producer.connect();
    watcher = await createTopicsAndWatch(kafka, topics, {
      desiredPartitions: 3,
      groupId: `watch-${run}`,
      onReport: (kind, value) => (kind === 'status' ? statuses : events).push(verifiedReport(value, identity.signingKey)),
    });
    const redactor = new Redactor();
    const logger = pino({ level: 'info', hooks: { streamWrite: (s: string) => redactor.redact(s) } }, { write: (l: string) => void lines.push(l) });
    const settings = parseAgentSettings({
      node,
      stateDir,
      kafka: { brokers: env.kafkaBrokers },
      topics,
      trustedKeys: [{ id: 'cp-1', publicKey: publicKeyString('ed25519', cp.publicKey) }],
      // The endpoint only: the credentials come sealed in the spec.
      objectStorage: { endpoint: env.s3.endpoint, region: env.s3.region, forcePathStyle: true },
      metrics: false,
    });
    assert.ok(settings.ok, JSON.stringify(settings));
    // The host's phases are not this test's business: the spec's disks are a plain directory.
    const planner: Planner = { phases: () => [], plan: () => Promise.resolve([]) };
    agent = new Agent({
      settings: settings.value,
      stateDir,
      identity,
      host: new Host({ redactor }),
      probe: new BlankProbe(),
      ctx: { distro: { id: 'debian' } } as never,
      logger,
      redactor,
      planner,
      bosunCommand: [process.execPath, cliPath],
    });
    await agent.start();
  });

  after(async () => {
    await agent?.stop();
    await watcher?.disconnect();
    await producer?.disconnect();
    s3?.destroy();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('runs on its schedule: backup-started, then backup-succeeded with its figures; latest names it, the status carries its age, and it restores byte for byte', async () => {
    const since = Date.now();
    await publish(backupSection({ method: 'crash-consistent' }));
    await waitFor('a backup-succeeded event', () => eventsOf('backup-succeeded', since).length > 0, 120_000);
    await publish(undefined); // no more runs
    await runsEnded();
    const started = eventsOf('backup-started', since)[0]!.body;
    assert.equal(started.consistency, 'crash-consistent');
    assert.equal(started.reason, 'schedule');
    const done = eventsOf('backup-succeeded', since)[0]!.body;
    assert.match(done.backupId, /^\d{8}T\d{6}Z-[0-9a-f]{8}$/);
    assert.equal(done.target, `s3://${env.s3.bucket}/${prefix}`);
    assert.equal(done.consistency, 'crash-consistent');
    assert.ok(done.bytesRead > 0 && done.bytesUploaded > 0 && done.files > 0, JSON.stringify(done));
    const latest = await latestId();
    assert.ok(
      eventsOf('backup-succeeded', since).some((e) => e.body.backupId === latest),
      `latest.json names ${latest}, not a backup the agent reported`,
    );

    const record = JSON.parse(await readFile(join(work, 'state', 'backup-runs.json'), 'utf8')) as { format: string; lastSuccess: { backupId: string } };
    assert.equal(record.format, 'bosun-backup-runs-v1');
    const restored = join(work, 'restored');
    await restoreFromObjectStorage({
      transport: new S3Transport({ client: s3, bucket: env.s3.bucket, prefix }),
      backupId: done.backupId as string,
      target: restored,
      openDataKey: (sealedKey) => openSealed(backupKey.privateKey, backupKey.publicKey, sealedKey),
    });
    assertSameTree(await describeTree(restored), await describeTree(data));
    await rm(restored, { recursive: true, force: true });

    // The status of a spec with backups says when the last good one was (a schedule that is not due soon).
    const applied = await publish({ ...backupSection({ method: 'crash-consistent' }), schedule: '0 0 1 1 *' });
    const status = statuses.find((s) => s.body.appliedVersion === applied)!.body.backup as Record<string, any>;
    assert.equal(status.lastSuccess.backupId, record.lastSuccess.backupId);
    assert.ok(status.ageSeconds >= 0 && status.ageSeconds < 120, JSON.stringify(status));
    assert.equal(status.schedule, '0 0 1 1 *');
    await publish(undefined);
  });

  it('quiesces and always releases; a failed upload is backup-failed naming its stage, the previous latest stays, and the next run succeeds', async (t) => {
    const before = await latestId();
    assert.ok(before, 'the first test left a latest backup');
    const hooks = {
      method: 'hooks',
      quiesce: ['sh', '-c', `echo quiesce >> ${hookLog()}`],
      release: ['sh', '-c', `echo release >> ${hookLog()}`],
      timeoutSeconds: 30,
    };
    const since = Date.now();
    const wrongSecret = `wrong-${randomBytes(8).toString('hex')}`;
    await publish(backupSection(hooks, wrongSecret));
    await waitFor('a backup-failed event', () => eventsOf('backup-failed', since).length > 0, 120_000);
    const quiet = await publish({ ...backupSection(hooks, wrongSecret), schedule: '0 0 1 1 *' });
    await runsEnded();
    const failed = eventsOf('backup-failed', since)[0]!.body;
    assert.equal(failed.stage, 'upload', JSON.stringify(failed));
    t.diagnostic(`backup-failed: ${String(failed.message)}`);
    assert.match(String(failed.message), /^upload: .*(signature|SignatureDoesNotMatch|403)/i);
    assert.equal(await latestId(), before, 'a failed run must leave the previous backup as the latest');
    const log = (await readFile(hookLog(), 'utf8')).trim().split('\n');
    assert.deepEqual(log.slice(0, 2), ['quiesce', 'release'], 'release runs after a failed upload');
    assert.equal(log.filter((l) => l === 'quiesce').length, log.filter((l) => l === 'release').length, log.join(','));
    const status = statuses.find((s) => s.body.appliedVersion === quiet)?.body.backup as Record<string, any> | undefined;
    assert.equal(status?.lastFailure?.stage, 'upload', JSON.stringify(status));
    assert.ok(status?.lastSuccess?.backupId, 'the last good backup is still in the status');

    const again = Date.now();
    await publish(backupSection(hooks));
    await waitFor('a backup-succeeded event after the failure', () => eventsOf('backup-succeeded', again).length > 0, 120_000);
    await publish(undefined);
    await runsEnded();
    assert.notEqual(await latestId(), before);

    const everything = [...events, ...statuses].map((e) => e.raw).join('\n') + lines.join('\n');
    assert.ok(!everything.includes(wrongSecret), 'the secret key reached an event, a status or a log line');
    assert.ok(!everything.includes(env.s3.secretAccessKey), 'the secret key reached an event, a status or a log line');
  });

  it('never runs two at once: a run asked for while one is going is skipped and reported', async () => {
    await runsEnded();
    const since = Date.now();
    const slow = { method: 'hooks', quiesce: ['sleep', '3'], release: ['true'], timeoutSeconds: 30 };
    await publish({ ...backupSection(slow), schedule: '0 0 1 1 *' });
    await Promise.all([agent!.backupNow(), new Promise((r) => setTimeout(r, 500)).then(() => agent!.backupNow())]);
    await waitFor(
      'backup-skipped and backup-succeeded',
      () => eventsOf('backup-skipped', since).length === 1 && eventsOf('backup-succeeded', since).length === 1,
      60_000,
    );
    assert.equal(eventsOf('backup-started', since).length, 1);
    assert.match(String(eventsOf('backup-skipped', since)[0]!.body.reason), /still going/);
    await writeFile(join(work, 'done'), '');
  });
});
