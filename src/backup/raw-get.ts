/**
 * Ranged GETs of S3 objects on plain HTTP/1.1 keep-alive connections whose
 * socket reads land in one buffer per connection, reused for every read.
 *
 * Why not the SDK for these: a restore moves gigabytes through ranged GETs.
 * Through node's HTTP client every socket read becomes a fresh Buffer (its
 * memory is malloc'd and only returned once V8 collects the Buffer, so tens
 * of MiB of spent read buffers pile up between collections) and passes
 * through the HTTP parser, an IncomingMessage and the SDK's stream wrapper.
 * Here a read is handed straight to the consumer as a view of the
 * connection's buffer, and the connection reads again only when the consumer
 * asks for the next piece: no allocation per read, and TCP flow control does
 * the backpressure. The SDK still does everything else (credentials, small
 * objects, uploads).
 *
 * The contract this adds to Transport.get's body (see transport.ts): a piece
 * is valid until the consumer asks for the next one.
 */
import { connect as netConnect, isIP, type Socket } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions } from 'node:tls';
import { SigV4Signer, objectPath, type SigningCredentials } from './sigv4.js';
import { TransportError, type ByteRange, type GetResult } from './transport.js';

export interface RawEndpoint {
  protocol: 'http:' | 'https:';
  hostname: string;
  port?: number;
  /** a base path in front of /bucket/key ("" or "/"), as in http://host:9000/base */
  path: string;
}

export interface RawGetOptions {
  endpoint: RawEndpoint;
  region: string;
  bucket: string;
  credentials: () => Promise<SigningCredentials>;
  /** bytes per socket read at most (default 256 KiB) */
  readBufferSize?: number;
  connectTimeoutMs?: number;
  /** how long a response may stay silent while bosun waits for it (default 60 s) */
  readTimeoutMs?: number;
  /** idle connections kept for reuse (default 64), each for at most idleMs (default 4 s) */
  maxIdle?: number;
  idleMs?: number;
  /** extra TLS options (a CA for tests) */
  tls?: { ca?: string | Buffer };
  /** the store's clock minus this host's, in ms, to start with (the SDK's systemClockOffset) */
  clockOffsetMs?: number;
}

const HEAD_LIMIT = 64 * 1024;
const ERROR_BODY_LIMIT = 16 * 1024;

/** One keep-alive connection; `exchange` is the request using it, if any. */
class Connection {
  readonly socket: Socket;
  exchange: Exchange | undefined;
  dead = false;
  idleTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly buf: Buffer,
    make: (onread: { buffer: Buffer; callback: (n: number) => boolean }) => Socket,
  ) {
    this.socket = make({ buffer: buf, callback: (n) => this.#read(n) });
    this.socket.on('error', (e) => this.#lost(e));
    this.socket.on('end', () => this.#lost(undefined));
    this.socket.on('close', () => this.#lost(undefined));
  }

  #read(n: number): boolean {
    if (this.exchange) return this.exchange.onRead(n);
    // Bytes nobody asked for: the connection is out of step; drop it.
    this.destroy();
    return false;
  }

  #lost(e: NodeJS.ErrnoException | undefined): void {
    this.dead = true;
    this.exchange?.onLost(e);
  }

  destroy(): void {
    this.dead = true;
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.socket.destroy();
  }
}

/** A reused connection that the server had closed: the request goes again on a fresh one. */
class StaleConnection extends Error {}

/** Parse "HTTP/1.1 206 Partial Content\r\nName: value\r\n..." (without the blank line). */
function parseHead(text: string): { status: number; headers: Map<string, string> } | undefined {
  const lines = text.split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3})(?: .*)?$/.exec(lines[0] ?? '');
  if (!m) return undefined;
  const headers = new Map<string, string>();
  for (const line of lines.slice(1)) {
    const i = line.indexOf(':');
    if (i <= 0) return undefined;
    const name = line.slice(0, i).trim().toLowerCase();
    const value = line.slice(i + 1).trim();
    headers.set(name, headers.has(name) ? `${headers.get(name)!}, ${value}` : value);
  }
  return { status: Number(m[1]), headers };
}

