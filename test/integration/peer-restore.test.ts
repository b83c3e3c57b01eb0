// Restore from a peer, two processes on loopback: the serving agent's
// PeerServer runs in a child process (peer-server-child.ts) and the test
// process restores from it over mutually authenticated TLS. Round trip of a
// tree with every file kind; hooks in order (quiesce before the read, release
// after, release also on failure); wrong client key and wrong server key
// refused with nothing written; the server killed mid-transfer gives a clear
// error and a re-run against the restarted server resumes; a corrupt chunk is
// detected. Needs no shared service. Run:
//   node --test --test-concurrency=1 dist/test/integration/peer-restore.test.js
import assert from 'node:assert/strict';
import { createPublicKey, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { isPeerRestoreError, restoreFromPeer, type PeerRestoreError, type PeerRestoreOptions, type SnapshotHooks } from '../../src/backup/peer/index.js';
import { openSealed } from '../../src/identity/seal.js';
import type { PeerServerChildConfig } from './peer-server-child.js';
import { makeHost, startServer, stopAllServers, type Host, type ServerChild } from './peer-server.js';
import { assertSameTree, describeTree, makeTree as makeBaseTree } from './tree.js';

const MiB = 1024 * 1024;
const CHUNK = MiB;
const FAST_RETRY = { attempts: 3, baseDelayMs: 50, maxDelayMs: 300 };

/** The shared tree of every file kind, plus `state.txt`, the file the test hooks rewrite. */
async function makeTree(root: string): Promise<void> {
  await makeBaseTree(root);
  await writeFile(join(root, 'state.txt'), 'initial');
}

describe('restore from a peer (two processes, TLS on loopback)', () => {
  let dir: string;
  let data: string;
  let server: Host;
  let client: Host;
  let hookLog: string;
  let hooks: SnapshotHooks;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bosun-peer-'));
    data = join(dir, 'data');
    await makeTree(data);
    server = await makeHost(dir, 'server');
    client = await makeHost(dir, 'client');
    hookLog = join(dir, 'hooks.log');
    // quiesce rewrites state.txt before the snapshot reads it; release rewrites it again after.
    hooks = {
      quiesce: ['sh', '-c', `echo quiesce >> ${hookLog} && printf quiesced > ${join(data, 'state.txt')}`],
      release: ['sh', '-c', `echo release >> ${hookLog} && printf released > ${join(data, 'state.txt')}`],
      timeoutSeconds: 30,
    };
  });

  after(async () => {
    stopAllServers();
    await rm(dir, { recursive: true, force: true });
  });

  const hookRuns = async (): Promise<string[]> => (existsSync(hookLog) ? (await readFile(hookLog, 'utf8')).trim().split('\n').filter(Boolean) : []);

  function options(s: ServerChild, target: string, extra: Partial<PeerRestoreOptions> = {}): PeerRestoreOptions {
    return {
      peer: { host: '127.0.0.1', port: s.port, key: server.edKey, name: 'node-a' },
      identity: client.ed,
      recipient: client.xPub,
      openDataKey: (sealed) => openSealed(client.x, createPublicKey(client.x), sealed),
      target,
      retry: FAST_RETRY,
      checkpointIntervalMs: 100,
      ...extra,
    };
  }

  async function expectPeerError(p: Promise<unknown>): Promise<PeerRestoreError> {
    try {
      await p;
    } catch (e) {
      assert.ok(isPeerRestoreError(e), `expected a PeerRestoreError, got ${String(e)}`);
      return e;
    }
    assert.fail('the restore should have failed');
  }

  it('round-trips a tree with every kind of file, hooks around the read, in parallel over TLS', async () => {
    await rm(hookLog, { force: true });
    // Over IPv6 loopback, as on the mesh.
    const s = await startServer({
      host: '::1',
      dataDir: data,
      spoolDir: join(dir, 'spool-rt'),
      keyFile: server.keyFile,
      allowedClients: [client.edKey],
      hooks,
      chunkSize: CHUNK,
      packSize: 256 * 1024,
    });
    try {
      assert.equal(s.key, server.edKey);
      const target = join(dir, 'rt');
      const marker = join(dir, 'rt.restored.json');
      const r = await restoreFromPeer(
        options(s, target, { markerPath: marker, concurrency: 4, peer: { host: '::1', port: s.port, key: server.edKey, name: 'node-a' } }),
      );
      assert.equal(r.snapshotReused, false);
      assert.ok(r.bytes > 30 * MiB, `bytes ${r.bytes}`);
      assert.deepEqual(await hookRuns(), ['quiesce', 'release']);
      // The snapshot was read between the hooks: it holds what quiesce wrote, not what release wrote.
      assert.equal(await readFile(join(target, 'state.txt'), 'utf8'), 'quiesced');
      assert.equal(await readFile(join(data, 'state.txt'), 'utf8'), 'released');
      assertSameTree(await describeTree(target, ['state.txt']), await describeTree(data, ['state.txt', 'pipe']));
      const m = JSON.parse(await readFile(marker, 'utf8')) as { backupId: string };
      assert.equal(m.backupId, r.backupId);
      // The client released the snapshot: the spool is empty again.
      assert.deepEqual(
        (await readdir(join(dir, 'spool-rt'))).filter((n) => !n.startsWith('.')),
        [],
      );
      // Pulled in parallel: several ranged GETs at once, over several TLS connections.
      await s.kill();
      const stats = JSON.parse(s.stderr().trim().split('\n').at(-1)!) as { connections: number; gets: number; maxConcurrentGets: number };
      assert.ok(stats.gets >= 6 && stats.maxConcurrentGets >= 2 && stats.connections >= 2, `server saw ${JSON.stringify(stats)}`);
    } finally {
      await s.kill();
    }
  });

  it('runs release when the snapshot fails, and when quiesce fails; the client gets a clear error and nothing is written', async () => {
    for (const [name, cfg] of [
      ['snapshot', { dataDir: join(dir, 'no-such-volume'), hooks }],
      ['quiesce', { dataDir: data, hooks: { ...hooks, quiesce: ['sh', '-c', `echo quiesce >> ${hookLog}; echo "cannot freeze" >&2; exit 3`] } }],
    ] as const) {
      await rm(hookLog, { force: true });
      const s = await startServer({ ...cfg, spoolDir: join(dir, `spool-fail-${name}`), keyFile: server.keyFile, allowedClients: [client.edKey] });
      try {
        const target = join(dir, `fail-${name}`);
        const e = await expectPeerError(restoreFromPeer(options(s, target)));
        assert.equal(e.stage, 'snapshot');
        assert.equal(e.fallback, true);
        assert.match(
          e.message,
          new RegExp(`peer node-a .*could not make a snapshot: ${name === 'quiesce' ? 'quiesce hook failed.*cannot freeze' : 'snapshot of .* failed'}`),
        );
        assert.deepEqual(await hookRuns(), ['quiesce', 'release'], name);
        assert.equal(existsSync(target), false);
        assert.deepEqual(
          (await readdir(dir)).filter((n) => n.includes(`fail-${name}`) && !n.startsWith('spool')),
          [],
        );
      } finally {
        await s.kill();
      }
    }
  });

  it('refuses a client whose key the server does not allow, and a server whose key is not the pinned one; nothing written, no hook run', async () => {
    await rm(hookLog, { force: true });
    const stranger = await makeHost(dir, 'stranger');
    const s = await startServer({ dataDir: data, spoolDir: join(dir, 'spool-keys'), keyFile: server.keyFile, allowedClients: [stranger.edKey], hooks });
    try {
      const target = join(dir, 'keys');
      const e1 = await expectPeerError(restoreFromPeer(options(s, target)));
      assert.equal(e1.reason, 'key');
      assert.equal(e1.stage, 'auth');
      assert.match(e1.message, new RegExp(`peer node-a \\(127\\.0\\.0\\.1:${s.port}\\) refused this host's key ${client.edKey}`));

      const e2 = await expectPeerError(restoreFromPeer(options(s, target, { peer: { host: '127.0.0.1', port: s.port, key: stranger.edKey, name: 'node-a' } })));
      assert.equal(e2.reason, 'key');
      assert.equal(e2.stage, 'auth');
      assert.match(e2.message, new RegExp(`presented ${server.edKey}, but the spec pins its host key ${stranger.edKey}`));
      // Even the allowed stranger, if it pins the wrong server key, sends nothing: the server sees no request.
      assert.deepEqual(await hookRuns(), []);
      assert.equal(existsSync(target), false);
      assert.equal(existsSync(join(dir, '.keys.bosun-restore')), false);
      // Private keys never reach an error.
      for (const e of [e1, e2]) assert.doesNotMatch(JSON.stringify({ m: e.message, d: e.details }), /PRIVATE KEY/);
    } finally {
      await s.kill();
    }
  });

  it('server killed mid-transfer: a clear error the phase can act on; a re-run against the restarted server resumes on the same snapshot', async () => {
    await rm(hookLog, { force: true });
    const big = join(dir, 'bigdata');
    await mkdir(big);
    for (let i = 0; i < 6; i++) await writeFile(join(big, `seg${i}`), randomBytes(4 * MiB));
    const spool = join(dir, 'spool-kill');
    const cfg: PeerServerChildConfig = {
      dataDir: big,
      spoolDir: spool,
      keyFile: server.keyFile,
      allowedClients: [client.edKey],
      hooks,
      chunkSize: CHUNK,
      packSize: 2 * MiB,
    };
    const s1 = await startServer(cfg);
    const target = join(dir, 'killed');
    let killed: Promise<void> | undefined;
    const e = await expectPeerError(
      restoreFromPeer(
        options(s1, target, {
          bandwidthLimit: 6 * MiB,
          concurrency: 2,
          onProgress: (p) => {
            if (killed === undefined && p.bytesDone > 8 * MiB) killed = s1.kill('SIGKILL');
          },
        }),
      ),
    );
    await killed;
    assert.ok(killed !== undefined, 'the server was killed part-way');
    assert.equal(e.stage, 'transfer');
    assert.equal(e.reason, 'transport');
    assert.equal(e.fallback, true);
    assert.match(e.message, /restore from peer node-a \(127\.0\.0\.1:\d+\) failed: .*gave up after retries/);
    assert.equal(existsSync(target), false, 'no half-restored target');
    assert.ok(existsSync(join(dir, '.killed.bosun-restore.journal')), 'the journal stays for a re-run');

    const s2 = await startServer(cfg);
    try {
      const r = await restoreFromPeer(options(s2, target));
      assert.equal(r.snapshotReused, true);
      assert.ok(r.resumedChunks > 0, `resumed ${r.resumedChunks} chunks`);
      assert.ok(r.transferredBytes < 24 * MiB, `transferred ${r.transferredBytes}`);
      assert.deepEqual(await hookRuns(), ['quiesce', 'release'], 'the resumed run did not quiesce the service again');
      assertSameTree(await describeTree(target), await describeTree(big));
    } finally {
      await s2.kill();
    }
  });

  it('detects a corrupt chunk served by the peer: integrity error, no target', async () => {
    const spool = join(dir, 'spool-corrupt');
    const s = await startServer({
      dataDir: data,
      spoolDir: spool,
      keyFile: server.keyFile,
      allowedClients: [client.edKey],
      chunkSize: CHUNK,
      packSize: 4 * MiB,
    });
    try {
      const first = await restoreFromPeer(options(s, join(dir, 'corrupt-a'), { releaseSnapshot: false }));
      const packDir = join(spool, first.backupId, 'packs');
      const packs = (await readdir(packDir)).sort();
      const fh = await open(join(packDir, packs[0]!), 'r+');
      const b = Buffer.alloc(1);
      await fh.read(b, 0, 1, 100);
      b[0] = b[0]! ^ 0xff;
      await fh.write(b, 0, 1, 100);
      await fh.close();
      const target = join(dir, 'corrupt-b');
      const e = await expectPeerError(restoreFromPeer(options(s, target, { reuseSnapshot: first.backupId })));
      assert.equal(e.reason, 'integrity');
      assert.equal(e.stage, 'transfer');
      assert.match(e.message, /packs\/[^ ]*-000000\.pack/);
      assert.equal(existsSync(target), false);
    } finally {
      await s.kill();
    }
  });
});
