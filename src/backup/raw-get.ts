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
import { connect as netConnect, isIP } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions } from 'node:tls';
import { SigV4Signer, objectPath, type SigningCredentials } from './sigv4.js';
import { Connection, Exchange, StaleConnection } from './raw-exchange.js';
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
      const opts: ConnectionOptions & { onread: typeof onread } = {
        host,
        port: this.#port,
        onread,
        ...(isIP(host) ? {} : { servername: host }),
        ALPNProtocols: ['http/1.1'],
        ...(this.#o.tls?.ca ? { ca: this.#o.tls.ca } : {}),
      };
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
      const bad = (e: NodeJS.ErrnoException): void =>
        done(new TransportError('transient', `${what}: cannot connect to ${this.#hostHeader} (${e.code ?? e.name})`));
      const aborted = (): void => done(new TransportError('fatal', `${what}: aborted`));
      const timer = setTimeout(
        () => done(new TransportError('transient', `${what}: cannot connect to ${this.#hostHeader} (timed out)`)),
        this.#o.connectTimeoutMs ?? 10_000,
      );
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
      const headers = this.#signer.signGet(
        this.#hostHeader,
        path,
        range ? { range: `bytes=${range.start}-${range.end}` } : {},
        creds,
        new Date(Date.now() + this.#offsetMs),
      );
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
