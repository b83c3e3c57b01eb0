// bosun's direct ranged GETs (src/backup/raw-get.ts): against the real MinIO,
// byte for byte the same as the SDK's; and against a scripted HTTP server on
// loopback, the protocol cases MinIO will not produce on demand (a kept-alive
// connection the server closed, a cut body, a 200 for a range, silence, a
// chunked error, TLS, an abort).
import assert from 'node:assert/strict';
import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { createServer as createNetServer, type Socket } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { after, before, describe, it } from 'node:test';
import { DeleteObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { createS3Client, S3Transport } from '../../src/backup/index.js';
import { tlsCredential } from '../../src/backup/peer/cert.js';
import { RawS3Reader, type RawGetOptions } from '../../src/backup/raw-get.js';
import { TransportError, type GetResult } from '../../src/backup/transport.js';
import { requireServices, type ServiceEnv } from '../services/env.js';

const RUN = `bosun-it/raw-get-${Date.now().toString(36)}-${randomUUID().slice(0, 8)}/`;

/** The body, copied piece by piece (a piece is only valid until the next is asked for). */
async function collect(r: GetResult): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const p of r.body) parts.push(Buffer.from(p));
  return Buffer.concat(parts);
}

async function rejectsWith(p: Promise<unknown>, kind: TransportError['kind'], message: RegExp): Promise<TransportError> {
  let caught: unknown;
  try {
    await p;
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof TransportError, `expected a TransportError, got ${String(caught)}`);
  assert.equal(caught.kind, kind, caught.message);
  assert.match(caught.message, message);
  return caught;
}

describe('direct ranged GETs against MinIO', { timeout: 120_000 }, () => {
  let env: ServiceEnv;
  let client: S3Client;
  const keys = ['plain.bin', 'dir with space/zürich+a=b!(1).bin'];
  const data = randomBytes(3 * 1024 * 1024 + 123);

  before(async () => {
    env = await requireServices();
    client = createS3Client({
      endpoint: env.s3.endpoint,
      region: env.s3.region,
      credentials: { accessKeyId: env.s3.accessKeyId, secretAccessKey: env.s3.secretAccessKey },
    });
    for (const k of keys) await client.send(new PutObjectCommand({ Bucket: env.s3.bucket, Key: RUN + k, Body: data }));
  });

  after(async () => {
    if (!client) return;
    for (const k of keys) await client.send(new DeleteObjectCommand({ Bucket: env.s3.bucket, Key: RUN + k })).catch(() => undefined);
    client.destroy();
  });

  it('reads the same bytes and object size as the SDK, for awkward keys too', async () => {
    const direct = new S3Transport({ client, bucket: env.s3.bucket, prefix: RUN });
    const sdk = new S3Transport({ client, bucket: env.s3.bucket, prefix: RUN, directGets: false });
    for (const k of keys) {
      for (const range of [
        { start: 0, end: data.length - 1 },
        { start: 1_000_001, end: 2_500_000 },
        { start: data.length - 1, end: data.length - 1 },
      ]) {
        const a = await direct.get(k, range);
        const b = await sdk.get(k, range);
        assert.equal(a.objectSize, data.length);
        assert.equal(b.objectSize, data.length);
        const [x, y] = [await collect(a), await collect(b)];
        assert.ok(x.equals(data.subarray(range.start, range.end + 1)), `${k} ${range.start}-${range.end}: direct GET differs from the object`);
        assert.ok(x.equals(y));
      }
    }
  });

  it('maps S3 errors as the SDK path does: missing object, range past the end, a wrong secret', async () => {
    const t = new S3Transport({ client, bucket: env.s3.bucket, prefix: RUN });
    await rejectsWith(t.get('no-such-object', { start: 0, end: 9 }), 'not-found', /does not exist/);
    await rejectsWith(t.get(keys[0]!, { start: data.length + 10, end: data.length + 20 }), 'range', /starts past its end/);
    const secret = `wrong-${randomUUID()}`;
    const bad = createS3Client({ endpoint: env.s3.endpoint, region: env.s3.region, credentials: { accessKeyId: env.s3.accessKeyId, secretAccessKey: secret } });
    try {
      const e = await rejectsWith(
        new S3Transport({ client: bad, bucket: env.s3.bucket, prefix: RUN }).get(keys[0]!, { start: 0, end: 9 }),
        'fatal',
        /SignatureDoesNotMatch \(HTTP 403\)/,
      );
      assert.ok(!e.message.includes(secret), 'the secret is not in the message');
    } finally {
      bad.destroy();
    }
  });

  it("signs by the store's clock after the store says this host's clock is off", async () => {
    const url = new URL(env.s3.endpoint);
    // As if this host's clock were an hour behind: the first GET is refused, the next is signed by MinIO's clock.
    const r = new RawS3Reader({
      endpoint: { protocol: url.protocol as 'http:', hostname: url.hostname, port: Number(url.port), path: '' },
      region: env.s3.region,
      bucket: env.s3.bucket,
      credentials: () => Promise.resolve({ accessKeyId: env.s3.accessKeyId, secretAccessKey: env.s3.secretAccessKey }),
      clockOffsetMs: -3600_000,
    });
    try {
      await rejectsWith(
        r.get(RUN + keys[0]!, { start: 0, end: 99 }, 'obj'),
        'transient',
        /RequestTimeTooSkewed \(HTTP 403; signing by the store's clock from now on\)/,
      );
      assert.ok((await collect(await r.get(RUN + keys[0]!, { start: 0, end: 99 }, 'obj'))).equals(data.subarray(0, 100)));
    } finally {
      r.close();
    }
  });

  it('reuses its connections: 40 GETs in a row', async () => {
    const t = new S3Transport({ client, bucket: env.s3.bucket, prefix: RUN });
    for (let i = 0; i < 40; i++) {
      const got = await collect(await t.get(keys[0]!, { start: i * 1000, end: i * 1000 + 999 }));
      assert.ok(got.equals(data.subarray(i * 1000, i * 1000 + 1000)));
    }
  });
});

/** A loopback HTTP (or TLS) server whose answer to each request is scripted; counts connections and requests. */
function scripted(
  answer: (s: Socket, n: number, head: string) => void,
  tlsOptions?: { key: string; cert: string },
): Promise<{ port: number; stats: { connections: number; requests: number }; close: () => Promise<void> }> {
  const stats = { connections: 0, requests: 0 };
  const sockets = new Set<Socket>();
  const onSocket = (s: Socket): void => {
    stats.connections++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    let buf = '';
    s.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      let i: number;
      while ((i = buf.indexOf('\r\n\r\n')) >= 0) {
        const head = buf.slice(0, i);
        buf = buf.slice(i + 4);
        answer(s, stats.requests++, head);
      }
    });
  };
  const server = tlsOptions ? createTlsServer(tlsOptions, onSocket) : createNetServer(onSocket);
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({
        port: (server.address() as { port: number }).port,
        stats,
        close: () =>
          new Promise<void>((r) => {
            for (const s of sockets) s.destroy();
            server.close(() => r());
          }),
      }),
    ),
  );
}

