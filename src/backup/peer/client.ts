import type { KeyObject } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { Agent, request } from 'node:https';
import type { TLSSocket } from 'node:tls';
import type { Redactor } from '../../secrets/redact.js';
import type { Logger } from '../../log.js';
import { BackupError, errnoOf, isBackupError, type BackupFailure } from '../errors.js';
import { readJournal } from '../journal.js';
import type { Progress } from '../progress.js';
import { restoreFromObjectStorage, trustSigners, type RestoreOptions, type RestoreResult } from '../restore/index.js';
import { withRetry, type RetryPolicy } from '../retry.js';
import { chooseLayout } from '../target.js';
import { TransportError, type ByteRange, type GetResult, type Transport } from '../transport.js';
import { asCredential, certificateKey, type TlsCredential } from './cert.js';
import { PEER_API, type SnapshotReply, type SnapshotRequest } from './server.js';

export interface PeerAddress {
  /** the peer's mesh address (IPv6 or IPv4 literal, or a name) */
  host: string;
  port: number;
  /** the peer's Ed25519 host key, "ed25519:…": the only key it may present */
  key: string;
  /** node name, for messages */
  name?: string;
}

/** Retries against a peer: a dead peer is given up on in a few seconds, so the phase can fall back soon. */
export const PEER_RETRY: RetryPolicy = { attempts: 4, baseDelayMs: 250, maxDelayMs: 2000 };

/** The peer presented a key other than the pinned one: never retried, never trusted. */
export class PeerKeyError extends TransportError {
  constructor(message: string) {
    super('fatal', message);
    this.name = 'PeerKeyError';
  }
}

function label(p: PeerAddress): string {
  const at = p.host.includes(':') ? `[${p.host}]:${p.port}` : `${p.host}:${p.port}`;
  return p.name !== undefined ? `peer ${p.name} (${at})` : `peer ${at}`;
}

/**
 * Reads a peer's spooled snapshot objects over HTTPS (TLS 1.3, client
 * certificate from this host's identity key, the peer's key pinned). A
 * keep-alive agent with several sockets lets the restore pipeline keep many
 * ranged GETs in flight over parallel connections.
 */
export class PeerTransport implements Transport {
  readonly #agent: Agent;
  readonly #checked = new WeakSet<object>();

