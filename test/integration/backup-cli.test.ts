// `bosun backup create` and `bosun restore` as an operator runs them, against
// the real S3 service (MinIO from test/services/up): a round trip of a tree
// with every kind of file, a restore killed with SIGKILL and run again, a
// wrong key, a missing pack. Credentials come from the environment or an
// agent.json credentials file and must never be printed.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DeleteObjectCommand } from '@aws-sdk/client-s3';
import { createS3Client } from '../../src/backup/index.js';
import { DoneSet } from '../../src/backup/journal.js';
import { cliPath, runCli, type Run } from '../helpers.js';
import { requireServices, type ServiceEnv } from '../services/env.js';
import { assertSameTree, describeTree, makeTree } from './tree.js';

const MiB = 1024 * 1024;
const RUN = `${Date.now().toString(36)}-${randomUUID().slice(0, 8)}`;
let env: ServiceEnv;
let work: string;
let keyFile: string;
let publicKey: string;
let s3env: Record<string, string>;

const prefix = (name: string): string => `bosun-it/${RUN}/cli-${name}/`;

function bosun(args: string[], extraEnv: Record<string, string> = {}): Promise<Run> {
  return runCli(args, { env: { ...s3env, ...extraEnv } });
}

function noSecrets(r: Run): void {
  for (const s of [env.s3.secretAccessKey]) {
    assert.ok(!r.stdout.includes(s) && !r.stderr.includes(s), 'a credential was printed');
  }
  assert.doesNotMatch(r.stdout + r.stderr, /PRIVATE KEY/);
}