const BODY = Buffer.from('0123456789abcdefghijklmnopqrstuvwxyz');
/** 206 with bytes start-end of BODY, as S3 answers a range. */
function partial(s: Socket, head: string, extra = ''): void {
  const m = /\r\nrange: bytes=(\d+)-(\d+)/i.exec(head)!;
  const [a, b] = [Number(m[1]), Number(m[2])];
  s.write(`HTTP/1.1 206 Partial Content\r\nContent-Length: ${b - a + 1}\r\nContent-Range: bytes ${a}-${b}/${BODY.length}\r\n${extra}\r\n`);
  s.write(BODY.subarray(a, b + 1));
}

function reader(port: number, o: Partial<RawGetOptions> = {}): RawS3Reader {
  return new RawS3Reader({
    endpoint: { protocol: 'http:', hostname: '127.0.0.1', port, path: '' },
    region: 'us-east-1',
    bucket: 'b',
    credentials: () => Promise.resolve({ accessKeyId: 'id', secretAccessKey: 'secret' }),
    ...o,
  });
}

type Stats = { connections: number; requests: number };

/** A scripted server and a reader of it, both closed when `fn` is done. */
async function withScripted(
  answer: (s: Socket, n: number, head: string) => void,
  o: Partial<RawGetOptions>,
  fn: (r: RawS3Reader, stats: Stats) => Promise<void>,
): Promise<void> {
  const srv = await scripted(answer);
  const r = reader(srv.port, o);
  try {
    await fn(r, srv.stats);
  } finally {
    r.close();
    await srv.close();
  }
}

