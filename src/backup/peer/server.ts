import { createPrivateKey, sign, type KeyObject } from 'node:crypto';
import { once } from 'node:events';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join, relative, resolve } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { z } from 'zod';
import { Redactor } from '../../secrets/redact.js';
import { runCommand } from '../../host/exec.js';
import { writeFileAtomic } from '../../host/files.js';
import type { Logger } from '../../log.js';
import { x25519PublicFromString } from '../../identity/seal.js';
import { createBackup } from '../create.js';
import { isBackupError } from '../errors.js';
import { isBackupId, newBackupId } from '../format.js';
import { asCredential, certificateKey, type TlsCredential } from './cert.js';
import { DirTransport } from './spool.js';

/** Commands (argv, run on the host, no shell) around the snapshot of the data volume. */
export interface SnapshotHooks {
  /** makes the data on disk consistent and keeps it so until release (e.g. `podman pause <ctr>`, a CHECKPOINT + freeze) */
  quiesce?: readonly string[];
  /** undoes quiesce; also run when quiesce or the snapshot failed */
  release?: readonly string[];
  /** per hook (default 300 s) */
  timeoutSeconds?: number;
}

export interface PeerServerOptions {
  /** the data volume (its mount point) to serve snapshots of */
  dataDir: string;
  /** where snapshots are spooled while they are served; must not be inside dataDir; needs free space about the snapshot's stored size */
  spoolDir: string;
  /** the mesh address to listen on (never 0.0.0.0 in production: only the mesh may reach it) */
  host: string;
  /** 0 picks a free port (tests) */
  port: number;
  /** this host's Ed25519 identity private key (KeyObject or PKCS#8 PEM), or a credential made from it */
  identity: KeyObject | string | TlsCredential;
  /** "ed25519:…" keys of the hosts allowed to pull snapshots; anyone else gets 403 and nothing else */
  allowedClients: readonly string[];
  hooks?: SnapshotHooks;
  /** label of this host in the manifest */
  hostLabel?: string;
  logger?: Logger;
  redactor?: Redactor;
  /** a snapshot older than this is not handed out again to a resuming client (default 6 h) */
  maxReuseAgeMs?: number;
  /** complete snapshots kept in the spool (default 2: the one being served and the newest) */
  keepSnapshots?: number;
  chunkSize?: number;
  /** default SPOOL_PACK_SIZE (8 MiB) */
  packSize?: number;
  compressionLevel?: number;
  workers?: number;
}

export const PEER_API = '/v1';
const SNAPSHOT_FILE = 'snapshot.json';
export const SPOOL_PACK_SIZE = 8 * 1024 * 1024;
const PARTIAL = '.partial';

const SnapshotMeta = z.strictObject({ backupId: z.string(), recipient: z.string(), createdAt: z.string(), quiescedMs: z.number() });
type SnapshotMeta = z.infer<typeof SnapshotMeta>;

export const SnapshotRequest = z.strictObject({
  /** X25519 public key the snapshot's data key is sealed to: the pulling host's */
  recipient: z.string().regex(/^x25519:[A-Za-z0-9_-]{43}$/),
  /** a snapshot id the client already started restoring; served again if still in the spool */
  reuse: z.string().optional(),
});
export type SnapshotRequest = z.infer<typeof SnapshotRequest>;

export interface SnapshotReply {
  backupId: string;
  createdAt: string;
  reused: boolean;
  /** how long the service was quiesced for this snapshot */
  quiescedMs: number;
}

/** Where a failed snapshot request went wrong, in the 500 reply's JSON. */
export type SnapshotStage = 'quiesce' | 'snapshot' | 'release';

export class SnapshotFailure extends Error {
  constructor(
    readonly stage: SnapshotStage,
    message: string,
  ) {
    super(message);
    this.name = 'SnapshotFailure';
  }
}