/** The same mapping as the SDK path's (s3-transport.ts s3Error): by S3 error code and HTTP status. */
export function httpFailure(status: number | undefined, code: string, what: string): TransportError {
  if (code === 'NoSuchKey' || code === 'NotFound' || status === 404) return new TransportError('not-found', `${what} does not exist`, status);
  if (code === 'InvalidRange' || status === 416) return new TransportError('range', `${what}: the requested range starts past its end`, status);
  if (code === 'AbortError') return new TransportError('fatal', `${what}: aborted`, status);
  if (status !== undefined && status >= 400 && status < 500 && status !== 408 && status !== 429) return new TransportError('fatal', `${what}: ${code} (HTTP ${status})`, status);
  return new TransportError('transient', `${what}: ${code}${status !== undefined ? ` (HTTP ${status})` : ''}`, status);
}

/**
 * One GET on one connection: the response head, then the body as an async
 * iterator of views of the connection's read buffer.
 */
class Exchange implements AsyncIterableIterator<Uint8Array> {
  #state: 'head' | 'body' | 'error-body' | 'done' | 'failed' = 'head';
  #head: Buffer | undefined;
  #status = 0;
  #serverDate: string | undefined;
  #errorBody: Buffer[] = [];
  #errorBodyLength = 0;
  #contentLength = 0;
  #received = 0;
  #pending: Buffer | undefined;
  #waiter: { resolve: (r: IteratorResult<Uint8Array>) => void; reject: (e: unknown) => void } | undefined;
  #error: Error | undefined;
  #gotBytes = false;
  #keepAlive = true;
  #waitingSince: number | undefined = performance.now();
  readonly #timer: NodeJS.Timeout;
  readonly #onAbort: () => void;
  readonly headPromise: Promise<GetResult>;
  #headResolve!: (r: GetResult) => void;
  #headReject!: (e: unknown) => void;

