// Unit tests for restore from a peer: the self-signed Ed25519 certificate
// (DER encoder) and the service-command method (placeholder substitution, and
// a real local command run into staging, committed and marked only on success).
import assert from 'node:assert/strict';
import { X509Certificate, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Redactor } from '../../src/secrets/redact.js';
import { BosunError } from '../../src/errors.js';
import { loadOrCreateIdentity } from '../../src/identity/host-identity.js';
import { publicKeyString } from '../../src/identity/seal.js';
import { parseNodeSpec } from '../../src/spec/index.js';
import type { NodeSpec } from '../../src/spec/node-spec.js';
import { examplesDir } from '../helpers.js';
import {
  certificateKey,
  hostTlsCredential,
  isPeerRestoreError,
  peerRestorePlan,
  peerServerOptions,
  restoreWithCommand,
  selfSignedCertificate,
  substituteRestoreCommand,
  tlsCredential,
} from '../../src/backup/peer/index.js';

describe('peer TLS credential from an Ed25519 host key', () => {
  it('is a parseable, self-signed X.509 certificate carrying exactly the host key', () => {
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    const cred = tlsCredential(privateKey, 'node-a');
    const cert = new X509Certificate(cred.cert);
    assert.equal(cert.subject, 'CN=node-a');
    assert.equal(cert.issuer, 'CN=node-a');
    assert.ok(cert.verify(publicKey), 'signed by its own key');
    assert.equal(certificateKey(cert), publicKeyString('ed25519', publicKey));
    assert.equal(cred.publicKey, publicKeyString('ed25519', publicKey));
    assert.equal(cert.validTo, 'Dec 31 23:59:59 9999 GMT');
    assert.ok(!cert.ca);
    // Deterministic: the same key gives the same certificate, another key another one.
    assert.equal(tlsCredential(privateKey, 'node-a').cert, cred.cert);
    const other = generateKeyPairSync('ed25519');
    assert.notEqual(tlsCredential(other.privateKey, 'node-a').cert, cred.cert);
    assert.equal(cert.verify(other.publicKey), false);
    // The PEM of the private key round-trips to the same public key.
    assert.equal(publicKeyString('ed25519', createPublicKey(cred.key)), cred.publicKey);
  });

  it('is made from the host identity key in the state dir', async () => {
    const state = await mkdtemp(join(tmpdir(), 'bosun-peer-id-'));
    try {
      await assert.rejects(hostTlsCredential(state), /no host identity key at .*identity\/ed25519\.pem/);
      const { identity } = await loadOrCreateIdentity(state);
      const cred = await hostTlsCredential(state, 'node-b');
      assert.equal(cred.publicKey, identity.signingKey);
      assert.equal(certificateKey(new X509Certificate(cred.cert)), identity.signingKey);
    } finally {
      await rm(state, { recursive: true, force: true });
    }
  });

  it('refuses keys that are not Ed25519 private keys', () => {
    assert.throws(() => selfSignedCertificate(generateKeyPairSync('x25519').privateKey, 'x'), BosunError);
    assert.throws(() => selfSignedCertificate(generateKeyPairSync('ed25519').publicKey, 'x'), BosunError);
    assert.equal(certificateKey(undefined), undefined);
  });
});

