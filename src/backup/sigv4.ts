/**
 * AWS Signature Version 4 for the one request bosun makes outside the SDK: an
 * S3 GET of an object (optionally a byte range), path-style, no query string,
 * no body. See https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html.
 *
 * The secret never leaves this module except as an HMAC: only the derived
 * signing key (per day, region and service) is cached.
 */
import { createHash, createHmac } from 'node:crypto';

export interface SigningCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

/** SHA-256 of the empty payload: a GET sends no body. */
export const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

/** RFC 3986 encoding of one path segment as S3 expects it: unreserved characters stay, every other byte is %XX (upper case). */
export function encodeSegment(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/** "/bucket/key/with/slashes", each segment encoded once (S3 does not double-encode). */
export function objectPath(basePath: string, bucket: string, key: string): string {
  const base = basePath.replace(/\/+$/, '');
  return `${base}/${encodeSegment(bucket)}/${key.split('/').map(encodeSegment).join('/')}`;
}

/** 20150830T123600Z */
export function amzDate(d: Date): string {
  return d
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d{3}/, '');
}

export class SigV4Signer {
  #keyFor = '';
  #key: Buffer | undefined;

  constructor(
    readonly region: string,
    readonly service = 's3',
  ) {}

  #signingKey(secret: string, day: string): Buffer {
    // The cache is keyed by a hash of the secret, so rotated credentials get a fresh key.
    const id = `${day}/${createHash('sha256').update(secret).digest('base64')}`;
    if (this.#key && this.#keyFor === id) return this.#key;
    const kDate = createHmac('sha256', `AWS4${secret}`).update(day).digest();
    const kRegion = createHmac('sha256', kDate).update(this.region).digest();
    const kService = createHmac('sha256', kRegion).update(this.service).digest();
    this.#key = createHmac('sha256', kService).update('aws4_request').digest();
    this.#keyFor = id;
    return this.#key;
  }

  /**
   * The headers to send with a GET of `path` on `host` ("host" or
   * "host:port" as it goes into the Host header): the given ones plus
   * x-amz-date, x-amz-content-sha256, the session token if any, and
   * Authorization. Every given header is signed.
   */
  signGet(host: string, path: string, headers: Record<string, string>, creds: SigningCredentials, now = new Date()): Record<string, string> {
    const stamp = amzDate(now);
    const day = stamp.slice(0, 8);
    const all: Record<string, string> = { ...lowerKeys(headers), host, 'x-amz-content-sha256': EMPTY_SHA256, 'x-amz-date': stamp };
    if (creds.sessionToken) all['x-amz-security-token'] = creds.sessionToken;
    const names = Object.keys(all).sort();
    const canonicalHeaders = names.map((n) => `${n}:${all[n]!.trim().replace(/\s+/g, ' ')}\n`).join('');
    const signedHeaders = names.join(';');
    const canonicalRequest = ['GET', path, '', canonicalHeaders, signedHeaders, EMPTY_SHA256].join('\n');
    const scope = `${day}/${this.region}/${this.service}/aws4_request`;
    const toSign = ['AWS4-HMAC-SHA256', stamp, scope, createHash('sha256').update(canonicalRequest).digest('hex')].join('\n');
    const signature = createHmac('sha256', this.#signingKey(creds.secretAccessKey, day)).update(toSign).digest('hex');
    const out: Record<string, string> = { ...all };
    delete out.host;
    out.authorization = `AWS4-HMAC-SHA256 Credential=${creds.accessKeyId}/${scope}, SignedHeaders=${signedHeaders}, Signature=${signature}`;
    return out;
  }
}

function lowerKeys(h: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(h)) out[k.toLowerCase()] = v;
  return out;
}
