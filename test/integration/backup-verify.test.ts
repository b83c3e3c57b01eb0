// `bosun backup verify` against MinIO: a sound backup verifies chunk by chunk;
// a flipped byte in a pack and a deleted pack are each found and named (object,
// byte range, files), and a sample checks only part of the chunks.
import assert from 'node:assert/strict';
import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DeleteObjectCommand, GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { createBackup, S3Transport, type BackupResult } from '../../src/backup/index.js';
import { sharedPackKey } from '../../src/backup/format.js';
import { runCli, type Run } from '../helpers.js';
import { requireServices, type ServiceEnv } from '../services/env.js';
import { cliS3Env, minioClient } from './harness.js';

const MiB = 1024 * 1024;
const RUN = `${Date.now().toString(36)}-${randomUUID().slice(0, 8)}`;

interface Report {
  ok: boolean;
  backupId: string;
  chunks: number;
  chunksChecked: number;
  packs: number;
  problems: { object: string; range?: [number, number]; failure: string; files: string[] }[];
}

describe('bosun backup verify against MinIO', { timeout: 300_000 }, () => {
  let env: ServiceEnv;
  let s3: S3Client;
  let work: string;
  const keyPair = generateKeyPairSync('x25519');
  const keyFile = (): string => join(work, 'backup-key.pem');

  /** A backup of six 1.5 MiB random files in 1 MiB chunks and 2 MiB packs (several packs), under its own prefix. */
  async function backUp(name: string): Promise<{ prefix: string; result: BackupResult }> {
    const source = join(work, `src-${name}`);
    await mkdir(source);
    for (let i = 0; i < 6; i++) await writeFile(join(source, `file-${i}.bin`), randomBytes(1.5 * MiB));
    const prefix = `bosun-it/${RUN}/verify-${name}/`;
    const result = await createBackup({
      source,
      transport: new S3Transport({ client: s3, bucket: env.s3.bucket, prefix }),
      recipient: keyPair.publicKey,
      chunkSize: MiB,
      packSize: 2 * MiB,
    });
    return { prefix, result };
  }

  async function verify(prefix: string, ...extra: string[]): Promise<{ run: Run; report: Report }> {
    const run = await runCli(['backup', 'verify', '--bucket', env.s3.bucket, '--prefix', prefix, '--key-file', keyFile(), '--json', ...extra], {
      env: { ...cliS3Env(env), BOSUN_STATE_DIR: join(work, 'state') },
    });
    assert.ok(!run.stdout.includes(env.s3.secretAccessKey) && !run.stderr.includes(env.s3.secretAccessKey), 'a credential was printed');
    return { run, report: JSON.parse(run.stdout) as Report };
  }

  before(async () => {
    env = await requireServices();
    work = await mkdtemp(join(tmpdir(), 'bosun-verify-'));
    await writeFile(keyFile(), keyPair.privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
    s3 = minioClient(env);
  });

  after(async () => {
    s3?.destroy();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('checks every chunk of a sound backup and exits 0', async () => {
    const { prefix, result } = await backUp('sound');
    const { run, report } = await verify(prefix);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(report.ok, true);
    assert.equal(report.backupId, result.backupId);
    assert.equal(report.chunks, result.stats.chunks);
    assert.equal(report.chunksChecked, result.stats.chunks);
    assert.ok(report.packs >= 3, `only ${report.packs} packs`);
    assert.deepEqual(report.problems, []);
  });

  it('names a flipped byte (object, byte range, files) and a deleted pack, and exits 1', async () => {
    const { prefix, result } = await backUp('damaged');
    const packKey = (n: number): string => `${prefix}${sharedPackKey(result.backupId, n)}`;
    const got = await s3.send(new GetObjectCommand({ Bucket: env.s3.bucket, Key: packKey(1) }));
    const pack = Buffer.from(await got.Body!.transformToByteArray());
    pack[100] = pack[100]! ^ 0x01;
    await s3.send(new PutObjectCommand({ Bucket: env.s3.bucket, Key: packKey(1), Body: pack }));
    await s3.send(new DeleteObjectCommand({ Bucket: env.s3.bucket, Key: packKey(2) }));

    const { run, report } = await verify(prefix);
    assert.equal(run.code, 1, run.stderr);
    assert.equal(report.ok, false);
    const flipped = report.problems.find((p) => p.object.endsWith(packKey(1)));
    assert.ok(flipped, JSON.stringify(report.problems));
    assert.equal(flipped.failure, 'auth');
    assert.ok(flipped.range && flipped.range[0] <= 100 && flipped.range[1] >= 100, JSON.stringify(flipped));
    assert.match(flipped.files.join(','), /^file-\d\.bin/);
    const missing = report.problems.find((p) => p.object.endsWith(packKey(2)));
    assert.equal(missing?.failure, 'missing', JSON.stringify(report.problems));
    assert.ok(missing.files.length > 0);
    assert.equal(report.problems.length, 2, JSON.stringify(report.problems));
    assert.ok(
      report.chunksChecked > 0 && report.chunksChecked < report.chunks - 1,
      `the verify went on past the damage: ${report.chunksChecked} of ${report.chunks}`,
    );
  });

  it('checks a random share of the chunks with --sample', async () => {
    const { prefix, result } = await backUp('sampled');
    const { run, report } = await verify(prefix, '--sample', '20');
    assert.equal(run.code, 0, run.stderr);
    assert.ok(report.chunksChecked >= 1 && report.chunksChecked < result.stats.chunks, `${report.chunksChecked} of ${result.stats.chunks}`);
    const refused = await runCli(['backup', 'verify', '--bucket', env.s3.bucket, '--key-file', keyFile(), '--sample', '0']);
    assert.equal(refused.code, 2);
    assert.match(refused.stderr, /--sample expects a percentage/);
  });
});
