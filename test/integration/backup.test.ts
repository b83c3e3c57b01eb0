// Backups against the real S3 service (MinIO from test/services/up): a round
// trip of a tree with every kind of file, damaged and missing objects, a proxy
// that cuts connections, a killed restore that resumes, wrong keys and
// untrusted signers. Run: npm run test:integration.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { generateKeyPairSync, randomBytes, randomUUID, sign, type KeyObject } from 'node:crypto';
import { existsSync } from 'node:fs';
import { lstat, mkdir, mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer as createHttpServer, request as httpRequest, type Server as HttpServer } from 'node:http';
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, beforeEach, describe, it } from 'node:test';
import { DeleteObjectsCommand, GetObjectCommand, ListObjectsV2Command, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { pino, type Logger } from 'pino';
import {
  BackupError,
  createBackup,
  createS3Client,
  restoreFromObjectStorage,
  S3Transport,
  trustSigners,
  type BackupResult,
  type RestoreResult,
} from '../../src/backup/index.js';
import { parseManifest, sharedPackKey } from '../../src/backup/format.js';
import { DoneSet } from '../../src/backup/journal.js';
import { openSealed, publicKeyString } from '../../src/identity/seal.js';
import { repoRoot } from '../helpers.js';
import { requireServices, type ServiceEnv } from '../services/env.js';
import type { ChildConfig } from './backup-child.js';
import { assertSameTree, describeTree, makeTree, text, type Described } from './tree.js';

const MiB = 1024 * 1024;
const RUN = `${Date.now().toString(36)}-${randomUUID().slice(0, 8)}`;
const CHUNK = MiB;
const FAST_RETRY = { attempts: 6, baseDelayMs: 20, maxDelayMs: 200 };

/** A TCP proxy in front of MinIO that resets connections part-way through responses. */
class ResettingProxy {
  server: Server;
  resets = 0;
  readonly sockets = new Set<Socket>();

  constructor(
    upstreamPort: number,
    readonly cutAfterBytes: number,
    readonly maxResets: number,
  ) {
    this.server = createServer((client) => {
      const upstream = connect(upstreamPort, '127.0.0.1');
      this.sockets.add(client);
      this.sockets.add(upstream);
      let forwarded = 0;
      client.on('data', (d: Buffer) => upstream.write(d));
      upstream.on('data', (d: Buffer) => {
        forwarded += d.length;
        if (forwarded > this.cutAfterBytes && this.resets < this.maxResets) {
          this.resets++;
          client.resetAndDestroy();
          upstream.destroy();
          return;
        }
        client.write(d);
      });
      const close = (): void => {
        client.destroy();
        upstream.destroy();
        this.sockets.delete(client);
        this.sockets.delete(upstream);
      };
      client.on('error', close);
      upstream.on('error', close);
      client.on('close', close);
      upstream.on('close', close);
    });
  }

  async listen(): Promise<number> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    return (this.server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

/**
 * An HTTP proxy in front of MinIO that answers the first request for each
 * object and byte range with an S3-style 500 or 503 (alternately, up to
 * `maxErrors`), and holds back the response headers of every third forwarded
 * request for `slowMs`. Requests are forwarded byte for byte (Host included),
 * so the SigV4 signatures still verify.
 */
class ErroringProxy {
  server: HttpServer;
  errors500 = 0;
  errors503 = 0;
  slowed = 0;
  forwarded = 0;
  private readonly seen = new Set<string>();

  constructor(
    upstreamPort: number,
    readonly maxErrors: number,
    readonly slowMs: number,
    /** the requests that meet an error first: downloads (restore) or uploads (backup create) */
    readonly method: 'GET' | 'PUT' = 'GET',
  ) {
    this.server = createHttpServer((req, res) => {
      const key = `${req.method} ${req.url} ${req.headers.range ?? ''}`;
      if (req.method === method && !this.seen.has(key) && this.errors500 + this.errors503 < this.maxErrors) {
        this.seen.add(key);
        const five03 = (this.errors500 + this.errors503) % 2 === 1;
        if (five03) this.errors503++;
        else this.errors500++;
        req.resume();
        const code = five03 ? 'SlowDown' : 'InternalError';
        res.writeHead(five03 ? 503 : 500, { 'content-type': 'application/xml' });
        res.end(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>injected by the test</Message></Error>`);
        return;
      }
      this.seen.add(key);
      const n = ++this.forwarded;
      const up = httpRequest({ host: '127.0.0.1', port: upstreamPort, method: req.method, path: req.url, headers: req.headers }, (ur) => {
        const send = (): void => {
          res.writeHead(ur.statusCode ?? 502, ur.headers);
          ur.pipe(res);
        };
        if (n % 3 === 0) {
          this.slowed++;
          setTimeout(send, this.slowMs);
        } else send();
      });
      up.on('error', () => res.destroy());
      req.pipe(up);
    });
  }

  get injected(): number {
    return this.errors500 + this.errors503;
  }

  /** From now on every request is answered 503: a store that is down for good. */
  downForGood(): void {
    this.server.removeAllListeners('request');
    this.server.on('request', (req, res) => {
      this.errors503++;
      req.resume();
      res.writeHead(503, { 'content-type': 'application/xml' });
      res.end('<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code><Message>injected</Message></Error>');
    });
  }

  async listen(): Promise<number> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    return (this.server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

function runChild(
  cfg: ChildConfig,
  onSpawn?: (kill: () => void) => void,
): Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(repoRoot, 'dist/test/integration/backup-child.js'), JSON.stringify(cfg)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
    onSpawn?.(() => child.kill('SIGKILL'));
  });
}

/** A debug-level logger whose lines the test can read. */
function debugLogger(): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(chunk.toString());
      cb();
    },
  });
  return { logger: pino({ level: 'debug' }, sink), lines };
}

describe('backup and restore (real MinIO)', { timeout: 600_000 }, () => {
  let env: ServiceEnv;
  let s3: S3Client;
  let work: string;
  let setupError: Error | undefined;
  const recipient = generateKeyPairSync('x25519');
  const openKey = (k: { privateKey: KeyObject; publicKey: KeyObject }) => (sealed: string) => openSealed(k.privateKey, k.publicKey, sealed);
  const prefixes: string[] = [];

  const transport = (name: string, client = s3): S3Transport => {
    const prefix = `bosun-it/${RUN}/${name}/`;
    if (!prefixes.includes(prefix)) prefixes.push(prefix);
    return new S3Transport({ client, bucket: env.s3.bucket, prefix });
  };

  const backup = (src: string, name: string, extra: Partial<Parameters<typeof createBackup>[0]> = {}): Promise<BackupResult> =>
    createBackup({ source: src, transport: transport(name), recipient: recipient.publicKey, chunkSize: CHUNK, packSize: 4 * MiB, retry: FAST_RETRY, ...extra });

  const restore = (name: string, target: string, extra: Partial<Parameters<typeof restoreFromObjectStorage>[0]> = {}): Promise<RestoreResult> =>
    restoreFromObjectStorage({ transport: transport(name), backupId: 'latest', target, openDataKey: openKey(recipient), retry: FAST_RETRY, ...extra });

  const objectKey = (name: string, key: string): string => `bosun-it/${RUN}/${name}/${key}`;
  /** An S3 client for the test MinIO, through a proxy on `port`. */
  const clientVia = (port: number): S3Client =>
    createS3Client({
      endpoint: `http://127.0.0.1:${port}`,
      region: env.s3.region,
      credentials: { accessKeyId: env.s3.accessKeyId, secretAccessKey: env.s3.secretAccessKey },
    });
  const getObject = async (key: string): Promise<Buffer> => {
    const r = await s3.send(new GetObjectCommand({ Bucket: env.s3.bucket, Key: key }));
    return Buffer.from(await r.Body!.transformToByteArray());
  };
  const putObject = (key: string, body: Buffer) => s3.send(new PutObjectCommand({ Bucket: env.s3.bucket, Key: key, Body: body }));

  let source: string;
  let expected: Map<string, Described>;
  let first: BackupResult;

  before(async () => {
    try {
      env = await requireServices();
    } catch (err) {
      setupError = err instanceof Error ? err : new Error(String(err));
      return;
    }
    s3 = createS3Client({
      endpoint: env.s3.endpoint,
      region: env.s3.region,
      credentials: { accessKeyId: env.s3.accessKeyId, secretAccessKey: env.s3.secretAccessKey },
    });
    work = await mkdtemp(join(tmpdir(), 'bosun-backup-it-'));
    source = join(work, 'source');
    await makeTree(source);
    expected = await describeTree(source);
  });

  beforeEach(() => {
    if (setupError !== undefined) throw setupError;
  });

  after(async () => {
    if (work) await rm(work, { recursive: true, force: true });
    if (!s3) return;
    for (const prefix of prefixes) {
      for (;;) {
        const l = await s3.send(new ListObjectsV2Command({ Bucket: env.s3.bucket, Prefix: prefix }));
        const keys = (l.Contents ?? []).map((o) => ({ Key: o.Key! }));
        if (keys.length === 0) break;
        await s3.send(new DeleteObjectsCommand({ Bucket: env.s3.bucket, Delete: { Objects: keys } }));
      }
    }
    s3.destroy();
  });

  it('round-trips every kind of entry: data, empty, sparse, symlinks, hard links, modes, owners, mtimes', async () => {
    first = await backup(source, 'tree', { host: 'it-host' });
    assert.equal(first.stats.skipped, 1, 'the fifo is skipped');
    assert.equal(first.stats.hardlinks, 1);
    assert.equal(first.stats.symlinks, 3);
    assert.ok(first.stats.packs > 1, `${first.stats.packs} packs`);
    // dup1/dup2 share their chunks; zero chunks and holes are not stored.
    assert.ok(first.stats.storedBytes < first.stats.bytes / 2, `stored ${first.stats.storedBytes} of ${first.stats.bytes}`);

    const target = join(work, 'restored');
    const progress: number[] = [];
    // With the read-back of every file from disk, too.
    const r = await restore('tree', target, { onProgress: (p) => progress.push(p.bytesDone), verifyFiles: true });
    assert.equal(r.backupId, first.backupId);
    assert.equal(r.resumedChunks, 0);
    assertSameTree(await describeTree(target), expected);
    const sparse = await lstat(join(target, 'data/sparse.img'));
    assert.equal(sparse.size, 64 * MiB);
    assert.ok(sparse.blocks * 512 < 4 * MiB, `sparse.img allocates ${sparse.blocks * 512} bytes`);
    const zeros = await lstat(join(target, 'data/zeros.bin'));
    assert.ok(zeros.blocks * 512 >= 2 * MiB, 'a file of written zeros stays allocated');
    assert.equal(progress.at(-1), r.bytes);
    // Nothing of the restore's own is left behind.
    assert.deepEqual((await readdir(work)).sort(), ['restored', 'source']);
  });

  it('writes the data out while it downloads (flush ahead), and restores all the same where sync cannot run', async () => {
    const { logger, lines } = debugLogger();
    const target = join(work, 'flushed');
    await restore('tree', target, { logger, flushAheadBytes: 256 * 1024 });
    assertSameTree(await describeTree(target), expected);
    const flushed = lines.filter((l) => l.includes('restore: flushed ahead')).length;
    assert.ok(flushed >= 1, `flushed ahead ${flushed} times`);
    await rm(target, { recursive: true });

    // No sync(1) on PATH: no flush ahead, and the final sync falls back to fsync of every file.
    lines.length = 0;
    const path = process.env.PATH;
    process.env.PATH = join(work, 'no-such-bin');
    try {
      await restore('tree', target, { logger, flushAheadBytes: 256 * 1024 });
    } finally {
      process.env.PATH = path;
    }
    assertSameTree(await describeTree(target), expected);
    assert.equal(lines.filter((l) => l.includes('restore: cannot flush ahead')).length, 1, 'said once that it cannot flush ahead');
    assert.equal(lines.filter((l) => l.includes('restore: flushed ahead')).length, 0);
    await rm(target, { recursive: true });
  });

  it('restores into an existing empty directory (a mount point) and refuses a non-empty one', async () => {
    const target = join(work, 'mountpoint');
    await mkdir(join(target, 'lost+found'), { recursive: true });
    const marker = join(work, 'marker.json');
    await restore('tree', target, { markerPath: marker });
    const want = new Map(expected);
    want.set('lost+found', (await describeTree(target)).get('lost+found')!);
    assertSameTree(await describeTree(target), want);
    assert.equal(JSON.parse(await readFile(marker, 'utf8')).backupId, first.backupId);

    await assert.rejects(restore('tree', target), (e: unknown) => e instanceof BackupError && e.reason === 'target' && /not empty/.test(e.message));
    await rm(target, { recursive: true });
    await rm(marker);
  });

  it('refuses a wrong key before writing anything', async () => {
    const target = join(work, 'wrong-key');
    const other = generateKeyPairSync('x25519');
    await assert.rejects(restore('tree', target, { openDataKey: openKey(other) }), (e: unknown) => {
      assert.ok(e instanceof BackupError);
      assert.equal(e.reason, 'key');
      assert.match(e.message, /cannot open the data key .* sealed to x25519:/);
      return true;
    });
    assert.deepEqual((await readdir(work)).sort(), ['restored', 'source']);
  });

  it('accepts a backup signed by a trusted host key and refuses an untrusted or unsigned one', async () => {
    const host = generateKeyPairSync('ed25519');
    const signingKey = publicKeyString('ed25519', host.publicKey);
    const small = join(work, 'small');
    await mkdir(small);
    await writeFile(join(small, 'a'), text(5000));
    await backup(small, 'signed', { signer: { signingKey, sign: (d) => sign(null, d, host.privateKey) } });
    const target = join(work, 'signed-restore');
    await restore('signed', target, { verifyManifest: trustSigners([signingKey]) });
    assert.equal((await readFile(join(target, 'a'))).length, 5000);
    await rm(target, { recursive: true });

    const stranger = publicKeyString('ed25519', generateKeyPairSync('ed25519').publicKey);
    await assert.rejects(
      restore('signed', target, { verifyManifest: trustSigners([stranger]) }),
      (e: unknown) => e instanceof BackupError && e.reason === 'key' && /not a trusted key/.test(e.message),
    );
    await assert.rejects(
      restore('tree', target, { verifyManifest: trustSigners([signingKey]) }),
      (e: unknown) => e instanceof BackupError && /not signed/.test(e.message),
    );
    assert.equal(existsSync(target), false);
    await rm(small, { recursive: true });
  });

  describe('damaged backups fail loudly, name the object, and leave no target', () => {
    let damaged: BackupResult;
    const name = 'damaged';
    const src = (): string => join(work, 'damaged-src');
    const pack0 = (): string => objectKey(name, sharedPackKey(damaged.backupId, 0));
    let original: Buffer;

    before(async () => {
      if (setupError) return;
      await mkdir(src());
      await writeFile(join(src(), 'one'), randomBytes(3 * MiB));
      await writeFile(join(src(), 'two'), text(2 * MiB));
      damaged = await backup(src(), name);
      original = await getObject(pack0());
    });

    const expectFailure = async (reason: string, re: RegExp): Promise<void> => {
      const target = join(work, 'damaged-target');
      await assert.rejects(restore(name, target), (e: unknown) => {
        assert.ok(e instanceof BackupError, String(e));
        assert.equal(e.reason, reason, e.message);
        assert.match(e.message, re);
        return true;
      });
      assert.equal(existsSync(target), false, 'no target appears');
    };

    it('a corrupt chunk: detected, fetched again, then reported with its object and byte range', async () => {
      const bad = Buffer.from(original);
      bad[1000]! ^= 0xff;
      await putObject(pack0(), bad);
      await expectFailure(
        'integrity',
        new RegExp(`corrupt data in s3://${env.s3.bucket}/.*/packs/[^ ]*-000000\\.pack at bytes 0-\\d+ .*fetching it twice more.*belongs to one`),
      );
    });

    it('a truncated pack', async () => {
      await putObject(pack0(), original.subarray(0, original.length - 1000));
      await expectFailure('truncated', /packs\/[^ ]*-000000\.pack is \d+ bytes but the manifest says \d+: truncated/);
    });

    it('a deleted pack', async () => {
      await s3.send(new DeleteObjectsCommand({ Bucket: env.s3.bucket, Delete: { Objects: [{ Key: pack0() }] } }));
      await expectFailure('missing', /packs\/[^ ]*-000000\.pack is missing from the store/);
    });

    it('restores once the pack is back, continuing from what the failed runs verified', async () => {
      await putObject(pack0(), original);
      const r = await restore(name, join(work, 'damaged-target'));
      assert.equal(r.files, 2);
      assertSameTree(await describeTree(join(work, 'damaged-target')), await describeTree(src()));
      await rm(join(work, 'damaged-target'), { recursive: true });
      await rm(src(), { recursive: true });
      for (const n of await readdir(work)) if (n.startsWith('.damaged-')) assert.fail(`left behind: ${n}`);
    });
  });

  it('completes through a proxy that resets connections mid-transfer', async () => {
    const proxy = new ResettingProxy(Number(new URL(env.s3.endpoint).port), 300_000, 12);
    const port = await proxy.listen();
    const client = clientVia(port);
    const target = join(work, 'through-proxy');
    try {
      const r = await restoreFromObjectStorage({
        transport: transport('tree', client),
        backupId: first.backupId,
        target,
        openDataKey: openKey(recipient),
        retry: FAST_RETRY,
        concurrency: 4,
      });
      assert.ok(proxy.resets >= 5, `only ${proxy.resets} resets`);
      assert.equal(r.resumedChunks, 0);
      assertSameTree(await describeTree(target), expected);
    } finally {
      client.destroy();
      await proxy.close();
      await rm(target, { recursive: true, force: true });
    }
  });

  it('completes through a store that answers 500 and 503 and is slow; the retries are reported', async () => {
    const proxy = new ErroringProxy(Number(new URL(env.s3.endpoint).port), 24, 700);
    const port = await proxy.listen();
    const client = clientVia(port);
    const target = join(work, 'through-erroring-proxy');
    try {
      const r = await restoreFromObjectStorage({
        transport: transport('tree', client),
        backupId: 'latest',
        target,
        openDataKey: openKey(recipient),
        retry: FAST_RETRY,
        concurrency: 4,
      });
      // The pointer, the manifest and the packs each met an error first.
      assert.ok(proxy.errors500 >= 2 && proxy.errors503 >= 2, `injected ${proxy.errors500} × 500, ${proxy.errors503} × 503`);
      assert.ok(proxy.slowed >= 1, 'no response was slowed');
      // Every injected error cost exactly one retry, and the result says so.
      assert.equal(r.retries, proxy.injected);
      assert.equal(r.resumedChunks, 0);
      assertSameTree(await describeTree(target), expected);
      process.stderr.write(
        `[it] store errors: ${proxy.errors500} × 500, ${proxy.errors503} × 503, ${proxy.slowed} responses held ${proxy.slowMs} ms; restore ${r.seconds.toFixed(1)} s, ${r.retries} retries\n`,
      );
    } finally {
      client.destroy();
      await proxy.close();
      await rm(target, { recursive: true, force: true });
    }
  });

  it('backup create through a store that answers uploads with 500 and 503 and is slow: each upload retried, the backup restores whole', async () => {
    const proxy = new ErroringProxy(Number(new URL(env.s3.endpoint).port), 6, 300, 'PUT');
    const port = await proxy.listen();
    const client = clientVia(port);
    const target = join(work, 'after-erroring-uploads');
    try {
      // 1 MiB packs: several packs, two uploads at a time, so retried uploads overlap with new ones.
      const made = await backup(source, 'uploads-erroring', { transport: transport('uploads-erroring', client), packSize: MiB, uploadConcurrency: 2 });
      assert.ok(made.stats.packs >= 4, `${made.stats.packs} packs`);
      assert.equal(proxy.injected, 6, `injected ${proxy.errors500} × 500, ${proxy.errors503} × 503`);
      assert.ok(proxy.slowed >= 1, 'no response was slowed');
      const r = await restore('uploads-erroring', target);
      assert.equal(r.backupId, made.backupId);
      assertSameTree(await describeTree(target), expected);
    } finally {
      client.destroy();
      await proxy.close();
      await rm(target, { recursive: true, force: true });
    }
  });

  it('backup create against a store that keeps answering 503: a transport error naming the object, and no latest.json', async () => {
    const proxy = new ErroringProxy(Number(new URL(env.s3.endpoint).port), 0, 0, 'PUT');
    const port = await proxy.listen();
    const client = clientVia(port);
    proxy.downForGood();
    try {
      await assert.rejects(
        backup(source, 'uploads-down', { transport: transport('uploads-down', client), packSize: MiB, uploadConcurrency: 2 }),
        (e: unknown) =>
          e instanceof BackupError &&
          e.reason === 'transport' &&
          /gave up after retries/.test(e.message) &&
          (/pack/.test(e.message) || assert.fail(`does not name the pack: ${e.message}`)),
      );
      const listed = await s3.send(new ListObjectsV2Command({ Bucket: env.s3.bucket, Prefix: objectKey('uploads-down', '') }));
      assert.deepEqual(listed.Contents ?? [], [], 'nothing reached the store, least of all latest.json');
    } finally {
      client.destroy();
      await proxy.close();
    }
  });

  it('gives up on a store that keeps answering 503, naming the object; no target appears', async () => {
    const proxy = new ErroringProxy(Number(new URL(env.s3.endpoint).port), 0, 0);
    proxy.downForGood();
    const port = await proxy.listen();
    const client = clientVia(port);
    const target = join(work, 'store-down');
    try {
      await assert.rejects(
        restoreFromObjectStorage({ transport: transport('tree', client), backupId: 'latest', target, openDataKey: openKey(recipient), retry: FAST_RETRY }),
        (e: unknown) =>
          e instanceof BackupError &&
          e.reason === 'transport' &&
          /gave up after retries/.test(e.message) &&
          (e.message.includes('latest') || assert.fail(`does not name the object: ${e.message}`)),
      );
      assert.equal(proxy.errors503, FAST_RETRY.attempts, 'one request per attempt, then it gives up');
      assert.equal(existsSync(target), false);
    } finally {
      client.destroy();
      await proxy.close();
    }
  });

  it('disk full on the target volume: ENOSPC naming the volume, no marker; with room the next run completes', async () => {
    // A real ENOSPC from the kernel: a 6 MiB tmpfs (needs root, as the agent does) and a 12 MiB backup.
    assert.equal(process.getuid?.(), 0, 'this test mounts a small tmpfs and must run as root');
    const src = join(work, 'enospc-src');
    await mkdir(src);
    for (let i = 0; i < 4; i++) await writeFile(join(src, `f${i}`), randomBytes(3 * MiB));
    await backup(src, 'enospc');
    const vol = join(work, 'enospc-vol');
    const marker = join(work, 'enospc-marker.json');
    await mkdir(vol);
    const mount = (size: string): void => void execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0700`, 'tmpfs', vol]);
    mount('6m');
    try {
      await assert.rejects(restore('enospc', vol, { markerPath: marker }), (e: unknown) => {
        assert.ok(e instanceof BackupError && e.reason === 'space' && e.code === 'E_WRITE', String(e));
        assert.match(e.message, /ENOSPC/);
        assert.ok(e.message.includes(vol), `does not name the volume: ${e.message}`);
        return true;
      });
      assert.equal(existsSync(marker), false, 'marked restored after ENOSPC');
      // Nothing that looks like a complete tree: only the staging area and its journal.
      assert.deepEqual(
        (await readdir(vol)).filter((n) => !n.startsWith('.bosun-restore')),
        [],
      );
      // Room made (the volume grown), the next run completes and marks it.
      execFileSync('mount', ['-o', 'remount,size=32m', vol]);
      const r = await restore('enospc', vol, { markerPath: marker });
      assert.equal(r.files, 4);
      assertSameTree(await describeTree(vol), await describeTree(src));
      assert.equal(existsSync(marker), true);
    } finally {
      execFileSync('umount', [vol]);
    }
  });

  it('resumes a restore killed with SIGKILL, fetching less the second time', async () => {
    const src = join(work, 'kill-src');
    await mkdir(src);
    for (let i = 0; i < 6; i++) await writeFile(join(src, `f${i}`), randomBytes(4 * MiB));
    const b = await backup(src, 'kill');
    const keyFile = join(work, 'recipient.pem');
    await writeFile(keyFile, recipient.privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
    const target = join(work, 'killed');
    const journal = join(work, '.killed.bosun-restore.journal');
    const cfg: ChildConfig = {
      endpoint: env.s3.endpoint,
      region: env.s3.region,
      bucket: env.s3.bucket,
      prefix: `bosun-it/${RUN}/kill/`,
      accessKeyId: env.s3.accessKeyId,
      secretAccessKey: env.s3.secretAccessKey,
      backupId: b.backupId,
      target,
      keyFile,
      bandwidthLimit: 3 * MiB,
      checkpointIntervalMs: 100,
      concurrency: 2,
    };
    let killedWith = 0;
    const run1 = await runChild(cfg, (kill) => {
      const poll = setInterval(() => {
        void readFile(journal, 'utf8')
          .then((t) => {
            const j = JSON.parse(t);
            const done = DoneSet.decode(j.chunks, j.done).count;
            if (done >= 4 && killedWith === 0) {
              killedWith = done;
              clearInterval(poll);
              kill();
            }
          })
          .catch(() => undefined);
      }, 20);
    });
    assert.equal(run1.signal, 'SIGKILL', `first run was not killed: ${run1.stderr}`);
    assert.ok(killedWith >= 4 && killedWith < b.stats.chunks, `killed after ${killedWith} of ${b.stats.chunks} chunks`);
    assert.equal(existsSync(target), false, 'no target after the kill');
    const journalled = DoneSet.decode(b.stats.chunks, JSON.parse(await readFile(journal, 'utf8')).done).count;

    // Damage what the first run wrote: the second run must not trust it.
    const staged = join(work, '.killed.bosun-restore', 'f0');
    if (existsSync(staged)) {
      const fh = await open(staged, 'r+');
      await fh.write(Buffer.from('XXXX'), 0, 4, 0);
      await fh.close();
    }
    // The second run also reads every file back, so the chunks written before the kill are checked on disk too.
    const { bandwidthLimit: _limit, ...unlimited } = cfg;
    const run2 = await runChild({ ...unlimited, verifyFiles: true });
    assert.equal(run2.code, 0, run2.stderr);
    const r = JSON.parse(run2.stdout) as RestoreResult;
    assert.equal(r.resumedChunks, journalled - 1, `resumed ${r.resumedChunks} chunks; the journal had ${journalled}, one of them damaged`);
    assert.ok(r.transferredBytes < b.stats.storedBytes, `fetched ${r.transferredBytes} of ${b.stats.storedBytes} bytes again`);
    assertSameTree(await describeTree(target), await describeTree(src));
    assert.equal(existsSync(journal), false);
    await rm(src, { recursive: true });
    await rm(target, { recursive: true });
  });

  it('never puts the data key or S3 credentials into logs or errors', async () => {
    const { logger, lines } = debugLogger();
    const manifest = parseManifest(await getObject(objectKey('tree', `backups/${first.backupId}/manifest`)));
    const dataKey = openSealed(recipient.privateKey, recipient.publicKey, manifest.header.sealedDataKey);
    const target = join(work, 'logged');
    await restore('tree', target, { logger });
    await rm(target, { recursive: true });
    let message = '';
    await restore('tree', target, { logger, openDataKey: openKey(generateKeyPairSync('x25519')) }).catch(
      (e: unknown) => (message = e instanceof Error ? `${e.message} ${JSON.stringify(e)}` : String(e)),
    );
    const all = lines.join('') + message;
    assert.ok(lines.length > 3, 'the restore logged');
    for (const secret of [dataKey.toString('hex'), dataKey.toString('base64'), dataKey.toString('base64url'), env.s3.secretAccessKey]) {
      assert.ok(!all.includes(secret), 'a secret reached the log');
    }
  });
});
