// Old backups keep restoring: a backup in format version 1, written by a bosun
// build from before version 2 (test/unit/fixtures/backup-v1/README.md), is
// restored and verified by today's code from its objects on disk.
import assert from 'node:assert/strict';
import { createHash, createPrivateKey, createPublicKey } from 'node:crypto';
import { lstat, mkdtemp, readFile, readlink, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { DirTransport } from '../../src/backup/peer/spool.js';
import { restoreFromObjectStorage } from '../../src/backup/restore/index.js';
import { verifyBackup } from '../../src/backup/verify.js';
import { openSealed } from '../../src/identity/seal.js';
import { repoRoot } from '../helpers.js';

const FIXTURE = join(repoRoot, 'test', 'unit', 'fixtures', 'backup-v1');

interface Expected {
  path: string;
  type: 'dir' | 'file' | 'symlink';
  mode: string;
  size?: number;
  sha256?: string;
  mtime?: number;
  target?: string;
}

describe('a version 1 backup written before version 2', () => {
  const work = mkdtemp(join(tmpdir(), 'bosun-compat-'));
  after(async () => rm(await work, { recursive: true, force: true }));

  async function openDataKey(): Promise<(sealed: string) => Buffer> {
    const privateKey = createPrivateKey(await readFile(join(FIXTURE, 'recipient.pem')));
    const publicKey = createPublicKey(privateKey);
    return (sealed) => openSealed(privateKey, publicKey, sealed);
  }

  it('restores byte for byte with its modes, mtimes and symlink', async () => {
    const target = join(await work, 'restored');
    const result = await restoreFromObjectStorage({
      transport: new DirTransport(join(FIXTURE, 'store')),
      backupId: 'latest',
      target,
      openDataKey: await openDataKey(),
      workers: 1,
    });
    assert.equal(result.backupId, '20261207T120000Z-0000b001');
    const expected = JSON.parse(await readFile(join(FIXTURE, 'expected.json'), 'utf8')) as Expected[];
    for (const entry of expected) {
      const path = join(target, entry.path);
      const st = await lstat(path);
      if (entry.path !== '.') assert.equal((st.mode & 0o7777).toString(8), entry.mode, `${entry.path}: mode`);
      if (entry.type === 'symlink') assert.equal(await readlink(path), entry.target);
      if (entry.type !== 'file') continue;
      const content = await readFile(path);
      assert.equal(content.length, entry.size, `${entry.path}: size`);
      assert.equal(createHash('sha256').update(content).digest('hex'), entry.sha256, `${entry.path}: content`);
      assert.equal(Math.round(st.mtimeMs / 1000), entry.mtime, `${entry.path}: mtime`);
    }
  });

  it('verifies every chunk with no problem', async () => {
    const report = await verifyBackup({
      transport: new DirTransport(join(FIXTURE, 'store')),
      backupId: '20261207T120000Z-0000b001',
      openDataKey: await openDataKey(),
    });
    assert.equal(report.chunks, 8);
    assert.equal(report.chunksChecked, 8);
    assert.deepEqual(report.problems, []);
  });
});
