/**
 * Where backup objects live. A backup is a set of named objects (a manifest,
 * packs, a "latest" pointer) under one root; a transport reads byte ranges of
 * them and writes whole ones. S3 implements it (s3-transport.ts); a peer
 * transport (another host serving its backup objects over the IPsec mesh) only
 * has to implement `get` (and `put` if it accepts backups).
 *
 * Keys are relative to the transport's root ("backups/<id>/manifest"); a
 * transport adds its own prefix.
 */
import { BackupError } from './errors.js';

export interface ByteRange {
  /** first byte, inclusive */
  start: number;
  /** last byte, inclusive */
  end: number;
}

export interface GetResult {
  /**
   * the bytes, piece by piece; a piece is only valid until the next one is
   * asked for (a transport may read the next one into the same memory): copy
   * what must outlive that
   */
  body: AsyncIterable<Uint8Array>;
  /** size of the whole object, when the store says (Content-Range / Content-Length) */
  objectSize?: number;
}

export interface Transport {
  /** how to name an object to a person: "s3://bucket/prefix/key"; never includes credentials */
  describe(key: string): string;
  /** read a whole object or a byte range of it; must throw TransportError */
  get(key: string, range?: ByteRange, signal?: AbortSignal): Promise<GetResult>;
  /** write a whole object; must throw TransportError */
  put(key: string, body: Buffer, signal?: AbortSignal): Promise<void>;
}

export interface ListedObject {
  /** relative to the backup set's prefix */
  key: string;
  size: number;
  lastModified: Date;
}

/** A store bosun may also list and delete in (object storage; a peer's snapshot server is read-only). */
export interface ManagedTransport extends Transport {
  /** every object whose key starts with `under`, in key order; must throw TransportError */
  list(under: string, signal?: AbortSignal): Promise<ListedObject[]>;
  /** delete objects (a missing one is not an error); must throw TransportError */
  delete(keys: readonly string[], signal?: AbortSignal): Promise<void>;
}

export function isManaged(transport: Transport): transport is ManagedTransport {
  return typeof (transport as Partial<ManagedTransport>).list === 'function' && typeof (transport as Partial<ManagedTransport>).delete === 'function';
}

export type TransportFailure =
  /** the object does not exist */
  | 'not-found'
  /** the range starts past the end of the object */
  | 'range'
  /** refused for good (403, bad request): retrying will not help */
  | 'fatal'
  /** network trouble, 5xx, throttling, a cut stream: worth retrying */
  | 'transient';

export class TransportError extends Error {
  constructor(
    readonly kind: TransportFailure,
    message: string,
    readonly status?: number,
  ) {
    super(message);
    this.name = 'TransportError';
  }
}

/**
 * Only a TransportError can be transient: a transport wraps whatever its
 * network layer throws (a reset socket, a cut body) into one. Anything else
 * (a corrupt chunk, a full disk) is not cured by asking again.
 */
export function classify(e: unknown): TransportFailure {
  if (e instanceof TransportError) return e.kind;
  return 'fatal';
}

/**
 * What an operator is told when the store fails a request for `key` for good:
 * a BackupError naming the object (missing, truncated, or the transport's
 * reason and that retries were spent). Anything else passes through.
 */
export function storeError(t: Transport, key: string, e: unknown): unknown {
  if (!(e instanceof TransportError)) return e;
  const what = t.describe(key);
  if (e.kind === 'not-found') return new BackupError('missing', `${what} is missing from the store`, { object: what }, { cause: e });
  if (e.kind === 'range') return new BackupError('truncated', `${what} is shorter than the manifest says: truncated`, { object: what }, { cause: e });
  if (e.kind === 'transient') return new BackupError('transport', `${e.message} (gave up after retries)`, { object: what }, { cause: e });
  return new BackupError('transport', e.message, { object: what }, { cause: e });
}

/**
 * An S3 answer (HTTP status and error code) as a TransportError: the one
 * mapping for the SDK's requests (s3-transport.ts) and bosun's own ranged GETs
 * (raw-exchange.ts), so both paths retry and give up alike.
 */
export function httpFailure(status: number | undefined, code: string, what: string): TransportError {
  if (code === 'NoSuchKey' || code === 'NotFound' || status === 404) return new TransportError('not-found', `${what} does not exist`, status);
  if (code === 'InvalidRange' || status === 416) return new TransportError('range', `${what}: the requested range starts past its end`, status);
  if (code === 'AbortError') return new TransportError('fatal', `${what}: aborted`, status);
  if (status !== undefined && status >= 400 && status < 500 && status !== 408 && status !== 429)
    return new TransportError('fatal', `${what}: ${code} (HTTP ${status})`, status);
  return new TransportError('transient', `${what}: ${code}${status !== undefined ? ` (HTTP ${status})` : ''}`, status);
}
