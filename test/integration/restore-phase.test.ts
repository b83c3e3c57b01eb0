// The restore phase's step, run on this host against the real S3 service
// (MinIO from test/services/up) into a directory standing in for the data
// volume's mount point: secrets opened from the spec with the host identity,
// the marker and the progress record, the mount point's own mode kept, a
// restore stopped part-way observed as half-restored and continued, and a
// second observation that plans nothing. (The lab test does the same on a
// real LUKS volume through `bosun apply`.)
import assert from 'node:assert/strict';
import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import type { BackupResult } from '../../src/backup/index.js';
import { Redactor } from '../../src/secrets/redact.js';
import type { RestoreStep } from '../../src/engine/step.js';
import { LiveProbe } from '../../src/host/probe.js';
import { loadOrCreateIdentity, type HostIdentity } from '../../src/identity/host-identity.js';
import { seal, x25519PublicFromString } from '../../src/identity/seal.js';
import { restorePhase } from '../../src/phases/restore/index.js';
import { runRestoreStep } from '../../src/backup/restore-step.js';
import { readRestoreProgress } from '../../src/state/restore-progress.js';
import type { NodeSpec } from '../../src/spec/node-spec.js';
import { parseNodeSpec } from '../../src/spec/validate.js';
import { requireServices, type ServiceEnv } from '../services/env.js';
import { makeHost, startServer, stopAllServers } from './peer-server.js';
import { backupToMinio } from './harness.js';
import { assertSameTree, describeTree } from './tree.js';

const MiB = 1024 * 1024;
const RUN = `${Date.now().toString(36)}-${randomUUID().slice(0, 8)}`;
const MOUNT = '/var/lib/bosun/data';
let env: ServiceEnv;
let work: string;
let root: string;
let identity: HostIdentity;
let backup: BackupResult;
const prefix = `bosun-it/${RUN}/phase/`;
const backupKey = generateKeyPairSync('x25519');
const ctx = { distro: { id: 'debian' } } as never;

function sealed(v: string | Buffer): { sealed: string } {
  return { sealed: seal(x25519PublicFromString(identity.sealingKey), typeof v === 'string' ? Buffer.from(v) : v) };
}

function spec(): NodeSpec {
  const r = parseNodeSpec({
    apiVersion: 'bosun/v1',
    cluster: 'it',
    node: 'phase-a',
    version: 1,
    disks: { devices: { paths: ['/dev/disk/by-id/virtio-x'] }, filesystem: { type: 'xfs' }, mount: { path: MOUNT } },
    restore: {
      from: 'object-storage',
      bucket: env.s3.bucket,
      prefix,
      credentials: { accessKeyId: sealed(env.s3.accessKeyId), secretAccessKey: sealed(env.s3.secretAccessKey) },
      backupKey: sealed(backupKey.privateKey.export({ format: 'pem', type: 'pkcs8' })),
    },
  });
  assert.ok(r.ok, JSON.stringify(r));
  return r.value;
}

async function planned(s: NodeSpec): Promise<RestoreStep[]> {
  const probe = new LiveProbe(new Redactor(), root);
  return restorePhase.plan(s, await restorePhase.observe(s, probe, ctx), ctx) as RestoreStep[];
}

