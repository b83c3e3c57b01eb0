import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { repoRoot, withTempDir } from '../helpers.js';

const run = promisify(execFile);

/**
 * rpm/build --lint from this checkout: rpmbuild, then rpmlint with only the
 * findings justified in rpm/bosun.rpmlintrc filtered. Then the package itself:
 * its payload, scriptlets and dependencies, and the payload runs.
 */
describe('the RPM', () => {
  it('builds, passes rpmlint, and its payload runs', { timeout: 10 * 60_000 }, async () => {
    await withTempDir(async (dir) => {
      const top = join(dir, 'top');
      const started = Date.now();
      const built = await run('bash', ['rpm/build', '--lint'], { cwd: repoRoot, env: { ...process.env, BOSUN_RPM_TOPDIR: top }, maxBuffer: 64 << 20 }).catch(
        (e: { stderr?: string; message: string }) => {
          throw new Error(`rpm/build --lint failed: ${e.stderr ?? e.message}`, { cause: e });
        },
      );
      const rpmFile = built.stdout.trim().split('\n').pop()!;
      process.stdout.write(`# rpm/build --lint took ${Math.round((Date.now() - started) / 1000)} s\n`);
      assert.match(rpmFile, /\/bosun-\d+\.\d+\.\d+-1\.\w+\.rpm$/);
      const lint = await readFile(join(top, 'rpmlint.txt'), 'utf8');
      assert.match(lint, /0 errors, 0 warnings/);

      const q = async (...args: string[]) => (await run('rpm', ['-qp', ...args, rpmFile], { maxBuffer: 64 << 20 })).stdout;
      const files = (await q('-l')).split('\n');
      for (const f of [
        '/usr/bin/bosun',
        '/usr/lib/bosun/package.json',
        '/usr/lib/bosun/dist/bundle/cli.js',
        '/usr/lib/bosun/dist/bundle/chunk-worker.js',
        '/usr/lib/bosun/dist/bundle/digest-worker.js',
        '/usr/lib/bosun/node_modules/systemd-journald/build/Release/journal_send.node',
        '/usr/lib/bosun/node_modules/zstd-napi/build/Release/binding.node',
        '/usr/lib/bosun/node_modules/kafkajs/package.json',
        '/usr/lib/systemd/system/bosun.service',
        '/usr/lib/systemd/system/systemd-nspawn@.service.d/10-bosun.conf',
        '/etc/bosun/agent.json',
        '/var/lib/bosun',
      ])
        assert.ok(files.includes(f), `${f} is in the package`);
      assert.ok(!files.some((f) => f.includes('/node_modules/typescript/') || f.includes('/node_modules/eslint/')), 'no dev dependencies');
      assert.ok(!files.some((f) => f.startsWith('/usr/lib/bosun/dist/test')), 'no tests');
      assert.ok(!files.some((f) => f.startsWith('/usr/lib/bosun/dist/src')), "only the bundle, not tsc's output");
      assert.deepEqual((await q('-c')).trim().split('\n'), ['/etc/bosun/agent.json']);
      const modes = new Map(
        (await q('--qf', '[%{FILEMODES:perms} %{FILENAMES}\n]'))
          .trim()
          .split('\n')
          .map((l) => [l.split(' ')[1]!, l.split(' ')[0]!]),
      );
      assert.equal(modes.get('/var/lib/bosun'), 'drwx------');
      assert.equal(modes.get('/etc/bosun'), 'drwxr-x---');
      assert.equal(modes.get('/etc/bosun/agent.json'), '-rw-r-----');
      assert.equal(
        (await q('--qf', '[%{FILEFLAGS:fflags} %{FILENAMES}\n]'))
          .split('\n')
          .find((l) => l.endsWith(' /etc/bosun/agent.json'))
          ?.split(' ')[0],
        'cn',
      );
      const requires = await q('--requires');
      for (const r of ['nodejs >= 20', 'systemd >= 246', 'mdadm', 'cryptsetup', 'libreswan', 'systemd-container', 'xfsprogs', 'e2fsprogs', 'nftables'])
        assert.ok(requires.split('\n').includes(r), `Requires: ${r}`);
      const scripts = await q('--scripts');
      assert.match(scripts, /postinstall scriptlet[\s\S]*systemctl --no-reload preset bosun\.service/);
      assert.match(scripts, /preuninstall scriptlet[\s\S]*systemctl --no-reload disable --now bosun\.service/);

      // The payload on its own, with only its production node_modules: the CLI starts and the native addons load.
      const root = join(dir, 'root');
      await run('bash', ['-c', `mkdir -p "${root}" && cd "${root}" && rpm2cpio "${rpmFile}" | cpio -idm --quiet`]);
      const help = await run(process.execPath, [join(root, 'usr/lib/bosun/dist/bundle/cli.js'), '--help']);
      assert.match(help.stdout, /usage: bosun <command>/);
      const addons = await run(process.execPath, [
        '-e',
        `const r = require('node:module').createRequire(${JSON.stringify(join(root, 'usr/lib/bosun/package.json'))}); r('systemd-journald'); r('zstd-napi'); console.log('ok')`,
      ]);
      assert.equal(addons.stdout.trim(), 'ok');
      assert.match(
        await readFile(join(root, 'usr/bin/bosun'), 'utf8'),
        /^exec \/usr\/bin\/node --max-semi-space-size=8 --heap-growing-percent=20 \/usr\/lib\/bosun\/dist\/bundle\/cli\.js "\$@"$/m,
      );
    });
  });
});