  constructor(
    readonly peer: PeerAddress,
    readonly credential: TlsCredential,
    opts: { sockets?: number; idleTimeoutMs?: number } = {},
  ) {
    // No TLS session resumption: every connection is a full handshake, so every socket carries the peer's certificate to pin.
    this.#agent = new Agent({
      keepAlive: true,
      maxCachedSessions: 0,
      maxSockets: opts.sockets ?? 8,
      key: credential.key,
      cert: credential.cert,
      rejectUnauthorized: false,
      minVersion: 'TLSv1.3',
    });
    this.idleTimeoutMs = opts.idleTimeoutMs ?? 30_000;
  }

  readonly idleTimeoutMs: number;

  describe(key: string): string {
    return `${label(this.peer)} /${key}`;
  }

  /** throws PeerKeyError unless the socket's peer presented the pinned key */
  #pin(socket: TLSSocket): void {
    if (this.#checked.has(socket)) return;
    const got = certificateKey(socket.getPeerX509Certificate());
    if (got !== this.peer.key) {
      throw new PeerKeyError(
        `${label(this.peer)} presented ${got ?? 'no Ed25519 key'}, but the spec pins its host key ${this.peer.key}; refusing to talk to it`,
      );
    }
    this.#checked.add(socket);
  }

  /** One HTTP exchange; resolves once the headers are in and the peer's key has been checked. */
  send(
    method: string,
    path: string,
    opts: { body?: Buffer; headers?: Record<string, string>; timeoutMs?: number; signal?: AbortSignal } = {},
  ): Promise<IncomingMessage> {
    const what = `${label(this.peer)} ${method} ${path}`;
    return new Promise((resolve, reject) => {
      const req = request({
        host: this.peer.host,
        port: this.peer.port,
        method,
        path,
        agent: this.#agent,
        headers: { ...(opts.headers ?? {}), ...(opts.body ? { 'content-type': 'application/json', 'content-length': String(opts.body.length) } : {}) },
        ...(opts.signal ? { signal: opts.signal } : {}),
      });
      req.setTimeout(opts.timeoutMs ?? this.idleTimeoutMs, () =>
        req.destroy(new TransportError('transient', `${what}: no answer for ${Math.round((opts.timeoutMs ?? this.idleTimeoutMs) / 1000)} s`)),
      );
      // Nothing (not even the request line) is sent before the peer's key is checked:
      // a ClientRequest writes its headers only on end().
      req.on('socket', (socket) => {
        const tls = socket as TLSSocket;
        const check = (): void => {
          try {
            this.#pin(tls);
          } catch (e) {
            req.destroy(e as Error);
            return;
          }
          req.end(opts.body);
        };
        if (this.#checked.has(tls) || (tls.encrypted && tls.getPeerX509Certificate() !== undefined)) check();
        else tls.once('secureConnect', check);
      });
      req.on('error', (e) => reject(peerNetError(e, what)));
      req.on('response', (res) => {
        try {
          this.#pin(res.socket as TLSSocket);
        } catch (e) {
          res.destroy();
          reject(e instanceof Error ? e : new Error(String(e)));
          return;
        }
        resolve(res);
      });
    });
  }

  async get(key: string, range?: ByteRange, signal?: AbortSignal): Promise<GetResult> {
    const what = this.describe(key);
    const res = await this.send('GET', `${PEER_API}/objects/${key}`, {
      headers: range ? { range: `bytes=${range.start}-${range.end}` } : {},
      ...(signal ? { signal } : {}),
    });
    const status = res.statusCode ?? 0;
    if (status === 200 || status === 206) {
      const total = /\/(\d+)$/.exec(String(res.headers['content-range'] ?? ''))?.[1];
      const objectSize = total !== undefined ? Number(total) : range === undefined ? Number(res.headers['content-length']) : undefined;
      return { body: wrapBody(res, what), ...(objectSize !== undefined && Number.isFinite(objectSize) ? { objectSize } : {}) };
    }
    const msg = await errorText(res);
    if (status === 404) throw new TransportError('not-found', `${what} does not exist (${msg})`, status);
    if (status === 416) throw new TransportError('range', `${what}: the requested range starts past its end`, status);
    if (status === 403) throw new PeerKeyError(`${label(this.peer)} refused this host's key ${this.credential.publicKey}: ${msg}`);
    if (status >= 500) throw new TransportError('transient', `${what}: HTTP ${status} (${msg})`, status);
    throw new TransportError('fatal', `${what}: HTTP ${status} (${msg})`, status);
  }

  put(key: string): Promise<void> {
    return Promise.reject(new TransportError('fatal', `${this.describe(key)}: a peer does not accept uploads`));
  }

  close(): void {
    this.#agent.destroy();
  }
}

function peerNetError(e: unknown, what: string): Error {
  if (e instanceof TransportError) return e;
  if (e instanceof Error && e.name === 'AbortError') return new TransportError('fatal', `${what}: aborted`);
  const code = errnoOf(e) ?? (e instanceof Error ? e.message : String(e));
  return new TransportError('transient', `${what}: ${code}`);
}

async function errorText(res: IncomingMessage): Promise<string> {
  const parts: Buffer[] = [];
  let n = 0;
  try {
    for await (const p of res as AsyncIterable<Buffer>) {
      if (n < 4096) parts.push(p);
      n += p.length;
    }
    const j = JSON.parse(Buffer.concat(parts).toString('utf8')) as { error?: unknown };
    return typeof j.error === 'string' ? j.error : 'no reason given';
  } catch {
    return 'no reason given';
  }
}

async function* wrapBody(res: IncomingMessage, what: string): AsyncGenerator<Uint8Array> {
  try {
    for await (const chunk of res as AsyncIterable<Buffer>) yield chunk;
  } catch (e) {
    throw new TransportError('transient', `${what}: download cut (${errnoOf(e) ?? (e instanceof Error ? e.message : String(e))})`);
  } finally {
    res.destroy();
  }
}

/** Where a peer restore stopped: what a restore phase needs to decide on a fallback. */
export type PeerStage = 'target' | 'connect' | 'auth' | 'snapshot' | 'transfer';

/**
 * A restore from a peer failed. `fallback` is true when restoring from object
 * storage instead can still work (the peer is down, refused us, presented the
 * wrong key, could not snapshot, or served bad data); false when the problem is
 * on this side (the target is not empty) or the restore was aborted. `reason`
 * is the BackupFailure of the underlying error, `stage` where it happened.
 */
