/**
 * One HTTP/1.1 GET on one keep-alive connection of a RawS3Reader (raw-get.ts):
 * the response head parsed by hand, then the body handed to the consumer as
 * views of the connection's one read buffer; the socket reads again only when
 * the consumer asks for the next piece.
 */
import type { Socket } from 'node:net';
import { TransportError, httpFailure, type ByteRange, type GetResult } from './transport.js';

const HEAD_LIMIT = 64 * 1024;
const ERROR_BODY_LIMIT = 16 * 1024;

/** One keep-alive connection; `exchange` is the request using it, if any. */
export class Connection {
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
export class StaleConnection extends Error {}

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

/**
 * One GET on one connection: the response head, then the body as an async
 * iterator of views of the connection's read buffer.
 */
export class Exchange implements AsyncIterableIterator<Uint8Array> {
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
      const contentRange = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(headers.get('content-range') ?? '');
      if (status !== 206 || !contentRange || Number(contentRange[1]) !== this.range.start || Number(contentRange[2]) - Number(contentRange[1]) + 1 !== length) {
        this.#fail(
          new TransportError(
            'transient',
            `${this.what}: asked for bytes ${this.range.start}-${this.range.end}, got HTTP ${status} ${headers.get('content-range') ?? 'without Content-Range'}`,
          ),
        );
        return false;
      }
      if (contentRange[3] !== '*') objectSize = Number(contentRange[3]);
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