describe('restore phase step against MinIO', { timeout: 300_000 }, () => {
  before(async () => {
    env = await requireServices();
    work = await mkdtemp(join(tmpdir(), 'bosun-phase-'));
    root = join(work, 'root');
    identity = (await loadOrCreateIdentity(join(work, 'state'))).identity;
    const src = join(work, 'src');
    await mkdir(join(src, 'base'), { recursive: true });
    for (let i = 0; i < 5; i++) await writeFile(join(src, 'base', `f${i}`), randomBytes(4 * MiB));
    await writeFile(join(src, 'PG_VERSION'), '16\n');
    backup = await backupToMinio(env, src, prefix, backupKey.publicKey);
  });

  after(async () => {
    stopAllServers();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('restores into the mount point, continues after being stopped, writes the marker last, and then plans nothing', async () => {
    await mkdir(join(root, MOUNT), { recursive: true });
    await chmod(join(root, MOUNT), 0o750);
    await mkdir(join(root, MOUNT, 'lost+found'));
    const s = spec();
    const [step] = await planned(s);
    assert.equal(step?.kind, 'restore');
    const redactor = new Redactor();
    const lines: string[] = [];
    const logger = pino({ level: 'info' }, { write: (l: string) => void lines.push(redactor.redact(l)) });
    const stateDir = join(work, 'state');
    const base = { identity, redactor, logger, stateDir, root, objectStorage: { endpoint: env.s3.endpoint, region: env.s3.region, forcePathStyle: true } };

    // Stopped part-way (as by a kill: nothing after the stop runs), with a bandwidth limit so there is a "part-way".
    const slow = { ...step, bandwidthLimitMiBps: 4 };
    const stop = new AbortController();
    const journal = join(root, MOUNT, '.bosun-restore.journal');
    const watcher = setInterval(() => {
      void readFile(journal, 'utf8')
        .then((t) => {
          if ((JSON.parse(t) as { done: string }).done !== Buffer.alloc(Math.ceil(backup.stats.chunks / 8)).toString('base64')) stop.abort();
        })
        .catch(() => undefined);
    }, 50);
    await assert.rejects(runRestoreStep(slow, { ...base, signal: stop.signal }));
    clearInterval(watcher);
    assert.equal(existsSync(join(root, MOUNT, '.bosun-restored.json')), false, 'no marker after a stopped restore');
    assert.equal(existsSync(join(root, MOUNT, 'PG_VERSION')), false, 'nothing in the mount point looks restored');
    assert.equal((await readRestoreProgress(stateDir))?.state, 'failed');

    const [again] = await planned(s);
    assert.match(again!.why, /continue the interrupted restore of backup .* \(\d+ of \d+ chunks written/);
    const result = await runRestoreStep(again!, base);
    assert.ok(result!.resumedChunks > 0, 'the second run continued');
    assert.deepEqual(await readFile(join(root, MOUNT, 'base/f3')), await readFile(join(work, 'src/base/f3')));
    assert.equal((await stat(join(root, MOUNT))).mode & 0o7777, 0o750, 'the mount point keeps its own mode');
    const marker = JSON.parse(await readFile(join(root, MOUNT, '.bosun-restored.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(marker.format, 'bosun-restore-marker-v1');
    assert.equal(marker.backupId, backup.backupId);
    assert.equal(marker.source, `s3://${env.s3.bucket}/${prefix}`);
    const progress = await readRestoreProgress(stateDir);
    assert.equal(progress?.state, 'done');
    assert.equal(progress?.percent, 100);
    assert.equal(progress?.backupId, backup.backupId);
    assert.deepEqual(await planned(s), [], 'restored: the phase plans nothing');

    const all = lines.join('') + JSON.stringify(progress);
    assert.ok(!all.includes(env.s3.secretAccessKey), 'the S3 secret reached a log line');
    assert.doesNotMatch(all, /PRIVATE KEY/);
    assert.match(all, /restore: complete/);
  });

  it('from a peer that cannot be reached: restores the object-storage fallback instead, and then plans nothing', async () => {
    const fallbackRoot = join(work, 'root-fallback');
    await mkdir(join(fallbackRoot, MOUNT), { recursive: true });
    const os = spec().restore;
    if (os?.from !== 'object-storage') return assert.fail();
    const { from: _from, ...fallback } = os;
    const peerKey = `ed25519:${generateKeyPairSync('ed25519').publicKey.export({ format: 'der', type: 'spki' }).subarray(12).toString('base64url')}`;
    const r = parseNodeSpec({
      ...JSON.parse(JSON.stringify(spec())),
      network: { ipsec: { address: 'fd00:b05::1', auth: 'psk', peers: [{ node: 'phase-b', address: '::1', psk: sealed('k'.repeat(32)) }] } },
      // port 9 on loopback: nothing listens, the connection is refused at once
      restore: { from: 'peer', peer: 'phase-b', peerKey, port: 9, fallback },
    });
    assert.ok(r.ok, JSON.stringify(r));
    const probe = new LiveProbe(new Redactor(), fallbackRoot);
    const [step] = restorePhase.plan(r.value, await restorePhase.observe(r.value, probe, ctx), ctx) as RestoreStep[];
    if (step?.from !== 'peer') return assert.fail('a peer restore step');
    assert.equal(step.fallback?.bucket, env.s3.bucket);
    const lines: string[] = [];
    const logger = pino({ level: 'info' }, { write: (l: string) => void lines.push(l) });
    await runRestoreStep(step, {
      identity,
      redactor: new Redactor(),
      logger,
      stateDir: join(work, 'state'),
      root: fallbackRoot,
      objectStorage: { endpoint: env.s3.endpoint, region: env.s3.region, forcePathStyle: true },
    });
    const marker = JSON.parse(await readFile(join(fallbackRoot, MOUNT, '.bosun-restored.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(marker.source, `s3://${env.s3.bucket}/${prefix}`, 'restored from the fallback');
    assert.deepEqual(await readFile(join(fallbackRoot, MOUNT, 'base/f1')), await readFile(join(work, 'src/base/f1')));
    assert.match(lines.join(''), /peer phase-b cannot serve \(connect\); restoring backup latest/);
    assert.deepEqual(restorePhase.plan(r.value, await restorePhase.observe(r.value, probe, ctx), ctx), [], "the fallback's marker satisfies the peer spec");
  });
  it('the peer dies mid-transfer (SIGKILL): the phase falls back to object storage, and the volume ends up holding exactly the backup', async () => {
    const killRoot = join(work, 'root-peer-killed');
    const target = join(killRoot, MOUNT);
    await mkdir(target, { recursive: true });
    // The peer serves other data than the backup (96 MiB, incompressible), so a file of its left in the volume would show.
    const peerData = join(work, 'peer-data');
    await mkdir(join(peerData, 'base'), { recursive: true });
    for (let i = 0; i < 12; i++) await writeFile(join(peerData, 'base', `p${i}`), randomBytes(8 * MiB));
    const peerHost = await makeHost(work, 'peer');
    const server = await startServer({
      dataDir: peerData,
      spoolDir: join(work, 'peer-spool'),
      keyFile: peerHost.keyFile,
      allowedClients: [identity.signingKey],
      host: '::1',
      chunkSize: MiB,
      packSize: 2 * MiB,
    });
    const os = spec().restore;
    if (os?.from !== 'object-storage') return assert.fail();
    const { from: _from, ...fallback } = os;
    const r = parseNodeSpec({
      ...JSON.parse(JSON.stringify(spec())),
      network: { ipsec: { address: 'fd00:b05::1', auth: 'psk', peers: [{ node: 'phase-b', address: '::1', psk: sealed('k'.repeat(32)) }] } },
      restore: { from: 'peer', peer: 'phase-b', peerKey: server.key, port: server.port, fallback },
    });
    assert.ok(r.ok, JSON.stringify(r));
    const probe = new LiveProbe(new Redactor(), killRoot);
    const [step] = restorePhase.plan(r.value, await restorePhase.observe(r.value, probe, ctx), ctx) as RestoreStep[];
    if (step?.from !== 'peer') return assert.fail('a peer restore step');

    // Kill the peer as soon as its data starts landing in the volume.
    let killedAtBytes = -1;
    const watcher = (async () => {
      while (killedAtBytes < 0 && server.child.exitCode === null) {
        const bytes = await bytesUnder(target);
        if (bytes > 0) {
          killedAtBytes = bytes;
          await server.kill('SIGKILL');
          return;
        }
        await new Promise((res) => setTimeout(res, 5));
      }
    })();
    const lines: string[] = [];
    const logger = pino({ level: 'info' }, { write: (l: string) => void lines.push(l) });
    await runRestoreStep(step, {
      identity,
      redactor: new Redactor(),
      logger,
      stateDir: join(work, 'state'),
      root: killRoot,
      objectStorage: { endpoint: env.s3.endpoint, region: env.s3.region, forcePathStyle: true },
    });
    await watcher;
    assert.ok(killedAtBytes > 0 && killedAtBytes < 96 * MiB, `the peer was killed part-way (${killedAtBytes} bytes had landed)`);
    const log = lines.join('');
    assert.match(log, /peer phase-b cannot serve \(transfer\); restoring backup latest/);
    const marker = JSON.parse(await readFile(join(target, '.bosun-restored.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(marker.source, `s3://${env.s3.bucket}/${prefix}`, 'restored from the fallback');
    // Every path as in the backup, and nothing else; the mount point itself keeps its own metadata (keepTargetMetadata).
    const [got, want] = [await describeTree(target, ['.bosun-restored.json']), await describeTree(join(work, 'src'))];
    got.delete('.');
    want.delete('.');
    assertSameTree(got, want);
    assert.deepEqual(restorePhase.plan(r.value, await restorePhase.observe(r.value, probe, ctx), ctx), [], "the fallback's marker satisfies the peer spec");
  });
});

/** Bytes in regular files under dir (0 while it is empty or missing). */
async function bytesUnder(dir: string): Promise<number> {
  let total = 0;
  let entries: import('node:fs').Dirent[];
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch {
    return 0;
  }
  for (const e of entries) {
    const p = join(dir, e.name);
    if (e.isDirectory()) total += await bytesUnder(p);
    else if (e.isFile()) total += (await stat(p).catch(() => ({ size: 0 }))).size;
  }
  return total;
}
