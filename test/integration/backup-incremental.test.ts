// Incremental backups (format version 2) against MinIO, made as the agent makes
// them (`bosun backup job`: the host's set key, the set's latest as the base):
// a second backup after a small change uploads only what changed and both
// restore byte for byte; a job killed with SIGKILL is resumed by the next one,
// which uploads only the rest; a prune of the older backup keeps every pack
// the newer one shares with it and removes only what no kept backup uses; and
// uploads keep to a bandwidth limit.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { S3Client } from '@aws-sdk/client-s3';
import { createBackup, restoreFromObjectStorage, S3Transport } from '../../src/backup/index.js';
import { BACKUP_JOB_FORMAT, runBackupJob, type BackupJob, type BackupJobResult } from '../../src/backup/job.js';
import { pruneBackups } from '../../src/backup/prune.js';
import { resumeLogPath } from '../../src/backup/set-key.js';
import { loadOrCreateIdentity } from '../../src/identity/host-identity.js';
import { openSealed, publicKeyString } from '../../src/identity/seal.js';
import { Redactor } from '../../src/secrets/redact.js';
import { cliPath } from '../helpers.js';
import { requireServices, type ServiceEnv } from '../services/env.js';
import { minioClient } from './harness.js';
import { assertSameTree, describeTree, text } from './tree.js';

const MiB = 1024 * 1024;
const RUN = `${Date.now().toString(36)}-${randomUUID().slice(0, 8)}`;