describe('bosun backup create / bosun restore against MinIO', { timeout: 300_000 }, () => {
  before(async () => {
    env = await requireServices();
    work = await mkdtemp(join(tmpdir(), 'bosun-cli-backup-'));
    s3env = {
      AWS_ENDPOINT_URL: env.s3.endpoint,
      AWS_REGION: env.s3.region,
      AWS_ACCESS_KEY_ID: env.s3.accessKeyId,
      AWS_SECRET_ACCESS_KEY: env.s3.secretAccessKey,
      BOSUN_SETTINGS: '',
      BOSUN_STATE_DIR: join(work, 'state'),
    };
    keyFile = join(work, 'backup-key.pem');
    const kg = await bosun(['backup', 'keygen', '--out', keyFile, '--json']);
    assert.equal(kg.code, 0, kg.stderr);
    publicKey = (JSON.parse(kg.stdout) as { publicKey: string }).publicKey;
    assert.match(publicKey, /^x25519:[A-Za-z0-9_-]{43}$/);
  });

  after(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('round trip: the restored tree is identical (content, modes, owners, mtimes, symlinks, hard links, sparse files)', async () => {
    const src = join(work, 'tree');
    await makeTree(src);
    const expected = await describeTree(src);
    const c = await bosun(['backup', 'create', src, '--bucket', env.s3.bucket, '--prefix', prefix('tree'), '--to', publicKey, '--json']);
    assert.equal(c.code, 0, c.stderr);
    noSecrets(c);
    const created = JSON.parse(c.stdout) as { ok: boolean; backupId: string; stats: { files: number; hardlinks: number; symlinks: number } };
    assert.equal(created.ok, true);
    assert.ok(created.stats.hardlinks >= 1 && created.stats.symlinks >= 3, JSON.stringify(created.stats));
    // Not a terminal: progress is plain lines on stderr, ending with the final one.
    assert.match(c.stderr, /^backup 100% .* done in \d+:\d\d$/m);
    assert.doesNotMatch(c.stderr, /\r/);

    const target = join(work, 'tree-restored');
    const marker = join(work, 'tree-restored.marker.json');
    const r = await bosun(['restore', target, '--bucket', env.s3.bucket, '--prefix', prefix('tree'), '--key-file', keyFile, '--marker', marker, '--verify']);
    assert.equal(r.code, 0, r.stderr);
    noSecrets(r);
    assert.match(r.stdout, new RegExp(`^restored backup ${created.backupId} into ${target}: \\d+ files`));
    assert.match(r.stderr, /^restore 100% .* done in \d+:\d\d$/m);
    assertSameTree(await describeTree(target), expected);
    assert.equal((JSON.parse(await readFile(marker, 'utf8')) as { backupId: string }).backupId, created.backupId);

    // Restoring again into the now full target is refused (exit 6), and nothing in it changes.
    const again = await bosun(['restore', target, '--bucket', env.s3.bucket, '--prefix', prefix('tree'), '--key-file', keyFile, '--json']);
    assert.equal(again.code, 6, again.stderr);
    assert.equal((JSON.parse(again.stdout) as { error: { code: string } }).error.code, 'E_REFUSED');
    assertSameTree(await describeTree(target), expected);
  });

  it('credentials from agent.json objectStorage.credentialsFile; a readable credentials file is refused', async () => {
    const src = join(work, 'small');
    await mkdir(src);
    await writeFile(join(src, 'a'), randomBytes(100_000));
    const creds = join(work, 's3.json');
    await writeFile(creds, JSON.stringify({ accessKeyId: env.s3.accessKeyId, secretAccessKey: env.s3.secretAccessKey }), { mode: 0o600 });
    const settings = join(work, 'agent.json');
    const settingsBody = {
      node: 'cli-test',
      kafka: { brokers: ['127.0.0.1:1'] },
      trustedKeys: [{ id: 'k', publicKey: `ed25519:${'A'.repeat(43)}` }],
      objectStorage: { endpoint: env.s3.endpoint, region: env.s3.region, credentialsFile: creds },
    };
    await writeFile(settings, JSON.stringify(settingsBody));
    const noEnv = { AWS_ENDPOINT_URL: '', AWS_ACCESS_KEY_ID: '', AWS_SECRET_ACCESS_KEY: '', BOSUN_SETTINGS: settings };
    const c = await bosun(['backup', 'create', src, '--bucket', env.s3.bucket, '--prefix', prefix('settings'), '--key-file', keyFile], noEnv);
    assert.equal(c.code, 0, c.stderr);
    noSecrets(c);
    const r = await bosun(['restore', join(work, 'small-restored'), '--bucket', env.s3.bucket, '--prefix', prefix('settings'), '--key-file', keyFile], noEnv);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(await readFile(join(work, 'small-restored/a')), await readFile(join(src, 'a')));

    await writeFile(creds, JSON.stringify({ accessKeyId: env.s3.accessKeyId, secretAccessKey: env.s3.secretAccessKey }), { mode: 0o644 });
    await chmod(creds, 0o644);
    const bad = await bosun(['restore', join(work, 'small-2'), '--bucket', env.s3.bucket, '--prefix', prefix('settings'), '--key-file', keyFile], noEnv);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /credentials file .* is readable by others \(mode 0644\); make it 0600/);
    noSecrets(bad);
    assert.equal(existsSync(join(work, 'small-2')), false);
  });

  it('a restore killed with SIGKILL continues when run again, fetching only what is missing', async () => {
    const src = join(work, 'kill-src');
    await mkdir(src);
    for (let i = 0; i < 6; i++) await writeFile(join(src, `f${i}`), randomBytes(4 * MiB));
    const c = await bosun(['backup', 'create', src, '--bucket', env.s3.bucket, '--prefix', prefix('kill'), '--key-file', keyFile, '--json']);
    assert.equal(c.code, 0, c.stderr);
    const chunks = (JSON.parse(c.stdout) as { stats: { chunks: number } }).stats.chunks;
    const target = join(work, 'killed');
    const journal = join(work, '.killed.bosun-restore.journal');
    const args = [
      cliPath,
      'restore',
      target,
      '--bucket',
      env.s3.bucket,
      '--prefix',
      prefix('kill'),
      '--key-file',
      keyFile,
      '--bandwidth-limit',
      '2',
      '--concurrency',
      '2',
    ];
    const child = spawn(process.execPath, args, { env: { ...process.env, ...s3env, JOURNAL_STREAM: '' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    let killedAt = 0;
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('close', (_code, signal) => resolve(signal)));
    const poll = setInterval(() => {
      void readFile(journal, 'utf8')
        .then((t) => {
          const j = JSON.parse(t) as { chunks: number; done: string };
          const done = DoneSet.decode(j.chunks, j.done).count;
          // Once a progress line with a rate is out (every 5 s; the run takes ~12 s at 2 MiB/s).
          if (done >= 2 && /ETA \d+:\d\d$/m.test(stderr) && killedAt === 0) {
            killedAt = done;
            child.kill('SIGKILL');
          }
        })
        .catch(() => undefined);
    }, 50);
    const signal = await exited;
    clearInterval(poll);
    assert.equal(signal, 'SIGKILL', `the first run was not killed: ${stderr}`);
    assert.ok(killedAt >= 2 && killedAt < chunks, `killed after ${killedAt} of ${chunks} chunks`);
    assert.equal(existsSync(target), false, 'a killed restore leaves no target that looks complete');
    // Not a terminal: the rate-limited run printed plain progress lines with rate and ETA.
    assert.match(stderr, /^restore \d+% [\d.]+ (KiB|MiB) \/ 24\.0 MiB [\d.]+ (B|KiB|MiB)\/s ETA \d+:\d\d$/m);

    const second = await bosun(['restore', target, '--bucket', env.s3.bucket, '--prefix', prefix('kill'), '--key-file', keyFile, '--json']);
    assert.equal(second.code, 0, second.stderr);
    const r = JSON.parse(second.stdout) as { resumedChunks: number; transferredBytes: number; bytes: number };
    assert.ok(r.resumedChunks >= killedAt, `resumed ${r.resumedChunks} chunks, the journal had ${killedAt}`);
    assert.ok(r.transferredBytes < r.bytes, `fetched ${r.transferredBytes} of ${r.bytes} bytes again`);
    assertSameTree(await describeTree(target), await describeTree(src));
    assert.equal(existsSync(journal), false);
  });

  it('wrong key: exit 1 with E_SECRET and nothing written; a missing pack: E_INTEGRITY, no target', async () => {
    const src = join(work, 'wk-src');
    await mkdir(src);
    await writeFile(join(src, 'x'), randomBytes(3 * MiB));
    const c = await bosun(['backup', 'create', src, '--bucket', env.s3.bucket, '--prefix', prefix('wk'), '--key-file', keyFile, '--json']);
    assert.equal(c.code, 0, c.stderr);
    const id = (JSON.parse(c.stdout) as { backupId: string }).backupId;
    const otherKey = join(work, 'other.pem');
    assert.equal((await bosun(['backup', 'keygen', '--out', otherKey])).code, 0);
    const target = join(work, 'wk-restored');
    const wrong = await bosun(['restore', target, '--bucket', env.s3.bucket, '--prefix', prefix('wk'), '--key-file', otherKey, '--json']);
    assert.equal(wrong.code, 1, wrong.stderr);
    assert.equal((JSON.parse(wrong.stdout) as { error: { code: string } }).error.code, 'E_SECRET');
    assert.equal(existsSync(target), false);
    assert.equal(existsSync(join(work, '.wk-restored.bosun-restore')), false);

    const client = createS3Client({
      endpoint: env.s3.endpoint,
      region: env.s3.region,
      credentials: { accessKeyId: env.s3.accessKeyId, secretAccessKey: env.s3.secretAccessKey },
    });
    try {
      await client.send(new DeleteObjectCommand({ Bucket: env.s3.bucket, Key: `${prefix('wk')}packs/${id}-000000.pack` }));
    } finally {
      client.destroy();
    }
    const missing = await bosun(['restore', target, '--bucket', env.s3.bucket, '--prefix', prefix('wk'), '--key-file', keyFile]);
    assert.equal(missing.code, 1, missing.stderr);
    assert.match(missing.stderr, /packs\/[^ ]*-000000\.pack is missing from the store/);
    assert.equal(existsSync(target), false);
  });
});
