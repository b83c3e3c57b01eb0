// Where a restore writes and how it commits (src/backup/target.ts), on a real
// temporary directory: which targets are accepted, and that a commit can be
// repeated after a crash part-way.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, readdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { BackupError } from '../../src/backup/errors.js';
import { writeJournal } from '../../src/backup/journal.js';
import { chooseLayout, commitLayout } from '../../src/backup/target.js';
import { withTempDir } from '../helpers.js';

const journal = { backupId: '20250102T030405Z-1a2b3c4d', manifestDigest: 'x', chunks: 0, done: '', state: 'committing' as const };

describe('restore target layout', () => {
  it('stages beside a missing target and renames it into place', () =>
    withTempDir(async (dir) => {
      const target = join(dir, 'data');
      const l = await chooseLayout(target);
      assert.equal(l.mode, 'rename');
      assert.equal(l.staging, join(dir, '.data.bosun-restore'));
      assert.equal(l.journal, join(dir, '.data.bosun-restore.journal'));
      await mkdir(l.staging);
      await writeFile(join(l.staging, 'f'), 'x');
      await commitLayout(l);
      assert.deepEqual(await readdir(target), ['f']);
      await commitLayout(l); // again, as after a crash before the journal was removed
      assert.deepEqual(await readdir(target), ['f']);
    }));

  it('stages inside an empty directory (a mount point, lost+found allowed) and moves entries up', () =>
    withTempDir(async (dir) => {
      await mkdir(join(dir, 'lost+found'));
      const l = await chooseLayout(dir);
      assert.equal(l.mode, 'into');
      await mkdir(join(l.staging, 'sub'), { recursive: true });
      await writeFile(join(l.staging, 'a'), 'a');
      await writeJournal(l.journal, journal);
      // A crash after moving one entry: the target now holds data, and the journal says whose.
      await rename(join(l.staging, 'a'), join(dir, 'a'));
      const again = await chooseLayout(dir);
      assert.equal(again.mode, 'into');
      await commitLayout(again);
      assert.deepEqual((await readdir(dir)).sort(), ['.bosun-restore.journal', 'a', 'lost+found', 'sub']);
      assert.equal(existsSync(l.staging), false);
    }));

  it('refuses a target that holds anything else, or is not a directory', () =>
    withTempDir(async (dir) => {
      await writeFile(join(dir, 'PG_VERSION'), '16');
      await assert.rejects(
        chooseLayout(dir),
        (e: unknown) => e instanceof BackupError && e.reason === 'target' && /not empty \(it holds PG_VERSION\)/.test(e.message),
      );
      await assert.rejects(chooseLayout(join(dir, 'PG_VERSION')), /not a directory/);
    }));
});