export class PeerRestoreError extends BackupError {
  constructor(
    reason: BackupFailure,
    readonly stage: PeerStage,
    readonly fallback: boolean,
    message: string,
    details: Record<string, unknown>,
    options?: ErrorOptions,
  ) {
    super(reason, message, { stage, fallback, ...details }, options);
    this.name = 'PeerRestoreError';
  }
}

export function isPeerRestoreError(e: unknown): e is PeerRestoreError {
  return e instanceof PeerRestoreError;
}

export interface PeerRestoreOptions {
  peer: PeerAddress;
  /** this host's Ed25519 identity private key (KeyObject or PKCS#8 PEM), or a credential made from it */
  identity: KeyObject | string | TlsCredential;
  /** this host's X25519 public key ("x25519:…"): the peer seals the snapshot's data key to it */
  recipient: string;
  /** opens the sealed data key (the host identity's `open`) */
  openDataKey: RestoreOptions['openDataKey'];
  target: string;
  markerPath?: string;
  logger?: Logger;
  redactor?: Redactor;
  onProgress?: (p: Progress) => void;
  bandwidthLimit?: number;
  /** ranged GETs in flight, over as many TLS connections (default 8) */
  concurrency?: number;
  retry?: RetryPolicy;
  workers?: number;
  verifyFiles?: boolean;
  preserveOwner?: boolean;
  checkpointIntervalMs?: number;
  /** how long the peer may take to quiesce, snapshot and release (default 2 h) */
  snapshotTimeoutMs?: number;
  /** ask for this snapshot (if the peer still has it, sealed to this host) instead of a new one; by default an interrupted earlier run's snapshot is asked for */
  reuseSnapshot?: string;
  /** tell the peer to drop the snapshot from its spool once restored (default true) */
  releaseSnapshot?: boolean;
  signal?: AbortSignal;
  /** any other option of the restore pipeline (e.g. markerExtra), passed through as is */
  restoreOptions?: Omit<Partial<RestoreOptions>, 'transport' | 'client' | 'bucket' | 'prefix' | 'backupId' | 'target' | 'openDataKey' | 'verifyManifest'>;
}

export interface PeerRestoreResult extends RestoreResult {
  peer: string;
  /** the peer served the snapshot an interrupted earlier run had started on */
  snapshotReused: boolean;
  /** how long the peer's service was quiesced for the snapshot */
  quiescedMs: number;
}

function causeChain(e: unknown): unknown[] {
  const out: unknown[] = [];
  for (let c: unknown = e; c !== undefined && out.length < 8; c = (c as { cause?: unknown }).cause) out.push(c);
  return out;
}

/**
 * Restore `target` from a peer: check the target (before the peer is asked to
 * quiesce anything), ask the peer for a snapshot sealed to this host (or the
 * one an interrupted earlier run was restoring, if the peer still has it),
 * then run the object-storage restore pipeline against the peer: parallel
 * ranged GETs, every chunk verified, journal, staging and rename, marker.
 * Any failure is a PeerRestoreError saying whether a fallback makes sense.
 */
