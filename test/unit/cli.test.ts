import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { examplesDir, runCli, withTempDir } from '../helpers.js';

describe('bosun CLI', () => {
  it('validate: path-level problems and exit 3 for a broken spec, exit 0 for good ones', async () => {
    await withTempDir(async (dir) => {
      const s = JSON.parse(await readFile(join(examplesDir, 'node-a.json'), 'utf8')) as Record<string, any>;
      s.disks.raid.level = 5;
      s.network.ipsec.peers[0].psk = 'plaintext-psk-value';
      await writeFile(join(dir, 'bad.json'), JSON.stringify(s));
      const bad = await runCli(['validate', join(dir, 'bad.json')]);
      assert.equal(bad.code, 3);
      assert.match(bad.stdout, /invalid, 2 problems/);
      assert.match(bad.stdout, /^ {2}disks\.raid\.level: expected one of 0,1,10$/m);
      assert.match(bad.stdout, /^ {2}network\.ipsec\.peers\[0\]\.psk: expected a sealed secret/m);
      assert.ok(!bad.stdout.includes('plaintext-psk-value') && !bad.stderr.includes('plaintext-psk-value'));
      assert.ok(!/at .*\.js:\d+/.test(bad.stdout + bad.stderr), 'no stack trace');

      const json = await runCli(['validate', join(dir, 'bad.json'), '--json']);
      assert.equal(json.code, 3);
      assert.equal((JSON.parse(json.stdout) as { files: { problems: unknown[] }[] }).files[0]!.problems.length, 2);

      await writeFile(join(dir, 'syntax.json'), '{"node": ');
      const syntax = await runCli(['validate', join(dir, 'syntax.json')]);
      assert.equal(syntax.code, 3);
      assert.match(syntax.stdout, /\(root\): not valid JSON/);

      const good = await runCli(['validate', ...['node-a', 'node-b', 'node-c'].map((n) => join(examplesDir, `${n}.json`))]);
      assert.equal(good.code, 0, good.stdout);
      const settings = await runCli(['validate', '--kind', 'settings', join(examplesDir, 'agent.json')]);
      assert.equal(settings.code, 0, settings.stdout);
    });
  });

  it('plan refuses an invalid spec with the problems on stderr', async () => {
    await withTempDir(async (dir) => {
      await writeFile(join(dir, 's.json'), JSON.stringify({ apiVersion: 'bosun/v1', cluster: 'c', node: 'Bad_Node', version: 1 }));
      const r = await runCli(['plan', join(dir, 's.json')]);
      assert.equal(r.code, 3);
      assert.match(r.stderr, /is invalid \(1 problem\)\n {2}node: expected lowercase letters/);
    });
  });

  it('apply refuses a spec for another node, disks that are not there, and a service image that is not there, changing nothing', async () => {
    await withTempDir(async (dir) => {
      const settings = JSON.parse(await readFile(join(examplesDir, 'agent.json'), 'utf8')) as Record<string, unknown>;
      await writeFile(join(dir, 'agent.json'), JSON.stringify({ ...settings, stateDir: join(dir, 'state') }));
      const wrong = await runCli(['apply', join(examplesDir, 'node-b.json'), '--settings', join(dir, 'agent.json')]);
      assert.equal(wrong.code, 3);
      assert.match(wrong.stderr, /spec is for node node-b but this host is node-a/);

      // This machine has no NVMe instance-store disks: the disks stage refuses, naming what it found.
      const refused = await runCli(['apply', join(examplesDir, 'node-a.json'), '--settings', join(dir, 'agent.json')]);
      assert.equal(refused.code, 6, refused.stderr);
      assert.match(refused.stderr, /disks: the match rule wants exactly 2 disks but 0 match; nothing was changed/);

      const spec = JSON.parse(await readFile(join(examplesDir, 'node-a.json'), 'utf8')) as Record<string, unknown>;
      for (const k of ['disks', 'network', 'restore', 'peerServe', 'packages', 'auxiliary']) delete spec[k];
      delete (spec.container as Record<string, unknown>).dataMountPoint;
      await writeFile(join(dir, 'container-only.json'), JSON.stringify(spec));
      // No service image on this machine: the container phase refuses before anything is written.
      const noImage = await runCli(['apply', join(dir, 'container-only.json'), '--settings', join(dir, 'agent.json'), '--json']);
      assert.equal(noImage.code, 6, noImage.stderr);
      const err = (JSON.parse(noImage.stdout) as { error: { code: string; message: string } }).error;
      assert.equal(err.code, 'E_REFUSED');
      assert.match(err.message, /container: the image \/var\/lib\/machines\/postgresql-16 is not on this host/);

      const status = await runCli(['status', '--settings', join(dir, 'agent.json'), '--json']);
      const st = JSON.parse(status.stdout) as { applied: unknown; inProgress: unknown; node: string };
      assert.deepEqual([st.node, st.applied, st.inProgress], ['node-a', null, null]);
    });
  });

  it('help everywhere, usage errors exit 2', async () => {
    const top = await runCli(['--help']);
    assert.equal(top.code, 0);
    for (const c of ['validate', 'plan', 'apply', 'run', 'status', 'identity', 'sign', 'seal']) {
      assert.match(top.stdout, new RegExp(`^ {2}${c} `, 'm'));
      const h = await runCli([c, '--help']);
      assert.equal(h.code, 0, `${c} --help`);
      assert.match(h.stdout, new RegExp(`^usage: .*bosun ${c}`, 'm'));
    }
    assert.equal((await runCli([])).code, 2);
    const unknown = await runCli(['frobnicate']);
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /unknown command "frobnicate"/);
    const badOpt = await runCli(['plan', '--frob']);
    assert.equal(badOpt.code, 2);
    assert.match(badOpt.stderr, /usage: bosun plan/);
  });

  it('run needs an agent.json and says so', async () => {
    await withTempDir(async (dir) => {
      const r = await runCli(['run', '--settings', join(dir, 'missing.json')]);
      assert.equal(r.code, 3);
      assert.match(r.stderr, /cannot read settings .*missing\.json: ENOENT/);
    });
  });

  it('sign wraps a valid spec in an envelope the agent verifies', async () => {
    await withTempDir(async (dir) => {
      const { generateKeyPairSync } = await import('node:crypto');
      const { verifyEnvelope } = await import('../../src/bus/envelope.js');
      const { publicKeyString } = await import('../../src/identity/seal.js');
      const kp = generateKeyPairSync('ed25519');
      await writeFile(join(dir, 'cp.pem'), kp.privateKey.export({ format: 'pem', type: 'pkcs8' }));
      const r = await runCli(['sign', join(examplesDir, 'node-b.json'), '--key', join(dir, 'cp.pem'), '--key-id', 'cp-1']);
      assert.equal(r.code, 0, r.stderr);
      const v = verifyEnvelope(r.stdout.trim(), { node: 'node-b', trusted: [{ id: 'cp-1', publicKey: publicKeyString('ed25519', kp.publicKey) }] });
      assert.ok(v.ok);
      const bad = await runCli(['sign', join(examplesDir, 'agent.json'), '--key', join(dir, 'cp.pem'), '--key-id', 'cp-1']);
      assert.equal(bad.code, 3, 'an invalid spec is never signed');
    });
  });
});