describe('restore command substitution', () => {
  const vars = { peer: 'pg-a', peerAddress: 'fd00::a', target: '/data/.bosun-restore', node: 'pg-b' };

  it('fills placeholders anywhere in an argument, and nothing else', () => {
    assert.deepEqual(
      substituteRestoreCommand(['pg_basebackup', '-h', '{peerAddress}', '-D', '{target}', '--label=bosun-{node}-from-{peer}', 'x;rm -rf /', '$HOME'], vars),
      ['pg_basebackup', '-h', 'fd00::a', '-D', '/data/.bosun-restore', '--label=bosun-pg-b-from-pg-a', 'x;rm -rf /', '$HOME'],
    );
    assert.deepEqual(substituteRestoreCommand(['{{peer}}', 'a{{b}}c', '{{{peer}}}'], vars), ['{peer}', 'a{b}c', '{pg-a}']);
  });

  it('refuses an unknown placeholder, a lone brace, a placeholder without a value, and an empty command', () => {
    assert.throws(() => substituteRestoreCommand(['x', '{peerAdress}'], vars), /argument 1 \("\{peerAdress\}"\): unknown placeholder \{peerAdress\}/);
    assert.throws(() => substituteRestoreCommand(['a{b'], vars), /unknown placeholder \{/);
    assert.throws(() => substituteRestoreCommand(['{}'], vars), /unknown placeholder \{\}/);
    assert.throws(() => substituteRestoreCommand(['{node}'], { peer: 'a', peerAddress: 'b', target: 'c' }), /unknown placeholder \{node\}/);
    assert.throws(() => substituteRestoreCommand([], vars), /empty/);
  });
});

describe('restore with a service command', () => {
  let dir: string;
  let source: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bosun-peer-cmd-'));
    source = join(dir, 'source');
    await mkdir(join(source, 'base'), { recursive: true });
    await writeFile(join(source, 'base/1'), 'one');
    await writeFile(join(source, 'PG_VERSION'), '16\n');
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it('runs the command into staging and commits and marks only when it exits 0', async () => {
    const target = join(dir, 'restored');
    const marker = join(dir, 'restored.json');
    const failing = ['sh', '-c', 'cp -a "$1"/. "$2"/ && echo "connection to $3 refused" >&2 && exit 1', 'sh', source, '{target}', '{peerAddress}'];
    await assert.rejects(
      restoreWithCommand({ argv: failing, peer: 'pg-a', peerAddress: '127.0.0.1', target, markerPath: marker, redactor: new Redactor() }),
      (e: unknown) =>
        isPeerRestoreError(e) &&
        e.stage === 'transfer' &&
        e.fallback &&
        /restore command against pg-a failed: .*exited with 1.*connection to 127\.0\.0\.1 refused/.test(e.message),
    );
    assert.equal(existsSync(target), false, 'a failed command leaves no target');
    assert.equal(existsSync(marker), false);
    assert.ok(existsSync(join(dir, '.restored.bosun-restore.journal')));

    const ok = ['sh', '-c', 'test -z "$(ls -A "$2")" && cp -a "$1"/. "$2"/', 'sh', source, '{target}'];
    const r = await restoreWithCommand({ argv: ok, peer: 'pg-a', peerAddress: '127.0.0.1', target, markerPath: marker, redactor: new Redactor() });
    assert.equal(r.argv[5], join(dir, '.restored.bosun-restore'));
    assert.equal(await readFile(join(target, 'base/1'), 'utf8'), 'one');
    assert.deepEqual((await readdir(target)).sort(), ['PG_VERSION', 'base']);
    assert.equal((JSON.parse(await readFile(marker, 'utf8')) as { method: string }).method, 'command');
    assert.equal(existsSync(join(dir, '.restored.bosun-restore.journal')), false);
  });

  it('restores into an empty mount point, and refuses a non-empty target without running anything', async () => {
    const mount = join(dir, 'mnt');
    await mkdir(join(mount, 'lost+found'), { recursive: true });
    await restoreWithCommand({
      argv: ['sh', '-c', 'cp -a "$1"/. "$2"/', 'sh', source, '{target}'],
      peer: 'pg-a',
      peerAddress: '::1',
      target: mount,
      redactor: new Redactor(),
    });
    assert.deepEqual((await readdir(mount)).sort(), ['PG_VERSION', 'base', 'lost+found']);

    const flag = join(dir, 'ran');
    await assert.rejects(
      restoreWithCommand({ argv: ['touch', flag], peer: 'pg-a', peerAddress: '::1', target: mount, redactor: new Redactor() }),
      (e: unknown) => isPeerRestoreError(e) && e.stage === 'target' && !e.fallback && /not empty/.test(e.message),
    );
    assert.equal(existsSync(flag), false);
  });
});

describe('NodeSpec fields for restore from a peer', () => {
  const key = 'ed25519:' + 'A'.repeat(43);
  async function nodeB(): Promise<Record<string, unknown> & { restore: Record<string, unknown> }> {
    return JSON.parse(await readFile(join(examplesDir, 'node-b.json'), 'utf8')) as Record<string, unknown> & { restore: Record<string, unknown> };
  }
  const problems = (r: ReturnType<typeof parseNodeSpec>): string[] => (r.ok ? [] : r.problems.map((p) => `${p.path}: ${p.message}`));

  it('accepts a snapshot restore with a pinned peer key, a command restore, and a node serving restores', async () => {
    const snap = await nodeB();
    snap.restore = { ...snap.restore, method: 'snapshot', peerKey: key, port: 7433 };
    assert.deepEqual(problems(parseNodeSpec(snap)), []);
    const cmd = await nodeB();
    cmd.restore = {
      ...cmd.restore,
      method: 'command',
      command: { argv: ['pg_basebackup', '-h', '{peerAddress}', '-D', '{target}', '--label={{bosun}}-{node}'], timeoutSeconds: 3600 },
    };
    assert.deepEqual(problems(parseNodeSpec(cmd)), []);
    const serve = await nodeB();
    serve.peerServe = {
      clients: [{ node: 'node-c', hostKey: key }],
      hooks: { quiesce: ['podman', 'pause', 'pg'], release: ['podman', 'unpause', 'pg'] },
      spoolDir: '/var/lib/bosun/peer-spool',
    };
    assert.deepEqual(problems(parseNodeSpec(serve)), []);
  });

  it('refuses unknown placeholders, a command without method "command" and the reverse, bad keys, and serving to itself', async () => {
    const typo = await nodeB();
    typo.restore = { ...typo.restore, method: 'command', command: { argv: ['pg_basebackup', '-h', '{peerAdress}'] } };
    assert.match(problems(parseNodeSpec(typo)).join('\n'), /restore\.command\.argv\[2\]: unknown placeholder \{peerAdress\}/);
    const noCmd = await nodeB();
    noCmd.restore = { ...noCmd.restore, method: 'command' };
    assert.match(problems(parseNodeSpec(noCmd)).join('\n'), /restore\.command: required when method is "command"/);
    const stray = await nodeB();
    stray.restore = { ...stray.restore, command: { argv: ['true'] } };
    assert.match(problems(parseNodeSpec(stray)).join('\n'), /restore\.method: a restore command is only run with method "command"/);
    const badKey = await nodeB();
    badKey.restore = { ...badKey.restore, peerKey: 'x25519:' + 'A'.repeat(43) };
    assert.match(problems(parseNodeSpec(badKey)).join('\n'), /restore\.peerKey: expected an Ed25519 host key/);
    const self = await nodeB();
    self.peerServe = { clients: [{ node: self.node, hostKey: key }] };
    assert.match(problems(parseNodeSpec(self)).join('\n'), /peerServe\.clients\[0\]\.node: a node cannot serve restores to itself/);
    const extra = await nodeB();
    extra.peerServe = { clients: [{ node: 'node-c', hostKey: key }], spool: '/x' };
    assert.match(problems(parseNodeSpec(extra)).join('\n'), /peerServe.*spool/);
  });
});

describe('peer restore plans from a NodeSpec', () => {
  const key = 'ed25519:' + 'B'.repeat(43);
  async function parsed(edit: (s: Record<string, any>) => void): Promise<NodeSpec> {
    const raw = JSON.parse(await readFile(join(examplesDir, 'node-b.json'), 'utf8')) as Record<string, any>;
    edit(raw);
    const r = parseNodeSpec(raw);
    assert.ok(r.ok, JSON.stringify(r.ok ? [] : r.problems));
    return r.value;
  }
  let spec0: NodeSpec;
  before(async () => {
    spec0 = await parsed(() => undefined);
  });

  it('resolves the peer on the mesh, with its pinned key and port, or the command', async () => {
    const snap = await parsed((s) => Object.assign(s.restore, { peerKey: key }));
    assert.deepEqual(peerRestorePlan(snap), { method: 'snapshot', peer: { host: 'fd00:b05:0:1::a', port: 7433, key, name: 'node-a' } });
    const cmd = await parsed((s) =>
      Object.assign(s.restore, { method: 'command', command: { argv: ['pg_basebackup', '-h', '{peerAddress}', '-D', '{target}'] } }),
    );
    assert.deepEqual(peerRestorePlan(cmd), {
      method: 'command',
      peer: 'node-a',
      peerAddress: 'fd00:b05:0:1::a',
      argv: ['pg_basebackup', '-h', '{peerAddress}', '-D', '{target}'],
    });
  });

  it('refuses a snapshot restore without a pinned key, and a peer that is not on the mesh', async () => {
    const keyless = await parsed((s) => {
      if (s.restore?.from === 'peer') delete s.restore.peerKey;
    });
    assert.throws(() => peerRestorePlan(keyless), /restore\.peerKey: required/);
    const offMesh = await parsed((s) => Object.assign(s.restore, { peer: 'node-z', peerKey: key }));
    assert.throws(() => peerRestorePlan(offMesh), /node-z is not one of network\.ipsec\.peers/);
  });

  it('makes the server options: mesh address, data volume, allowed keys, hooks', async () => {
    const serve = await parsed((s) => {
      s.peerServe = { clients: [{ node: 'node-c', hostKey: key }], hooks: { quiesce: ['podman', 'pause', 'pg'], release: ['podman', 'unpause', 'pg'] } };
    });
    const cred = tlsCredential(generateKeyPairSync('ed25519').privateKey);
    const o = peerServerOptions(serve, { stateDir: '/var/lib/bosun', credential: cred });
    assert.ok(o);
    assert.equal(o.host, 'fd00:b05:0:1::b');
    assert.equal(o.port, 7433);
    assert.equal(o.dataDir, serve.disks!.mount.path);
    assert.equal(o.spoolDir, '/var/lib/bosun/peer-spool');
    assert.deepEqual(o.allowedClients, [key]);
    assert.deepEqual(o.hooks, { quiesce: ['podman', 'pause', 'pg'], release: ['podman', 'unpause', 'pg'] });
    assert.equal(peerServerOptions(spec0, { stateDir: '/x', credential: cred }), undefined);
  });
});