/** What a spooled snapshot holds: its manifest and its packs (version 2: packs/<id>-NNNNNN.pack; version 1 under backups/<id>/). */
const OBJECT_KEY = /^(?:backups\/(\d{8}T\d{6}Z-[0-9a-f]{8})\/(?:manifest|packs\/\d{6}\.pack)|packs\/(\d{8}T\d{6}Z-[0-9a-f]{8})-\d{6}\.pack)$/;

/**
 * The serving half of a restore from a peer. On request (over mutually
 * authenticated TLS 1.3, both sides pinned by their Ed25519 host keys) it runs
 * the service's quiesce hook, writes a backup of the data volume in the
 * standard format (FORMAT.md) into a local spool, runs the release hook, and
 * then serves the spooled objects with ranged GETs, so the new node restores
 * with the same pipeline as from object storage: many ranges in flight over
 * several connections, every chunk verified, resumable.
 */
export class PeerServer {
  readonly #o: PeerServerOptions;
  readonly #cred: TlsCredential;
  readonly #signKey: KeyObject;
  readonly #redactor: Redactor;
  readonly #allowed: Set<string>;
  #server: Server | undefined;
  /** one snapshot at a time; concurrent requests for the same recipient share it */
  #making: { recipient: string; promise: Promise<SnapshotMeta> } | undefined;
  #chain: Promise<unknown> = Promise.resolve();
  /** snapshots with GETs in flight are never deleted under a client */
  readonly #serving = new Map<string, number>();
  #gets = 0;
  /** counters for tests and benchmarks: TLS connections accepted, object GETs, most GETs at once */
  readonly stats = { connections: 0, gets: 0, maxConcurrentGets: 0 };

  constructor(o: PeerServerOptions) {
    const data = resolve(o.dataDir);
    const spool = resolve(o.spoolDir);
    const rel = relative(data, spool);
    if (rel === '' || (!rel.startsWith('..') && !rel.startsWith('/')))
      throw new SnapshotFailure('snapshot', `the spool directory ${spool} is inside the data volume ${data}; it would be part of its own snapshot`);
    this.#o = { ...o, dataDir: data, spoolDir: spool };
    this.#cred = asCredential(o.identity, o.hostLabel ?? 'bosun-host');
    this.#signKey = createPrivateKey(this.#cred.key);
    this.#redactor = o.redactor ?? new Redactor();
    this.#redactor.add(this.#cred.key);
    this.#allowed = new Set(o.allowedClients);
  }

  get publicKey(): string {
    return this.#cred.publicKey;
  }

