import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { loadOrCreateIdentity, readIdentity } from '../../src/identity/host-identity.js';
import { openSealed, publicKeyString, seal, x25519PublicFromString } from '../../src/identity/seal.js';
import { isBosunError } from '../../src/errors.js';
import { runCli, withTempDir } from '../helpers.js';

describe('sealed secrets', () => {
  const { publicKey, privateKey } = generateKeyPairSync('x25519');

  it('round-trip through the printed public key', () => {
    const recipient = x25519PublicFromString(publicKeyString('x25519', publicKey));
    const sealed = seal(recipient, Buffer.from('luks key material'));
    assert.match(sealed, /^bosun-sealed-v1\.[A-Za-z0-9_-]+$/);
    assert.equal(openSealed(privateKey, publicKey, sealed).toString(), 'luks key material');
  });

  it('differ every time, so equal secrets cannot be spotted', () => {
    assert.notEqual(seal(publicKey, Buffer.from('x')), seal(publicKey, Buffer.from('x')));
  });

  it('cannot be opened by another host', () => {
    const other = generateKeyPairSync('x25519');
    const sealed = seal(publicKey, Buffer.from('secret'));
    assert.throws(
      () => openSealed(other.privateKey, other.publicKey, sealed),
      (e) => isBosunError(e) && e.code === 'E_SECRET',
    );
  });

  it('detect any altered byte', () => {
    const sealed = seal(publicKey, Buffer.from('secret value'));
    const raw = Buffer.from(sealed.slice('bosun-sealed-v1.'.length), 'base64url');
    for (const i of [0, 40, raw.length - 20, raw.length - 1]) {
      const bad = Buffer.from(raw);
      bad[i] = bad[i]! ^ 1;
      assert.throws(() => openSealed(privateKey, publicKey, 'bosun-sealed-v1.' + bad.toString('base64url')), /cannot be opened/);
    }
    assert.throws(() => openSealed(privateKey, publicKey, 'bosun-sealed-v1.AAAA'), /truncated/);
  });
});

describe('host identity', () => {
  it('is made once, root-only, and kept across runs', async () => {
    await withTempDir(async (dir) => {
      const state = join(dir, 'state');
      assert.equal(await readIdentity(state), undefined);
      const first = await loadOrCreateIdentity(state);
      assert.equal(first.created, true);
      for (const f of ['identity/x25519.pem', 'identity/ed25519.pem']) assert.equal((await stat(join(state, f))).mode & 0o777, 0o600, f);
      assert.equal((await stat(state)).mode & 0o777, 0o700);
      const second = await loadOrCreateIdentity(state);
      assert.equal(second.created, false);
      assert.equal(second.identity.sealingKey, first.identity.sealingKey);
      assert.equal(second.identity.signingKey, first.identity.signingKey);
      const sealed = seal(x25519PublicFromString(first.identity.sealingKey), Buffer.from('psk'));
      assert.equal(second.identity.open(sealed).toString(), 'psk');
    });
  });

  it('racing first runs end with one key pair', async () => {
    await withTempDir(async (dir) => {
      const all = await Promise.all(Array.from({ length: 8 }, () => loadOrCreateIdentity(dir)));
      assert.equal(new Set(all.map((r) => r.identity.sealingKey)).size, 1);
    });
  });

  it('refuses to replace a damaged key', async () => {
    await withTempDir(async (dir) => {
      await loadOrCreateIdentity(dir);
      await writeFile(join(dir, 'identity/x25519.pem'), 'garbage');
      await assert.rejects(loadOrCreateIdentity(dir), /refusing to replace it/);
      assert.equal(await readFile(join(dir, 'identity/x25519.pem'), 'utf8'), 'garbage');
    });
  });

  it('bosun identity and bosun seal work together from the command line', async () => {
    await withTempDir(async (dir) => {
      const id = await runCli(['identity', '--state-dir', dir, '--json']);
      assert.equal(id.code, 0, id.stderr);
      const { sealingKey } = JSON.parse(id.stdout) as { sealingKey: string };
      const sealed = await runCli(['seal', '--to', sealingKey], { input: 'pre-shared-key-1' });
      assert.equal(sealed.code, 0, sealed.stderr);
      const value = JSON.parse(sealed.stdout) as { sealed: string };
      assert.ok(!sealed.stdout.includes('pre-shared-key-1'));
      const { identity } = await loadOrCreateIdentity(dir);
      assert.equal(identity.open(value.sealed).toString(), 'pre-shared-key-1');
      const empty = await runCli(['seal', '--to', sealingKey], { input: '' });
      assert.equal(empty.code, 2);
      assert.match(empty.stderr, /stdin was empty/);
      const badKey = await runCli(['seal', '--to', 'x25519:short'], { input: 'x' });
      assert.equal(badKey.code, 1);
      assert.match(badKey.stderr, /expected an X25519 public key/);
    });
  });
});
