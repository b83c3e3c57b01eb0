import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ProgressPrinter, type Progress } from '../../src/backup/progress.js';
import { runCli, withTempDir } from '../helpers.js';

const noSettings = {
  BOSUN_SETTINGS: '',
  AWS_ENDPOINT_URL: 'http://127.0.0.1:9',
  AWS_ACCESS_KEY_ID: 'AKIAUNITTESTUNITTEST',
  AWS_SECRET_ACCESS_KEY: 'unit-test-secret-never-printed',
};

function progress(over: Partial<Progress>): Progress {
  return {
    operation: 'restore',
    phase: 'transferring',
    bytesDone: 512 * 1024 * 1024,
    bytesTotal: 1024 * 1024 * 1024,
    transferredBytes: 0,
    filesTotal: 3,
    rate: 200 * 1024 * 1024,
    etaSeconds: 2.6,
    elapsedSeconds: 2.5,
    ...over,
  };
}

describe('bosun backup / restore command line', () => {
  it('help for both, listed in the top help; usage errors exit 2 before anything is touched', async () => {
    const top = await runCli(['--help']);
    assert.match(top.stdout, /^ {2}backup +make an encrypted, verified backup/m);
    assert.match(top.stdout, /^ {2}restore +restore a backup from object storage/m);
    const h = await runCli(['restore', '--help']);
    assert.equal(h.code, 0);
    assert.match(h.stdout, /--bandwidth-limit N/);
    assert.match(h.stdout, /E_INTEGRITY/);
    assert.equal((await runCli(['backup', '--help'])).code, 0);
    const cases: Array<[string[], RegExp]> = [
      [['backup'], /backup needs a subcommand: create, verify, list, prune or keygen/],
      [['backup', 'create', '/tmp'], /backup create needs --bucket/],
      [['backup', 'create', '/tmp', '--bucket', 'b'], /exactly one of --to x25519:KEY or --key-file PEM/],
      [['backup', 'keygen'], /backup keygen needs --out FILE/],
      [['restore', '/tmp/x'], /restore needs --bucket/],
      [['restore', '/tmp/x', '--bucket', 'b'], /exactly one of --key-file PEM or --identity/],
      [['restore', '/tmp/x', '--bucket', 'b', '--identity', '--key-file', 'k'], /exactly one of --key-file PEM or --identity/],
      [['restore', '/tmp/x', '--bucket', 'b', '--identity', '--bandwidth-limit', 'fast'], /--bandwidth-limit expects a positive number/],
      [['restore', '/tmp/x', '--bucket', 'b', '--identity', '--concurrency', '1000'], /--concurrency is a whole number from 1 to 64/],
      [['restore', '/tmp/x', '--bucket', 'b', '--identity', '--trust', 'ed25519:short'], /--trust expects an Ed25519 key/],
      [['restore', '/tmp/x', '/tmp/y', '--bucket', 'b'], /restore needs exactly one target directory/],
    ];
    for (const [args, message] of cases) {
      const r = await runCli(args, { env: noSettings });
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, message, args.join(' '));
    }
  });

  it('keygen writes a 0600 key once and prints its public half; never overwrites', async () => {
    await withTempDir(async (dir) => {
      const out = join(dir, 'k.pem');
      const r = await runCli(['backup', 'keygen', '--out', out, '--json']);
      assert.equal(r.code, 0, r.stderr);
      assert.match((JSON.parse(r.stdout) as { publicKey: string }).publicKey, /^x25519:[A-Za-z0-9_-]{43}$/);
      assert.doesNotMatch(r.stdout, /PRIVATE/);
      assert.equal((await stat(out)).mode & 0o777, 0o600);
      const pem = await readFile(out, 'utf8');
      const again = await runCli(['backup', 'keygen', '--out', out]);
      assert.equal(again.code, 1);
      assert.match(again.stderr, /keygen never overwrites a key/);
      assert.equal(await readFile(out, 'utf8'), pem);
    });
  });

  it('refuses a key file others can read, and a key of the wrong kind, without contacting the store', async () => {
    await withTempDir(async (dir) => {
      const open = join(dir, 'open.pem');
      await writeFile(open, generateKeyPairSync('x25519').privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o644 });
      const r = await runCli(['restore', join(dir, 't'), '--bucket', 'b', '--key-file', open, '--json'], { env: noSettings });
      assert.equal(r.code, 1);
      const err = (JSON.parse(r.stdout) as { error: { code: string; message: string } }).error;
      assert.equal(err.code, 'E_SECRET');
      assert.match(err.message, /readable by others \(mode 0644\); make it 0600/);
      const ed = join(dir, 'ed.pem');
      await writeFile(ed, generateKeyPairSync('ed25519').privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
      const w = await runCli(['backup', 'create', dir, '--bucket', 'b', '--key-file', ed], { env: noSettings });
      assert.equal(w.code, 1);
      assert.match(w.stderr, /backup key file holds an ed25519 key; a backup key is X25519/);
      for (const x of [r, w]) assert.ok(!(x.stdout + x.stderr).includes(noSettings.AWS_SECRET_ACCESS_KEY));
    });
  });

  it('status shows the restore progress the restore phase records in the state dir', async () => {
    await withTempDir(async (dir) => {
      const rec = {
        state: 'running',
        source: 's3://b/p/',
        backup: 'latest',
        target: '/var/lib/bosun/data',
        phase: 'transferring',
        bytesDone: 536870912,
        bytesTotal: 1073741824,
        percent: 50,
        rate: 209715200,
        etaSeconds: 3,
        updatedAt: '2026-11-22T07:00:00.000Z',
      };
      await writeFile(join(dir, 'restore-progress.json'), JSON.stringify(rec));
      const j = await runCli(['status', '--state-dir', dir, '--json'], { env: noSettings });
      assert.equal(j.code, 0, j.stderr);
      assert.deepEqual((JSON.parse(j.stdout) as { restore: unknown }).restore, rec);
      const t = await runCli(['status', '--state-dir', dir], { env: noSettings });
      assert.match(t.stdout, /^restore: {5}running 50% of 1\.0 GiB \(s3:\/\/b\/p\/ backup latest into \/var\/lib\/bosun\/data\), 200 MiB\/s, ETA 3s/m);
    });
  });

  it('progress: a bar redrawn in place on a terminal, plain lines elsewhere', () => {
    const tty: string[] = [];
    const bar = new ProgressPrinter({ write: (s: string) => tty.push(s), isTTY: true, columns: 81 });
    bar.update(progress({}));
    bar.update(progress({ bytesDone: 600 * 1024 * 1024 }));
    bar.update(progress({ phase: 'done', bytesDone: 1024 * 1024 * 1024, etaSeconds: 0 }));
    assert.equal(tty.length, 2, 'redrawn at most 4 times a second, and always at the end');
    assert.match(tty[0]!, /^\rrestore {2}50% \[#+\.+\] 512 MiB \/ 1\.0 GiB {2}200 MiB\/s {2}ETA 0:03$/);
    assert.equal(tty[0]!.length, 81);
    assert.match(tty[1]!, /^\rrestore 100% \[#+\] .* in 0:03\n$/);
    const plain: string[] = [];
    const lines = new ProgressPrinter({ write: (s: string) => plain.push(s) }, 60_000);
    lines.update(progress({}));
    lines.update(progress({ bytesDone: 600 * 1024 * 1024 }));
    lines.update(progress({ phase: 'done', bytesDone: 1024 * 1024 * 1024 }));
    assert.deepEqual(plain, ['restore 50% 512 MiB / 1.0 GiB 200 MiB/s ETA 0:03\n', 'restore 100% 1.0 GiB / 1.0 GiB 200 MiB/s done in 0:03\n']);
  });
});