  /** Start listening; removes unfinished snapshots a crash left in the spool. Returns the bound address. */
  async start(): Promise<{ host: string; port: number }> {
    await mkdir(this.#o.spoolDir, { recursive: true, mode: 0o700 });
    for (const name of await readdir(this.#o.spoolDir)) {
      if (name.endsWith(PARTIAL)) await rm(join(this.#o.spoolDir, name), { recursive: true, force: true });
    }
    const [ds, ss] = await Promise.all([stat(this.#o.dataDir).catch(() => undefined), stat(this.#o.spoolDir)]);
    if (ds && ds.dev === ss.dev) {
      this.#o.logger?.warn(
        { dataDir: this.#o.dataDir, spoolDir: this.#o.spoolDir },
        'peer server: the spool is on the same filesystem as the data volume: it takes space from it, and a quiesce hook that freezes that filesystem (fsfreeze) would deadlock the snapshot',
      );
    }
    const server = createServer(
      {
        key: this.#cred.key,
        cert: this.#cred.cert,
        requestCert: true,
        // No CA: the client's certificate is self-signed; its key is checked against the pins per request.
        rejectUnauthorized: false,
        minVersion: 'TLSv1.3',
        keepAliveTimeout: 30_000,
      },
      (req, res) => void this.#handle(req, res),
    );
    server.on('secureConnection', () => this.stats.connections++);
    server.on('tlsClientError', (e) => this.#o.logger?.debug({ err: e.message }, 'peer server: TLS handshake failed'));
    server.listen(this.#o.port, this.#o.host);
    await once(server, 'listening');
    this.#server = server;
    const a = server.address() as AddressInfo;
    this.#o.logger?.info({ host: a.address, port: a.port, key: this.publicKey, clients: this.#allowed.size }, 'peer server: listening');
    return { host: a.address, port: a.port };
  }

  async stop(): Promise<void> {
    const s = this.#server;
    if (!s) return;
    this.#server = undefined;
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
    await this.#chain.catch(() => undefined);
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const client = certificateKey((req.socket as TLSSocket).getPeerX509Certificate());
    if (client === undefined || !this.#allowed.has(client)) {
      this.#o.logger?.warn({ client: client ?? null, remote: req.socket.remoteAddress }, 'peer server: refused a host whose key is not allowed');
      return reply(
        res,
        403,
        { error: `this peer does not serve ${client ?? 'a client without an Ed25519 certificate'}: not in its list of allowed hosts` },
        true,
      );
    }
    try {
      const url = new URL(req.url ?? '/', 'https://peer');
      if (req.method === 'POST' && url.pathname === `${PEER_API}/snapshots`) return await this.#snapshot(req, res, client);
      if (req.method === 'GET' && url.pathname.startsWith(`${PEER_API}/objects/`))
        return await this.#object(req, res, url.pathname.slice(`${PEER_API}/objects/`.length));
      const del = new RegExp(`^${PEER_API}/snapshots/([^/]+)$`).exec(url.pathname);
      if (req.method === 'DELETE' && del && isBackupId(del[1]!)) {
        await this.#waitIdle(del[1]!);
        await rm(join(this.#o.spoolDir, del[1]!), { recursive: true, force: true });
        this.#o.logger?.info({ backupId: del[1], client }, 'peer server: snapshot released by its client');
        return reply(res, 204);
      }
      return reply(res, 404, { error: 'no such endpoint' });
    } catch (e) {
      const msg = this.#redactor.redact(e instanceof Error ? e.message : String(e));
      this.#o.logger?.error({ err: msg }, 'peer server: request failed');
      if (!res.headersSent) reply(res, 500, { error: msg, ...(e instanceof SnapshotFailure ? { stage: e.stage } : {}) });
      else res.destroy();
    }
  }

  async #snapshot(req: IncomingMessage, res: ServerResponse, client: string): Promise<void> {
    let body: SnapshotRequest;
    try {
      body = SnapshotRequest.parse(JSON.parse((await readSmall(req, 4096)).toString('utf8')));
      x25519PublicFromString(body.recipient);
    } catch {
      return reply(res, 400, { error: 'expected {"recipient":"x25519:…","reuse"?:"<backup id>"}' });
    }
    if (body.reuse !== undefined && isBackupId(body.reuse)) {
      const meta = await this.#meta(body.reuse);
      const age = meta ? Date.now() - Date.parse(meta.createdAt) : Infinity;
      if (meta && meta.recipient === body.recipient && age <= (this.#o.maxReuseAgeMs ?? 6 * 3600_000)) {
        this.#o.logger?.info({ backupId: meta.backupId, client, ageMs: age }, 'peer server: serving an existing snapshot again (the client resumes)');
        return reply(res, 200, { backupId: meta.backupId, createdAt: meta.createdAt, reused: true, quiescedMs: meta.quiescedMs } satisfies SnapshotReply);
      }
    }
    let making = this.#making;
    if (making === undefined || making.recipient !== body.recipient) {
      const promise = this.#chain.catch(() => undefined).then(() => this.#make(body.recipient, client));
      making = { recipient: body.recipient, promise };
      this.#making = making;
      this.#chain = promise;
      const mine = making;
      void promise
        .catch(() => undefined)
        .finally(() => {
          if (this.#making === mine) this.#making = undefined;
        });
    }
    const meta = await making.promise;
    reply(res, 200, { backupId: meta.backupId, createdAt: meta.createdAt, reused: false, quiescedMs: meta.quiescedMs } satisfies SnapshotReply);
  }

  async #hook(which: 'quiesce' | 'release'): Promise<void> {
    const argv = this.#o.hooks?.[which];
    if (!argv || argv.length === 0) return;
    const t0 = performance.now();
    try {
      await runCommand(argv, this.#redactor, { timeoutSeconds: this.#o.hooks?.timeoutSeconds ?? 300 });
    } catch (e) {
      throw new SnapshotFailure(which, `${which} hook failed: ${e instanceof Error ? e.message : String(e)}`);
    }
    this.#o.logger?.info({ hook: which, ms: Math.round(performance.now() - t0) }, `peer server: ${which} hook done`);
  }

  /** quiesce → backup into the spool → release (always), then publish the snapshot. */
  async #make(recipient: string, client: string): Promise<SnapshotMeta> {
    const backupId = newBackupId();
    const partial = join(this.#o.spoolDir, backupId + PARTIAL);
    const log = this.#o.logger?.child({ backupId, client });
    log?.info({ dataDir: this.#o.dataDir }, 'peer server: making a snapshot');
    const t0 = performance.now();
    let failure: Error | undefined;
    let quiescedMs = 0;
    try {
      await this.#hook('quiesce');
      const q0 = performance.now();
      try {
        await createBackup({
          source: this.#o.dataDir,
          transport: new DirTransport(partial),
          recipient,
          signer: { signingKey: this.#cred.publicKey, sign: (d) => sign(null, d, this.#signKey) },
          ...(this.#o.hostLabel !== undefined ? { host: this.#o.hostLabel } : {}),
          backupId,
          updateLatest: false,
          ...(this.#o.chunkSize !== undefined ? { chunkSize: this.#o.chunkSize } : {}),
          // Small packs: a spool is local files, where object count does not matter, and a
          // pack is held in memory until written (32 MiB packs cost the server ~100 MB more).
          packSize: this.#o.packSize ?? SPOOL_PACK_SIZE,
          ...(this.#o.compressionLevel !== undefined ? { compressionLevel: this.#o.compressionLevel } : {}),
          ...(this.#o.workers !== undefined ? { workers: this.#o.workers } : {}),
          ...(log ? { logger: log } : {}),
        });
      } catch (e) {
        throw new SnapshotFailure('snapshot', `snapshot of ${this.#o.dataDir} failed: ${isBackupError(e) || e instanceof Error ? e.message : String(e)}`);
      } finally {
        quiescedMs = Math.round(performance.now() - q0);
      }
    } catch (e) {
      failure = e instanceof Error ? e : new Error(String(e));
    }
    // Release whatever happened: a service left quiesced is an outage.
    try {
      await this.#hook('release');
    } catch (e) {
      log?.error({ err: e instanceof Error ? e.message : String(e) }, 'peer server: release hook failed; the service may still be quiesced');
      failure ??= e instanceof Error ? e : new Error(String(e));
    }
    if (failure !== undefined) {
      await rm(partial, { recursive: true, force: true });
      throw failure;
    }
    const meta: SnapshotMeta = { backupId, recipient, createdAt: new Date().toISOString(), quiescedMs };
    await writeFileAtomic(join(partial, SNAPSHOT_FILE), JSON.stringify(meta) + '\n', { mode: 0o600, durable: false });
    // One sync for the whole spool (objects were written without fsync), so a snapshot survives a host crash as well as a restart.
    await runCommand(['sync', '-f', partial], this.#redactor, { check: false }).catch(() => undefined);
    await rename(partial, join(this.#o.spoolDir, backupId));
    log?.info({ seconds: Number(((performance.now() - t0) / 1000).toFixed(3)), quiescedMs }, 'peer server: snapshot ready');
    await this.#prune(backupId);
    return meta;
  }

  async #meta(backupId: string): Promise<SnapshotMeta | undefined> {
    try {
      return SnapshotMeta.parse(JSON.parse(await readFile(join(this.#o.spoolDir, backupId, SNAPSHOT_FILE), 'utf8')));
    } catch {
      return undefined;
    }
  }

  /** keep the newest `keepSnapshots` complete snapshots */
  async #prune(keepId: string): Promise<void> {
    const ids = (await readdir(this.#o.spoolDir))
      .filter((n) => isBackupId(n) && n !== keepId)
      .sort()
      .reverse();
    for (const id of ids.slice(Math.max(0, (this.#o.keepSnapshots ?? 2) - 1))) {
      if (this.#serving.has(id)) continue;
      await rm(join(this.#o.spoolDir, id), { recursive: true, force: true });
      this.#o.logger?.info({ backupId: id }, 'peer server: dropped an old snapshot from the spool');
    }
  }

  async #waitIdle(id: string): Promise<void> {
    for (let i = 0; i < 100 && this.#serving.has(id); i++) await new Promise((r) => setTimeout(r, 50));
  }

  async #object(req: IncomingMessage, res: ServerResponse, key: string): Promise<void> {
    const keyMatch = OBJECT_KEY.exec(key);
    if (!keyMatch) return reply(res, 404, { error: 'no such object' });
    const id = (keyMatch[1] ?? keyMatch[2])!;
    if ((await this.#meta(id)) === undefined) return reply(res, 404, { error: `snapshot ${id} is not in this peer's spool` });
    const spool = new DirTransport(join(this.#o.spoolDir, id));
    let range: { start: number; end: number } | undefined;
    const rh = req.headers.range;
    if (rh !== undefined) {
      const rangeMatch = /^bytes=(\d+)-(\d+)$/.exec(rh);
      if (!rangeMatch) return reply(res, 400, { error: 'only "bytes=<start>-<end>" ranges are served' });
      range = { start: Number(rangeMatch[1]), end: Number(rangeMatch[2]) };
      if (range.end < range.start) return reply(res, 400, { error: 'empty range' });
    }
    this.#serving.set(id, (this.#serving.get(id) ?? 0) + 1);
    this.stats.gets++;
    this.stats.maxConcurrentGets = Math.max(this.stats.maxConcurrentGets, ++this.#gets);
    try {
      let got;
      try {
        got = await spool.get(key, range);
      } catch (e) {
        const kind = (e as { kind?: string }).kind;
        if (kind === 'not-found') return reply(res, 404, { error: 'no such object' });
        if (kind === 'range') return reply(res, 416, { error: 'range starts past the end of the object' });
        throw e;
      }
      const size = got.objectSize!;
      const start = range?.start ?? 0;
      const end = Math.min(range?.end ?? size - 1, size - 1);
      res.writeHead(range ? 206 : 200, {
        'content-type': 'application/octet-stream',
        'content-length': String(Math.max(0, end - start + 1)),
        ...(range ? { 'content-range': `bytes ${start}-${end}/${size}` } : {}),
      });
      // res.write may queue a piece past the next one: safe with the spool's pieces (each a fresh file read), not with any transport's (transport.ts).
      for await (const part of got.body) {
        if (!res.write(part)) await Promise.race([once(res, 'drain'), once(res, 'close')]);
        if (res.destroyed) break;
      }
      res.end();
    } finally {
      this.#gets--;
      const n = (this.#serving.get(id) ?? 1) - 1;
      if (n <= 0) this.#serving.delete(id);
      else this.#serving.set(id, n);
    }
  }
}

function reply(res: ServerResponse, status: number, body?: unknown, close = false): void {
  const text = body === undefined ? '' : JSON.stringify(body) + '\n';
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(text)), ...(close ? { connection: 'close' } : {}) });
  res.end(text);
}

async function readSmall(req: IncomingMessage, limit: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const p of req as AsyncIterable<Buffer>) {
    n += p.length;
    if (n > limit) throw new Error('request too large');
    parts.push(p);
  }
  return Buffer.concat(parts);
}