  constructor(
    readonly conn: Connection,
    readonly reused: boolean,
    readonly what: string,
    readonly range: ByteRange | undefined,
    readonly release: (c: Connection) => void,
    readonly timeoutMs: number,
    readonly signal: AbortSignal | undefined,
    /** told the server's clock minus ours when the server refuses the request's time */
    readonly onSkew: (ms: number) => void = () => undefined,
  ) {
    this.headPromise = new Promise((resolve, reject) => {
      this.#headResolve = resolve;
      this.#headReject = reject;
    });
    this.headPromise.catch(() => undefined);
    this.#timer = setTimeout(() => this.#tick(), timeoutMs);
    this.#timer.unref();
    this.#onAbort = (): void => this.#fail(new TransportError('fatal', `${what}: aborted`));
    signal?.addEventListener('abort', this.#onAbort, { once: true });
    conn.exchange = this;
  }

  #tick(): void {
    if (this.#state === 'done' || this.#state === 'failed') return;
    if (this.#waitingSince !== undefined && performance.now() - this.#waitingSince >= this.timeoutMs) {
      this.#fail(new TransportError('transient', `${this.what}: no data for ${Math.round(this.timeoutMs / 1000)} s`));
      return;
    }
    this.#timer.refresh();
  }

  /** Bytes 0..n of the connection's buffer arrived. Returns whether the connection should read on. */
  onRead(n: number): boolean {
    this.#gotBytes = true;
    const data = this.conn.buf.subarray(0, n);
    if (this.#state === 'head') return this.#onHead(data);
    if (this.#state === 'body') {
      this.#piece(data);
      return false;
    }
    if (this.#state === 'error-body') {
      this.#collectError(data);
      return this.#state === 'error-body';
    }
    // Bytes after the end of a response (or after a failure): the connection is out of step.
    this.conn.destroy();
    return false;
  }

  #onHead(data: Buffer): boolean {
    const joined = this.#head ? Buffer.concat([this.#head, data]) : data;
    const end = joined.indexOf('\r\n\r\n');
    if (end < 0) {
      if (joined.length > HEAD_LIMIT) {
        this.#fail(new TransportError('transient', `${this.what}: the response head is longer than ${HEAD_LIMIT} bytes`));
        return false;
      }
      this.#head = Buffer.from(joined);
      return true;
    }
    const parsed = parseHead(joined.toString('latin1', 0, end));
    // Where the body starts in this read.
    const bodyAt = end + 4 - (this.#head?.length ?? 0);
    this.#head = undefined;
    if (!parsed) {
      this.#fail(new TransportError('transient', `${this.what}: malformed HTTP response`));
      return false;
    }
    const { status, headers } = parsed;
    this.#status = status;
    this.#serverDate = headers.get('date');
    if ((headers.get('connection') ?? '').toLowerCase().includes('close')) this.#keepAlive = false;
    const rest = data.subarray(bodyAt);
    const cl = headers.get('content-length');
    const length = cl !== undefined && /^\d+$/.test(cl) ? Number(cl) : undefined;
    if (status < 200 || status > 299) {
      this.#keepAlive = false;
      this.#contentLength = length ?? ERROR_BODY_LIMIT;
      this.#state = 'error-body';
      this.#collectError(rest);
      return this.#state === 'error-body';
    }
    if (length === undefined || headers.has('transfer-encoding')) {
      this.#fail(new TransportError('transient', `${this.what}: the response has no Content-Length`));
      return false;
    }
    let objectSize: number | undefined;
    if (this.range) {
      const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(headers.get('content-range') ?? '');
      if (status !== 206 || !m || Number(m[1]) !== this.range.start || Number(m[2]) - Number(m[1]) + 1 !== length) {
        this.#fail(new TransportError('transient', `${this.what}: asked for bytes ${this.range.start}-${this.range.end}, got HTTP ${status} ${headers.get('content-range') ?? 'without Content-Range'}`));
        return false;
      }
      if (m[3] !== '*') objectSize = Number(m[3]);
    } else {
      objectSize = length;
    }
    this.#contentLength = length;
    this.#state = 'body';
    this.#waitingSince = undefined;
    this.#headResolve(objectSize !== undefined ? { body: this, objectSize } : { body: this });
    if (rest.length > 0) this.#piece(rest);
    return false;
  }

  #collectError(data: Buffer): void {
    const take = Math.min(data.length, this.#contentLength - this.#errorBodyLength, ERROR_BODY_LIMIT - this.#errorBodyLength);
    if (take > 0) {
      this.#errorBody.push(Buffer.from(data.subarray(0, take)));
      this.#errorBodyLength += take;
    }
    // Done at Content-Length, at the limit, or (no Content-Length) at the last chunk of a chunked body.
    const chunkedEnd = this.#contentLength === ERROR_BODY_LIMIT && data.subarray(Math.max(0, data.length - 5)).toString('latin1') === '0\r\n\r\n';
    if (this.#errorBodyLength >= this.#contentLength || this.#errorBodyLength >= ERROR_BODY_LIMIT || chunkedEnd) this.#finishError();
  }

  #finishError(): void {
    const text = Buffer.concat(this.#errorBody).toString('utf8');
    // Only the S3 error code goes into the message: the body may echo request details.
    const code = /<Code>([A-Za-z0-9.]{1,64})<\/Code>/.exec(text)?.[1] ?? `HTTP ${this.#status}`;
    const serverTime = this.#serverDate !== undefined ? Date.parse(this.#serverDate) : NaN;
    if (code === 'RequestTimeTooSkewed' && Number.isFinite(serverTime)) {
      // This host's clock is off: sign by the server's from now on, and let the caller try again (as the SDK does).
      this.onSkew(serverTime - Date.now());
      this.#fail(new TransportError('transient', `${this.what}: ${code} (HTTP ${this.#status}; signing by the store's clock from now on)`, this.#status));
      return;
    }
    this.#fail(httpFailure(this.#status, code, this.what));
  }

  #piece(p: Buffer): void {
    if (this.#received + p.length > this.#contentLength) {
      this.#fail(new TransportError('transient', `${this.what}: the server sent more than the ${this.#contentLength} bytes it announced`));
      return;
    }
    this.#received += p.length;
    this.#waitingSince = undefined;
    if (this.#waiter) {
      const w = this.#waiter;
      this.#waiter = undefined;
      w.resolve({ value: p, done: false });
    } else {
      this.#pending = p;
    }
  }

  onLost(e: NodeJS.ErrnoException | undefined): void {
    if (this.#state === 'done' || this.#state === 'failed') return;
    if (this.#state === 'error-body') {
      this.#finishError();
      return;
    }
    if (this.#state === 'body' && this.#received >= this.#contentLength) {
      // The whole body is in; the server closed the connection after it (it is not reused).
      this.#keepAlive = false;
      return;
    }
    if (this.#state === 'head' && this.reused && !this.#gotBytes) {
      this.#fail(new StaleConnection());
      return;
    }
    const code = e?.code;
    const where = this.#state === 'head' ? 'before the response' : `at byte ${this.#received} of ${this.#contentLength}`;
    this.#fail(new TransportError('transient', `${this.what}: download cut ${where} (${code ?? 'connection closed'})`));
  }

  #fail(e: Error): void {
    if (this.#state === 'done' || this.#state === 'failed') return;
    this.#state = 'failed';
    this.#error = e;
    this.#pending = undefined;
    this.#cleanup();
    this.conn.destroy();
    this.#headReject(e);
    if (this.#waiter) {
      const w = this.#waiter;
      this.#waiter = undefined;
      w.reject(e);
    }
  }

  #cleanup(): void {
    clearTimeout(this.#timer);
    this.signal?.removeEventListener('abort', this.#onAbort);
    if (this.conn.exchange === this) this.conn.exchange = undefined;
  }

  /** The whole body was taken and the consumer is done with the last piece: the connection can serve another request. */
  #finish(): void {
    if (this.#state !== 'body') return;
    this.#state = 'done';
    this.#cleanup();
    if (this.#keepAlive && !this.conn.dead) this.release(this.conn);
    else this.conn.destroy();
  }

  next(): Promise<IteratorResult<Uint8Array>> {
    if (this.#error) return Promise.reject(this.#error);
    if (this.#pending) {
      const value = this.#pending;
      this.#pending = undefined;
      return Promise.resolve({ value, done: false });
    }
    if (this.#state === 'done' || this.#received >= this.#contentLength) {
      this.#finish();
      return Promise.resolve({ value: undefined, done: true });
    }
    // The consumer is done with the last piece: the buffer may be read into again.
    this.#waitingSince = performance.now();
    this.conn.socket.resume();
    return new Promise((resolve, reject) => (this.#waiter = { resolve, reject }));
  }

  return(): Promise<IteratorResult<Uint8Array>> {
    if (this.#state === 'body' && this.#received >= this.#contentLength && !this.#pending) this.#finish();
    else if (this.#state !== 'done' && this.#state !== 'failed') {
      // Left before the end: the rest of the body is still on the wire.
      this.#state = 'failed';
      this.#error = new TransportError('fatal', `${this.what}: the reader stopped early`);
      this.#cleanup();
      this.conn.destroy();
    }
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<Uint8Array> {
    return this;
  }
}

/** GETs of one bucket on one endpoint, over a pool of keep-alive connections. */
export class RawS3Reader {
  readonly #o: RawGetOptions;
  readonly #signer: SigV4Signer;
  readonly #idle: Connection[] = [];
  readonly #hostHeader: string;
  readonly #port: number;
  #closed = false;
  #offsetMs: number;

  constructor(o: RawGetOptions) {
    this.#o = o;
    this.#offsetMs = o.clockOffsetMs ?? 0;
    this.#signer = new SigV4Signer(o.region);
    const https = o.endpoint.protocol === 'https:';
    this.#port = o.endpoint.port ?? (https ? 443 : 80);
    const host = isIP(o.endpoint.hostname) === 6 ? `[${o.endpoint.hostname}]` : o.endpoint.hostname;
    this.#hostHeader = o.endpoint.port === undefined || this.#port === (https ? 443 : 80) ? host : `${host}:${this.#port}`;
  }

  async #connect(what: string, signal?: AbortSignal): Promise<Connection> {
    const { hostname, protocol } = this.#o.endpoint;
    const host = hostname.replace(/^\[(.*)\]$/, '$1');
    const buf = Buffer.allocUnsafe(this.#o.readBufferSize ?? 256 * 1024);
    const conn = new Connection(buf, (onread) => {
      if (protocol === 'http:') return netConnect({ host, port: this.#port, onread, noDelay: true });
      // tls.connect takes onread too (node >= 15.1); its type does not say so.
      const opts: ConnectionOptions & { onread: typeof onread } = { host, port: this.#port, onread, ...(isIP(host) ? {} : { servername: host }), ALPNProtocols: ['http/1.1'], ...(this.#o.tls?.ca ? { ca: this.#o.tls.ca } : {}) };
      return tlsConnect(opts);
    });
    await new Promise<void>((resolve, reject) => {
      const done = (e?: Error): void => {
        clearTimeout(timer);
        conn.socket.off('connect', ok);
        conn.socket.off('secureConnect', ok);
        conn.socket.off('error', bad);
        signal?.removeEventListener('abort', aborted);
        if (e) {
          conn.destroy();
          reject(e);
        } else resolve();
      };
      const ok = (): void => done();
      const bad = (e: NodeJS.ErrnoException): void => done(new TransportError('transient', `${what}: cannot connect to ${this.#hostHeader} (${e.code ?? e.name})`));
      const aborted = (): void => done(new TransportError('fatal', `${what}: aborted`));
      const timer = setTimeout(() => done(new TransportError('transient', `${what}: cannot connect to ${this.#hostHeader} (timed out)`)), this.#o.connectTimeoutMs ?? 10_000);
      conn.socket.once(protocol === 'https:' ? 'secureConnect' : 'connect', ok);
      conn.socket.once('error', bad);
      signal?.addEventListener('abort', aborted, { once: true });
    });
    return conn;
  }

  #release = (c: Connection): void => {
    if (this.#closed || c.dead || this.#idle.length >= (this.#o.maxIdle ?? 64)) {
      c.destroy();
      return;
    }
    c.socket.unref();
    c.idleTimer = setTimeout(() => {
      const i = this.#idle.indexOf(c);
      if (i >= 0) this.#idle.splice(i, 1);
      c.destroy();
    }, this.#o.idleMs ?? 4000);
    c.idleTimer.unref();
    this.#idle.push(c);
  };

  #take(): Connection | undefined {
    for (;;) {
      const c = this.#idle.pop();
      if (!c) return undefined;
      if (c.idleTimer) clearTimeout(c.idleTimer);
      c.idleTimer = undefined;
      if (c.dead) continue;
      c.socket.ref();
      return c;
    }
  }

  /** GET `key` (a key in the bucket, prefix included), or a range of it. Throws TransportError. */
  async get(key: string, range: ByteRange | undefined, what: string, signal?: AbortSignal): Promise<GetResult> {
    if (signal?.aborted) throw new TransportError('fatal', `${what}: aborted`);
    const path = objectPath(this.#o.endpoint.path, this.#o.bucket, key);
    let creds: SigningCredentials;
    try {
      creds = await this.#o.credentials();
    } catch (e) {
      throw new TransportError('transient', `${what}: no credentials for the object store (${e instanceof Error ? e.name : 'error'})`);
    }
    for (let attempt = 0; ; attempt++) {
      const reused = this.#take();
      const conn = reused ?? (await this.#connect(what, signal));
      const ex = new Exchange(conn, reused !== undefined, what, range, this.#release, this.#o.readTimeoutMs ?? 60_000, signal, (ms) => (this.#offsetMs = ms));
      const headers = this.#signer.signGet(this.#hostHeader, path, range ? { range: `bytes=${range.start}-${range.end}` } : {}, creds, new Date(Date.now() + this.#offsetMs));
      let req = `GET ${path} HTTP/1.1\r\nhost: ${this.#hostHeader}\r\n`;
      for (const [k, v] of Object.entries(headers)) req += `${k}: ${v}\r\n`;
      req += 'user-agent: bosun\r\n\r\n';
      conn.socket.write(req, 'latin1');
      if (reused) conn.socket.resume();
      try {
        return await ex.headPromise;
      } catch (e) {
        // A kept-alive connection the server had already closed: once more on a fresh one.
        if (!(e instanceof StaleConnection)) throw e;
        if (attempt >= 3) throw new TransportError('transient', `${what}: the connection closed before the response`);
      }
    }
  }

  close(): void {
    this.#closed = true;
    for (const c of this.#idle.splice(0)) c.destroy();
  }
}
