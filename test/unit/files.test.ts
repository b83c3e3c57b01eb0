import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmod, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { writeFileAtomic } from '../../src/host/files.js';
import { repoRoot, waitFor, withTempDir } from '../helpers.js';

describe('atomic file writes', () => {
  it('write the content with exactly the mode asked, whatever the umask', async () => {
    await withTempDir(async (dir) => {
      const old = process.umask(0o000);
      try {
        await writeFileAtomic(join(dir, 'a/b/secret'), 'k', { mode: 0o600 });
        await writeFileAtomic(join(dir, 'public'), 'p', { mode: 0o644 });
      } finally {
        process.umask(old);
      }
      assert.equal((await stat(join(dir, 'a/b/secret'))).mode & 0o7777, 0o600);
      assert.equal((await stat(join(dir, 'public'))).mode & 0o7777, 0o644);
      assert.equal(await readFile(join(dir, 'a/b/secret'), 'utf8'), 'k');
    });
  });

  it('replace an existing file and leave no temp files behind', async () => {
    await withTempDir(async (dir) => {
      const f = join(dir, 'conf');
      await writeFile(f, 'old');
      await writeFileAtomic(f, 'new', { mode: 0o644 });
      assert.equal(await readFile(f, 'utf8'), 'new');
      assert.deepEqual(await readdir(dir), ['conf']);
    });
  });

  it('in exclusive mode never replace an existing file', async () => {
    await withTempDir(async (dir) => {
      const f = join(dir, 'key');
      await writeFileAtomic(f, 'first', { mode: 0o600, exclusive: true });
      await assert.rejects(writeFileAtomic(f, 'second', { mode: 0o600, exclusive: true }), /EEXIST/);
      assert.equal(await readFile(f, 'utf8'), 'first');
      assert.deepEqual(await readdir(dir), ['key']);
    });
  });

  it('leave the old or the new content, never a mix, when the writer is killed (SIGKILL at 5 points)', async () => {
    await withTempDir(async (dir) => {
      const f = join(dir, 'data');
      // The starting file has the writer's mode too: a kill before the first rename leaves it as it was.
      await writeFile(f, Buffer.alloc(4 << 20, 'a'));
      await chmod(f, 0o640);
      for (const delayMs of [5, 37, 80, 151, 260]) {
        const child = spawn(process.execPath, [join(repoRoot, 'dist/test/unit/fixtures/write-loop.js'), f], { stdio: ['ignore', 'pipe', 'inherit'] });
        let ready = false;
        child.stdout.on('data', () => (ready = true));
        await waitFor('writer to start', () => ready);
        await new Promise((r) => setTimeout(r, delayMs));
        const exited = new Promise((r) => child.on('exit', r));
        child.kill('SIGKILL');
        await exited;
        const content = await readFile(f);
        assert.equal(content.length, 4 << 20, 'file was truncated');
        const first = content[0];
        assert.ok(first === 0x61 || first === 0x62);
        assert.equal(content.indexOf(first === 0x61 ? 0x62 : 0x61), -1, 'file mixes old and new content');
        assert.equal((await stat(f)).mode & 0o777, 0o640);
      }
    });
  });
});