export async function restoreFromPeer(options: PeerRestoreOptions): Promise<PeerRestoreResult> {
  const credential = asCredential(options.identity);
  options.redactor?.add(credential.key);
  const who = label(options.peer);
  const details = { peer: options.peer.name ?? options.peer.host, address: `${options.peer.host}:${options.peer.port}` };
  const retry = options.retry ?? PEER_RETRY;
  const log = options.logger?.child({ peer: options.peer.name ?? options.peer.host });
  const concurrency = options.concurrency ?? 8;
  const transport = new PeerTransport(options.peer, credential, { sockets: concurrency + 1 });
  try {
    let layout;
    try {
      layout = await chooseLayout(options.target);
    } catch (e) {
      throw new PeerRestoreError(isBackupError(e) ? e.reason : 'target', 'target', false, e instanceof Error ? e.message : String(e), details, { cause: e });
    }
    const journal = await readJournal(layout.journal);
    const reuse = options.reuseSnapshot ?? journal?.backupId;
    const request: SnapshotRequest = { recipient: options.recipient, ...(reuse !== undefined ? { reuse } : {}) };

    let snap: SnapshotReply;
    try {
      snap = await withRetry(
        retry,
        async () => {
          const res = await transport.send('POST', `${PEER_API}/snapshots`, {
            body: Buffer.from(JSON.stringify(request)),
            timeoutMs: options.snapshotTimeoutMs ?? 2 * 3600_000,
            ...(options.signal ? { signal: options.signal } : {}),
          });
          const status = res.statusCode ?? 0;
          if (status === 200) {
            const parts: Buffer[] = [];
            for await (const part of res as AsyncIterable<Buffer>) parts.push(part);
            return JSON.parse(Buffer.concat(parts).toString('utf8')) as SnapshotReply;
          }
          const msg = await errorText(res);
          if (status === 403) throw new PeerKeyError(`${who} refused this host's key ${credential.publicKey}: ${msg}`);
          if (status === 500) throw new BackupError('source', `${who} could not make a snapshot: ${msg}`);
          if (status === 503) throw new TransportError('transient', `${who}: busy (${msg})`);
          throw new TransportError('fatal', `${who} answered HTTP ${status}: ${msg}`);
        },
        {
          ...(options.signal ? { signal: options.signal } : {}),
          onRetry: (e, n, ms) =>
            log?.warn({ err: e instanceof Error ? e.message : String(e), failures: n, delayMs: ms }, 'restore from peer: snapshot request failed, retrying'),
        },
      );
    } catch (e) {
      if (e instanceof PeerKeyError) throw new PeerRestoreError('key', 'auth', true, e.message, details, { cause: e });
      if (isBackupError(e)) throw new PeerRestoreError(e.reason, 'snapshot', true, e.message, details, { cause: e });
      const aborted = options.signal?.aborted === true;
      const msg = e instanceof Error ? e.message : String(e);
      throw new PeerRestoreError('transport', 'connect', !aborted, `${who} is unreachable or stopped answering: ${msg}`, details, { cause: e });
    }
    log?.info(
      { backupId: snap.backupId, reused: snap.reused, quiescedMs: snap.quiescedMs },
      snap.reused ? 'restore from peer: continuing on the snapshot an earlier run started' : 'restore from peer: the peer made a snapshot',
    );

    let result: RestoreResult;
    try {
      result = await restoreFromObjectStorage({
        ...options.restoreOptions,
        transport,
        backupId: snap.backupId,
        target: options.target,
        openDataKey: options.openDataKey,
        // The manifest must be signed by the very key the TLS session was pinned to.
        verifyManifest: trustSigners([options.peer.key]),
        retry,
        concurrency,
        ...(options.markerPath !== undefined ? { markerPath: options.markerPath } : {}),
        ...(options.logger ? { logger: options.logger } : {}),
        ...(options.redactor ? { redactor: options.redactor } : {}),
        ...(options.onProgress ? { onProgress: options.onProgress } : {}),
        ...(options.bandwidthLimit !== undefined ? { bandwidthLimit: options.bandwidthLimit } : {}),
        ...(options.workers !== undefined ? { workers: options.workers } : {}),
        ...(options.verifyFiles !== undefined ? { verifyFiles: options.verifyFiles } : {}),
        ...(options.preserveOwner !== undefined ? { preserveOwner: options.preserveOwner } : {}),
        ...(options.checkpointIntervalMs !== undefined ? { checkpointIntervalMs: options.checkpointIntervalMs } : {}),
        ...(options.signal ? { signal: options.signal } : {}),
      });
    } catch (e) {
      const chain = causeChain(e);
      const msg = e instanceof Error ? e.message : String(e);
      if (chain.some((c) => c instanceof PeerKeyError))
        throw new PeerRestoreError('key', 'auth', true, `restore from ${who} failed: ${msg}`, details, { cause: e });
      const reason: BackupFailure = isBackupError(e) ? e.reason : 'transport';
      const fallback = reason !== 'target' && options.signal?.aborted !== true;
      throw new PeerRestoreError(
        reason,
        reason === 'target' ? 'target' : 'transfer',
        fallback,
        `restore from ${who} failed: ${msg}`,
        { ...details, backupId: snap.backupId },
        { cause: e },
      );
    }
    if (options.releaseSnapshot ?? true) {
      try {
        const res = await transport.send('DELETE', `${PEER_API}/snapshots/${snap.backupId}`, { timeoutMs: 10_000 });
        res.resume();
      } catch (e) {
        log?.warn(
          { err: e instanceof Error ? e.message : String(e) },
          'restore from peer: could not tell the peer to drop its snapshot (it keeps it until the next one)',
        );
      }
    }
    return { ...result, peer: options.peer.name ?? options.peer.host, snapshotReused: snap.reused, quiescedMs: snap.quiescedMs };
  } finally {
    transport.close();
  }
}