describe('incremental backups against MinIO', { timeout: 300_000 }, () => {
  let env: ServiceEnv;
  let s3: S3Client;
  let work: string;
  const keyPair = generateKeyPairSync('x25519');
  const recipient = publicKeyString('x25519', keyPair.publicKey);
  const openDataKey = (sealed: string): Buffer => openSealed(keyPair.privateKey, keyPair.publicKey, sealed);

  const prefixOf = (name: string): string => `bosun-it/${RUN}/incr-${name}/`;
  const jobFor = (source: string, name: string): BackupJob => ({
    format: BACKUP_JOB_FORMAT,
    source,
    bucket: env.s3.bucket,
    prefix: prefixOf(name),
    recipient,
    host: 'node-incr',
    consistency: 'crash-consistent',
    store: {
      endpoint: env.s3.endpoint,
      region: env.s3.region,
      forcePathStyle: true,
      credentials: { accessKeyId: env.s3.accessKeyId, secretAccessKey: env.s3.secretAccessKey },
    },
  });
  const setOf = (name: string): S3Transport => new S3Transport({ client: s3, bucket: env.s3.bucket, prefix: prefixOf(name) });

  async function job(stateDir: string, j: BackupJob): Promise<BackupJobResult> {
    const { identity } = await loadOrCreateIdentity(stateDir);
    return runBackupJob(j, { signer: identity, stateDir, redactor: new Redactor() });
  }

  async function restored(name: string, backupId: string): Promise<string> {
    const target = join(work, `restored-${randomBytes(4).toString('hex')}`);
    await restoreFromObjectStorage({ transport: setOf(name), backupId, target, openDataKey });
    return target;
  }

  /**
   * A database-like tree: a large file of 8 KiB pages (6 KiB of text, 2 KiB of random bytes each: a file of
   * text alone repeats every ~10 KiB and can hold no content-defined cut at all), a large random one, small ones.
   */
  async function sourceTree(): Promise<string> {
    const source = join(work, `src-${randomBytes(4).toString('hex')}`);
    await mkdir(join(source, 'base'), { recursive: true });
    const pages = Array.from({ length: (12 * MiB) / 8192 }, (_, page) => Buffer.concat([text(6144, page), randomBytes(2048)]));
    await writeFile(join(source, 'base', 'pages'), Buffer.concat(pages));
    await writeFile(join(source, 'base', 'blob'), randomBytes(8 * MiB));
    for (let i = 0; i < 5; i++) await writeFile(join(source, `small-${i}`), text(20_000 + i * 1000, i));
    return source;
  }

  /** Random 8 KiB writes in place (pages rewritten) and 64 KiB inserted in the middle of the random file. */
  async function changeALittle(source: string): Promise<number> {
    const pages = await open(join(source, 'base', 'pages'), 'r+');
    for (let i = 0; i < 8; i++) await pages.write(randomBytes(8192), 0, 8192, (i * 1_400_000 + 12_345) % (12 * MiB - 8192));
    await pages.close();
    const blob = await readFile(join(source, 'base', 'blob'));
    await writeFile(join(source, 'base', 'blob'), Buffer.concat([blob.subarray(0, 3 * MiB + 17), randomBytes(64 * 1024), blob.subarray(3 * MiB + 17)]));
    return 8 * 8192 + 64 * 1024;
  }

  before(async () => {
    env = await requireServices();
    s3 = minioClient(env);
    work = await mkdtemp(join(tmpdir(), 'bosun-incr-'));
  });

  after(async () => {
    s3?.destroy();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('uploads only what changed the second time, and both backups restore byte for byte', async () => {
    const stateDir = join(work, 'state-a');
    const source = await sourceTree();
    const first = await job(stateDir, jobFor(source, 'a'));
    assert.equal(first.stats.reusedChunks, 0);
    const before = await describeTree(source);
    const changed = await changeALittle(source);
    const second = await job(stateDir, jobFor(source, 'a'));
    const uploaded = second.stats.uploadedBytes!;
    assert.ok(second.stats.reusedChunks! > 0.8 * second.stats.chunks, `reused ${second.stats.reusedChunks} of ${second.stats.chunks} chunks`);
    // Each change costs about itself plus a chunk around it (64 KiB on average): well under a tenth of the first.
    assert.ok(
      uploaded < 0.1 * first.stats.uploadedBytes!,
      `uploaded ${uploaded} bytes after changing ${changed}; the first backup uploaded ${first.stats.uploadedBytes}`,
    );
    assertSameTree(await describeTree(await restored('a', second.backupId)), await describeTree(source));
    assertSameTree(await describeTree(await restored('a', first.backupId)), before);
  });

  it('a job killed with SIGKILL leaves latest alone, and the next one reuses what it uploaded and sends only the rest', async () => {
    const stateDir = join(work, 'state-k');
    const source = join(work, 'src-kill');
    await mkdir(source);
    for (let i = 0; i < 5; i++) await writeFile(join(source, `f${i}`), randomBytes(16 * MiB));
    await loadOrCreateIdentity(stateDir);
    const resumeLog = resumeLogPath(stateDir, jobFor(source, 'k'));
    const child = spawn(process.execPath, [cliPath, 'backup', 'job'], {
      env: { ...process.env, BOSUN_STATE_DIR: stateDir, JOURNAL_STREAM: '' },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    // At 16 MiB/s the job stores a 32 MiB pack every 2 s: it is killed a few seconds in, with the light CPU of a slow upload.
    child.stdin.end(JSON.stringify({ ...jobFor(source, 'k'), bandwidthLimitMiBps: 16 }));
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('close', (_code, signal) => resolve(signal)));
    let packsAtKill = 0;
    const poll = setInterval(() => {
      void readFile(resumeLog, 'utf8')
        .then((log) => {
          const packs = log.split('\n').filter((line) => line.startsWith('{"key"')).length;
          if (packs >= 2 && packsAtKill === 0) {
            packsAtKill = packs;
            child.kill('SIGKILL');
          }
        })
        .catch(() => undefined);
    }, 20);
    const signal = await exited;
    clearInterval(poll);
    assert.equal(signal, 'SIGKILL', `the job was not killed mid-way: ${stderr}`);
    await assert.rejects(setOf('k').get('latest.json'), 'a killed first backup is not visible');

    const resumed = await job(stateDir, jobFor(source, 'k'));
    const total = 5 * 16 * MiB;
    assert.ok(
      resumed.stats.reusedBytes! >= packsAtKill * 20 * MiB,
      `reused ${resumed.stats.reusedBytes} bytes; ${packsAtKill} packs were stored before the kill`,
    );
    assert.ok(resumed.stats.uploadedBytes! < total - resumed.stats.reusedBytes! + 8 * MiB, `uploaded ${resumed.stats.uploadedBytes} of ${total}`);
    assertSameTree(await describeTree(await restored('k', 'latest')), await describeTree(source));
    await assert.rejects(readFile(resumeLog), 'the resume log is gone once a backup completes');
  });

  it('a prune of the older backup keeps the packs the newer one shares, removes the rest, and the newer one restores', async () => {
    const stateDir = join(work, 'state-p');
    const source = await sourceTree();
    // 40 MiB that only the first backup has: at least one 32 MiB pack holds nothing else.
    await writeFile(join(source, 'zz-gone'), randomBytes(40 * MiB));
    const first = await job(stateDir, jobFor(source, 'p'));
    await rm(join(source, 'zz-gone'));
    await changeALittle(source);
    const second = await job(stateDir, jobFor(source, 'p'));
    const set = setOf('p');
    const packsBefore = await set.list('packs/');
    const report = await pruneBackups({ transport: set, policy: { last: 1, daily: 0, weekly: 0 }, host: 'test', apply: true });
    assert.deepEqual(
      report.dropped.map((b) => b.backupId),
      [first.backupId],
    );
    const packsAfter = new Set((await set.list('packs/')).map((o) => o.key));
    assert.ok(packsAfter.size < packsBefore.length, 'a pack only the dropped backup used is removed');
    assert.equal(report.packsRemoved, packsBefore.length - packsAfter.size);
    assertSameTree(await describeTree(await restored('p', second.backupId)), await describeTree(source));
  });

  it('keeps its uploads to the bandwidth limit, averaged over its packs', async () => {
    const source = join(work, 'src-limit');
    await mkdir(source);
    await writeFile(join(source, 'data'), randomBytes(8 * MiB));
    const started = performance.now();
    const made = await createBackup({ source, transport: setOf('limit'), recipient, packSize: MiB, bandwidthLimit: 4 * MiB });
    const seconds = (performance.now() - started) / 1000;
    // 8 MiB at 4 MiB/s: the first pack goes at once, the other seven wait their turn (at least 1.5 s in all).
    assert.ok(made.stats.uploadedBytes! >= 8 * MiB);
    assert.ok(seconds >= 1.5, `8 MiB uploaded in ${seconds.toFixed(2)} s under a limit of 4 MiB/s`);
  });
});
