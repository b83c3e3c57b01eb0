import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { DeleteObjectsCommand, GetObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { RawS3Reader } from './raw-get.js';
import type { SigningCredentials } from './sigv4.js';
import { TransportError, httpFailure, type ByteRange, type GetResult, type ListedObject, type ManagedTransport } from './transport.js';

export interface S3Location {
  client: S3Client;
  bucket: string;
  /** prefix of every object of this backup set, e.g. "pg/node-a/"; a missing trailing slash is added */
  prefix?: string;
  /**
   * ranged GETs (a restore's data) on bosun's own keep-alive connections
   * (raw-get.ts) instead of the SDK's, when the client has an explicit
   * endpoint and path-style addressing (default true); other requests always
   * go through the SDK
   */
  directGets?: boolean;
}

export interface S3ClientOptions {
  endpoint?: string;
  region: string;
  forcePathStyle?: boolean;
  credentials?: { accessKeyId: string; secretAccessKey: string };
  /** sockets per host; restore keeps `concurrency` ranged GETs open at once */
  maxSockets?: number;
}

/**
 * An S3 client set up for backups: retries are bosun's (one policy, which
 * resumes a cut download where it stopped, see restore/downloads.ts), so the SDK makes
 * one attempt; CRC checksums are left to AES-GCM, which already authenticates
 * every byte; sockets are kept alive for the many ranged GETs of a restore.
 */
export function createS3Client(o: S3ClientOptions): S3Client {
  // The SDK's multi-line notice about future Node versions would land in every CLI run and the journal; bosun pins its runtime itself.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  const agentOptions = { keepAlive: true, maxSockets: o.maxSockets ?? 64 };
  const https = o.endpoint === undefined || o.endpoint.startsWith('https:');
  return new S3Client({
    ...(o.endpoint !== undefined ? { endpoint: o.endpoint } : {}),
    region: o.region,
    forcePathStyle: o.forcePathStyle ?? true,
    ...(o.credentials ? { credentials: o.credentials } : {}),
    maxAttempts: 1,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    requestHandler: https
      ? { httpsAgent: new HttpsAgent(agentOptions), connectionTimeout: 10_000, requestTimeout: 60_000 }
      : { httpAgent: new HttpAgent(agentOptions), connectionTimeout: 10_000, requestTimeout: 60_000 },
  });
}

function statusOf(e: unknown): number | undefined {
  if (typeof e !== 'object' || e === null || !('$metadata' in e)) return undefined;
  return (e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
}

function nameOf(e: unknown): string {
  if (e instanceof Error) return (e as Error & { code?: string }).code ?? e.name;
  return 'error';
}

/**
 * Turn an SDK error into a TransportError. Only the error's name, HTTP status
 * and the object's address go into the message: SDK errors can carry request
 * details, and credentials must never reach a log.
 */
export function s3Error(e: unknown, what: string): TransportError {
  if (e instanceof TransportError) return e;
  return httpFailure(statusOf(e), nameOf(e), what);
}

/** What raw-get needs of an S3Client's resolved configuration. */
interface ClientConfig {
  endpoint?: () => Promise<{ protocol: string; hostname: string; port?: number; path?: string; query?: Record<string, unknown> }>;
  forcePathStyle?: boolean;
  region: () => Promise<string>;
  credentials: () => Promise<SigningCredentials>;
  /** the SDK's correction for this host's clock, learnt from an earlier response */
  systemClockOffset?: number;
}

export class S3Transport implements ManagedTransport {
  readonly #client: S3Client;
  readonly #bucket: string;
  readonly #prefix: string;
  readonly #directGets: boolean;
  #raw: Promise<RawS3Reader | undefined> | undefined;

  constructor(loc: S3Location) {
    this.#client = loc.client;
    this.#bucket = loc.bucket;
    const p = loc.prefix ?? '';
    this.#prefix = p === '' || p.endsWith('/') ? p : `${p}/`;
    this.#directGets = loc.directGets ?? true;
  }

  /** The direct reader for ranged GETs, when the client's configuration allows one (see S3Location.directGets). */
  #rawReader(): Promise<RawS3Reader | undefined> {
    this.#raw ??= (async () => {
      const cfg = this.#client.config as unknown as ClientConfig;
      if (!this.#directGets || !cfg.endpoint || cfg.forcePathStyle !== true) return undefined;
      const ep = await cfg.endpoint();
      if ((ep.protocol !== 'http:' && ep.protocol !== 'https:') || Object.keys(ep.query ?? {}).length > 0) return undefined;
      return new RawS3Reader({
        endpoint: { protocol: ep.protocol, hostname: ep.hostname, ...(ep.port !== undefined ? { port: ep.port } : {}), path: ep.path ?? '' },
        region: await cfg.region(),
        bucket: this.#bucket,
        credentials: () => cfg.credentials(),
        ...(cfg.systemClockOffset ? { clockOffsetMs: cfg.systemClockOffset } : {}),
      });
    })();
    return this.#raw;
  }

  describe(key: string): string {
    return `s3://${this.#bucket}/${this.#prefix}${key}`;
  }

  async get(key: string, range?: ByteRange, signal?: AbortSignal): Promise<GetResult> {
    const what = this.describe(key);
    if (range) {
      const raw = await this.#rawReader();
      if (raw) return raw.get(this.#prefix + key, range, what, signal);
    }
    try {
      const res = await this.#client.send(
        new GetObjectCommand({ Bucket: this.#bucket, Key: this.#prefix + key, ...(range ? { Range: `bytes=${range.start}-${range.end}` } : {}) }),
        signal ? { abortSignal: signal } : {},
      );
      const body = res.Body as (AsyncIterable<Uint8Array> & { destroy?: () => void }) | undefined;
      if (!body) throw new TransportError('transient', `${what}: empty response`);
      const total = /\/(\d+)$/.exec(res.ContentRange ?? '')?.[1];
      const objectSize = total !== undefined ? Number(total) : range === undefined ? res.ContentLength : undefined;
      return { body: wrapBody(body, what), ...(objectSize !== undefined ? { objectSize } : {}) };
    } catch (e) {
      throw s3Error(e, what);
    }
  }

  async put(key: string, body: Buffer, signal?: AbortSignal): Promise<void> {
    try {
      await this.#client.send(
        new PutObjectCommand({
          Bucket: this.#bucket,
          Key: this.#prefix + key,
          Body: body,
          ContentLength: body.length,
          ContentType: 'application/octet-stream',
        }),
        signal ? { abortSignal: signal } : {},
      );
    } catch (e) {
      throw s3Error(e, this.describe(key));
    }
  }

  async list(under: string, signal?: AbortSignal): Promise<ListedObject[]> {
    const objects: ListedObject[] = [];
    let token: string | undefined;
    do {
      let page;
      try {
        page = await this.#client.send(
          new ListObjectsV2Command({ Bucket: this.#bucket, Prefix: this.#prefix + under, ...(token ? { ContinuationToken: token } : {}) }),
          signal ? { abortSignal: signal } : {},
        );
      } catch (e) {
        throw s3Error(e, this.describe(under));
      }
      for (const o of page.Contents ?? [])
        if (o.Key) objects.push({ key: o.Key.slice(this.#prefix.length), size: o.Size ?? 0, lastModified: o.LastModified ?? new Date(0) });
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return objects;
  }

  async delete(keys: readonly string[], signal?: AbortSignal): Promise<void> {
    for (let i = 0; i < keys.length; i += 1000) {
      const batch = keys.slice(i, i + 1000);
      let answer;
      try {
        answer = await this.#client.send(
          new DeleteObjectsCommand({ Bucket: this.#bucket, Delete: { Objects: batch.map((key) => ({ Key: this.#prefix + key })), Quiet: true } }),
          signal ? { abortSignal: signal } : {},
        );
      } catch (e) {
        throw s3Error(e, this.describe(batch[0]!));
      }
      const failed = answer.Errors?.[0];
      if (failed) throw httpFailure(undefined, failed.Code ?? 'DeleteFailed', `${this.describe((failed.Key ?? '').slice(this.#prefix.length))}: not deleted`);
    }
  }
}

/** A body stream whose errors (a reset connection mid-transfer) become transient TransportErrors. */
async function* wrapBody(body: AsyncIterable<Uint8Array> & { destroy?: () => void }, what: string): AsyncGenerator<Uint8Array> {
  try {
    for await (const chunk of body) yield chunk;
  } catch (e) {
    throw new TransportError('transient', `${what}: download cut (${nameOf(e)})`);
  } finally {
    body.destroy?.();
  }
}
