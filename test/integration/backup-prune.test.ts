// Prune against MinIO: the retention decides, the latest and every leased
// backup stay, a dropped backup loses its manifest first, a dry run deletes
// nothing; and the race with a restore, both ways round: a restore running
// when the prune starts keeps its backup, and a restore that starts while a
// prune holds the set waits for it.
import assert from 'node:assert/strict';
import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { S3Client } from '@aws-sdk/client-s3';
import { createBackup, restoreFromObjectStorage, S3Transport } from '../../src/backup/index.js';
import { readLeases, takeLease } from '../../src/backup/leases.js';
import { listBackups, pruneBackups } from '../../src/backup/prune.js';
import { openSealed } from '../../src/identity/seal.js';
import { runCli } from '../helpers.js';
import { requireServices, type ServiceEnv } from '../services/env.js';
import { cliS3Env, minioClient } from './harness.js';
import { waitFor } from '../helpers.js';

const MiB = 1024 * 1024;
const RUN = `${Date.now().toString(36)}-${randomUUID().slice(0, 8)}`;
const KEEP_ONE = { last: 1, daily: 0, weekly: 0 };

describe('backup prune and leases against MinIO', { timeout: 300_000 }, () => {
  let env: ServiceEnv;
  let s3: S3Client;
  let work: string;
  const keyPair = generateKeyPairSync('x25519');
  const openDataKey = (sealed: string): Buffer => openSealed(keyPair.privateKey, keyPair.publicKey, sealed);
  const setOf = (name: string): S3Transport => new S3Transport({ client: s3, bucket: env.s3.bucket, prefix: `bosun-it/${RUN}/prune-${name}/` });

  /** Backups of a small random tree into `set`, one per given id (ids name their creation time), in that order. */
  async function backUp(set: S3Transport, ids: string[], megabytes = 1): Promise<void> {
    const source = join(work, `src-${randomBytes(4).toString('hex')}`);
    await mkdir(source);
    await writeFile(join(source, 'data.bin'), randomBytes(megabytes * MiB));
    for (const backupId of ids) await createBackup({ source, transport: set, recipient: keyPair.publicKey, backupId, chunkSize: MiB });
  }

  before(async () => {
    env = await requireServices();
    work = await mkdtemp(join(tmpdir(), 'bosun-prune-'));
    s3 = minioClient(env);
  });

  after(async () => {
    s3?.destroy();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('keeps what the retention and the latest pointer keep, deletes the rest only with apply, and the kept ones still restore', async () => {
    const set = setOf('retention');
    const [a, b, c, d] = ['20261101T030000Z-0000000a', '20261102T030000Z-0000000b', '20261103T030000Z-0000000c', '20261103T150000Z-0000000d'];
    await backUp(set, [a, b, c, d]);
    // last 1: d. daily 2: d (11-03; c is the same day), b (11-02). a and c go.
    const policy = { last: 1, daily: 2, weekly: 0 };
    const dry = await pruneBackups({ transport: set, policy, host: 'test' });
    assert.equal(dry.applied, false);
    assert.deepEqual(
      dry.kept.map((k) => `${k.backupId}:${k.reasons.join('+')}`),
      [`${d}:last+daily+latest`, `${b}:daily`],
    );
    assert.deepEqual(
      dry.dropped.map((k) => k.backupId),
      [c, a],
    );
    assert.equal((await listBackups(set)).backups.length, 4, 'a dry run deletes nothing');

    const cli = await runCli(
      [
        'backup',
        'prune',
        '--bucket',
        env.s3.bucket,
        '--prefix',
        `bosun-it/${RUN}/prune-retention/`,
        '--keep-last',
        '1',
        '--keep-daily',
        '2',
        '--keep-weekly',
        '0',
      ],
      { env: cliS3Env(env) },
    );
    assert.equal(cli.code, 0, cli.stderr);
    assert.match(cli.stdout, new RegExp(`would delete  ${c}`));
    assert.match(cli.stdout, /nothing was deleted \(--apply deletes\)/);

    const done = await pruneBackups({ transport: set, policy, host: 'test', apply: true });
    assert.ok(done.bytesFreed > 0);
    const left = await listBackups(set);
    assert.deepEqual(
      left.backups.map((k) => k.backupId),
      [d, b],
    );
    assert.equal(left.latest, d);
    assert.deepEqual(await set.list(`backups/${a}/`), [], `nothing of ${a} is left`);
    assert.deepEqual((await readLeases(set)).live, [], 'the prune released its lease');
    const target = join(work, 'restored-b');
    const restored = await restoreFromObjectStorage({ transport: set, backupId: b, target, openDataKey });
    assert.equal(restored.backupId, b);
  });

  it('keeps a backup that a lease names, and drops it once the lease is released', async () => {
    const set = setOf('leased');
    const [old, newest] = ['20261101T030000Z-00000001', '20261102T030000Z-00000002'];
    await backUp(set, [old, newest]);
    const lease = await takeLease(set, { kind: 'restore', host: 'node-x', backupIds: [old] });
    const held = await pruneBackups({ transport: set, policy: KEEP_ONE, host: 'test', apply: true });
    assert.deepEqual(
      held.kept.map((k) => `${k.backupId}:${k.reasons.join('+')}`),
      [`${newest}:last+latest`, `${old}:lease`],
    );
    assert.deepEqual(held.dropped, []);
    await lease.release();
    const freed = await pruneBackups({ transport: set, policy: KEEP_ONE, host: 'test', apply: true });
    assert.deepEqual(
      freed.dropped.map((k) => k.backupId),
      [old],
    );
  });

  it('a restore running when a prune starts keeps its backup, and restores it whole', async () => {
    const set = setOf('race-restore-first');
    const [old, newest] = ['20261101T030000Z-00000003', '20261102T030000Z-00000004'];
    await backUp(set, [old, newest], 6);
    const target = join(work, 'restored-race');
    // 6 MiB at 1 MiB/s: the restore is still reading when the prune runs.
    const restoring = restoreFromObjectStorage({ transport: set, backupId: old, target, openDataKey, lease: { host: 'node-r' }, bandwidthLimit: MiB });
    await waitFor('the restore lease', async () => (await readLeases(set)).live.some((l) => l.kind === 'restore'), 20_000);
    const report = await pruneBackups({ transport: set, policy: KEEP_ONE, host: 'test', apply: true });
    assert.deepEqual(report.kept.find((k) => k.backupId === old)?.reasons, ['lease']);
    const restored = await restoring;
    assert.equal(restored.bytes, 6 * MiB);
    assert.deepEqual((await readLeases(set)).live, [], 'the restore released its lease');
  });

  it('a restore that starts while a prune holds the set waits for the prune to end', async () => {
    const set = setOf('race-prune-first');
    const [only] = ['20261101T030000Z-00000005'];
    await backUp(set, [only]);
    const pruning = await takeLease(set, { kind: 'prune', host: 'node-p', backupIds: [] });
    const target = join(work, 'restored-wait');
    let finished = false;
    const restoring = restoreFromObjectStorage({ transport: set, backupId: only, target, openDataKey, lease: { host: 'node-r' } }).then((r) => {
      finished = true;
      return r;
    });
    await new Promise((wake) => setTimeout(wake, 3_000));
    assert.equal(finished, false, 'the restore went on while a prune held the set');
    assert.deepEqual(
      (await readLeases(set)).live.map((l) => l.kind),
      ['prune'],
      'the waiting restore withdrew its own lease',
    );
    await pruning.release();
    const restored = await restoring;
    assert.equal(restored.backupId, only);
  });
});