describe('direct ranged GETs: protocol cases (scripted server on loopback)', { timeout: 60_000 }, () => {
  it('sends a signed path-style request, keeps the connection, and retries once on a fresh one when the server closed it', async () => {
    const heads: string[] = [];
    await withScripted(
      (s, n, head) => {
        heads.push(head);
        partial(s, head);
        // After the second answer the server drops the (idle) connection.
        if (n === 1) s.end();
      },
      {},
      async (r, stats) => {
        for (let i = 0; i < 4; i++)
          assert.equal((await collect(await r.get('k/x y', { start: i, end: i + 9 }, 'obj'))).toString(), BODY.subarray(i, i + 10).toString());
        assert.match(heads[0]!, /^GET \/b\/k\/x%20y HTTP\/1\.1\r\n/);
        assert.match(
          heads[0]!,
          /\r\nauthorization: AWS4-HMAC-SHA256 Credential=id\/\d{8}\/us-east-1\/s3\/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=[0-9a-f]{64}/,
        );
        assert.ok(!heads.join('').includes('secret'));
        // The third GET went out on the closed connection first (the server saw its head), then again on a new one.
        assert.equal(stats.connections, 2, 'one connection for the first two GETs, a second after the server closed the first');
        assert.equal(stats.requests, 5);
      },
    );
  });

  it('a server that closes after a whole response (Connection: close) is no error; the next GET opens a new connection', async () => {
    await withScripted(
      (s, _n, head) => {
        partial(s, head, 'Connection: close\r\n');
        s.end();
      },
      {},
      async (r, stats) => {
        for (let i = 0; i < 3; i++) assert.equal((await collect(await r.get('k', { start: 0, end: 35 }, 'obj'))).toString(), BODY.toString());
        assert.equal(stats.connections, 3);
        assert.equal(stats.requests, 3);
      },
    );
  });

  it('a body cut short, a 200 for a range, too many bytes, and silence are transient errors', async () => {
    await withScripted(
      (s, n, head) => {
        if (n === 0) {
          s.write(`HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\nContent-Range: bytes 0-9/${BODY.length}\r\n\r\n0123`);
          setTimeout(() => s.destroy(), 50);
        } else if (n === 1) {
          s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${BODY.length}\r\n\r\n`);
          s.write(BODY);
        } else if (n === 2) {
          s.write(`HTTP/1.1 206 Partial Content\r\nContent-Length: 4\r\nContent-Range: bytes 0-3/${BODY.length}\r\n\r\n0123456789`);
        } else {
          void head; // never answers
        }
      },
      { readTimeoutMs: 300 },
      async (r) => {
        await rejectsWith(collect(await r.get('k', { start: 0, end: 9 }, 'obj')), 'transient', /obj: download cut at byte 4 of 10/);
        await rejectsWith(r.get('k', { start: 5, end: 9 }, 'obj'), 'transient', /asked for bytes 5-9, got HTTP 200/);
        await rejectsWith(collect(await r.get('k', { start: 0, end: 3 }, 'obj')), 'transient', /more than the 4 bytes it announced/);
        const t0 = performance.now();
        await rejectsWith(r.get('k', { start: 0, end: 3 }, 'obj'), 'transient', /no data for 0 s/);
        assert.ok(performance.now() - t0 < 5000);
      },
    );
  });

  it('reads the S3 error code out of a chunked error body; an abort stops a download', async () => {
    await withScripted(
      (s, n, head) => {
        if (n === 0) {
          const xml = '<?xml version="1.0"?><Error><Code>SlowDown</Code><Message>x</Message></Error>';
          s.write(`HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n${xml.length.toString(16)}\r\n${xml}\r\n0\r\n\r\n`);
        } else {
          // Headers and part of the body, then nothing.
          s.write(`HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\nContent-Range: bytes 0-9/${BODY.length}\r\n\r\n01`);
          void head;
        }
      },
      {},
      async (r) => {
        const e = await rejectsWith(r.get('k', { start: 0, end: 9 }, 'obj'), 'transient', /obj: SlowDown \(HTTP 503\)/);
        assert.equal(e.status, 503);
        const ac = new AbortController();
        const res = await r.get('k', { start: 0, end: 9 }, 'obj', ac.signal);
        setTimeout(() => ac.abort(), 100);
        await rejectsWith(collect(res), 'fatal', /obj: aborted/);
      },
    );
  });

  it('works over TLS', async () => {
    const { privateKey } = generateKeyPairSync('ed25519');
    const cred = tlsCredential(privateKey, 'localhost');
    const srv = await scripted((s, _n, head) => partial(s, head), { key: cred.key, cert: cred.cert });
    const r = new RawS3Reader({
      endpoint: { protocol: 'https:', hostname: 'localhost', port: srv.port, path: '' },
      region: 'us-east-1',
      bucket: 'b',
      credentials: () => Promise.resolve({ accessKeyId: 'id', secretAccessKey: 'secret' }),
      tls: { ca: cred.cert },
    });
    try {
      assert.equal((await collect(await r.get('k', { start: 3, end: 20 }, 'obj'))).toString(), BODY.subarray(3, 21).toString());
      assert.equal((await collect(await r.get('k', { start: 0, end: 35 }, 'obj'))).toString(), BODY.toString());
      assert.equal(srv.stats.connections, 1);
    } finally {
      r.close();
      await srv.close();
    }
  });
});
