// Integration tests against the real S3 service (MinIO from test/services/up).
// Run: npm run test:integration (services are started and stopped around it).
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { after, before, beforeEach, describe, it } from 'node:test';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import type { CompletedPart } from '@aws-sdk/client-s3';
import { requireServices } from '../services/env.js';
import type { ServiceEnv } from '../services/env.js';

const MiB = 1024 * 1024;
const RUN = `${Date.now().toString(36)}-${randomUUID().slice(0, 8)}`;

function httpStatus(err: unknown): number | undefined {
  if (typeof err !== 'object' || err === null || !('$metadata' in err)) return undefined;
  const meta = (err as { $metadata?: { httpStatusCode?: number } }).$metadata;
  return meta?.httpStatusCode;
}

describe('S3 (real MinIO)', { timeout: 180_000 }, () => {
  let env: ServiceEnv;
  let s3: S3Client;
  const key = `bosun-it/${RUN}/multipart.bin`;
  // Two 5 MiB parts (the S3 minimum for all but the last) and a short tail.
  const parts = [randomBytes(5 * MiB), randomBytes(5 * MiB + 4321), randomBytes(777 * 1024)];
  const data = Buffer.concat(parts);
  let uploaded = false;

  // A setup failure (services not up) fails every test, rather than
  // cancelling them: see beforeEach.
  let setupError: Error | undefined;

  before(async () => {
    try {
      env = await requireServices();
    } catch (err) {
      setupError = err instanceof Error ? err : new Error(String(err));
      return;
    }
    s3 = new S3Client({
      endpoint: env.s3.endpoint,
      region: env.s3.region,
      forcePathStyle: true,
      credentials: { accessKeyId: env.s3.accessKeyId, secretAccessKey: env.s3.secretAccessKey },
      maxAttempts: 3,
      requestHandler: { connectionTimeout: 5000, requestTimeout: 30_000 },
    });
  });

  beforeEach(() => {
    if (setupError !== undefined) throw setupError;
  });

  after(async () => {
    if (!s3) return;
    try {
      if (uploaded) await s3.send(new DeleteObjectCommand({ Bucket: env.s3.bucket, Key: key }));
    } finally {
      s3.destroy();
    }
  });

  it('uploads an object in 3 parts (2 x 5 MiB+) with multipart upload', { timeout: 120_000 }, async () => {
    const { UploadId } = await s3.send(new CreateMultipartUploadCommand({ Bucket: env.s3.bucket, Key: key, ContentType: 'application/octet-stream' }));
    assert.ok(UploadId, 'CreateMultipartUpload returned no UploadId');
    try {
      const done: CompletedPart[] = [];
      for (const [i, body] of parts.entries()) {
        const res = await s3.send(
          new UploadPartCommand({
            Bucket: env.s3.bucket,
            Key: key,
            UploadId,
            PartNumber: i + 1,
            Body: body,
            ContentLength: body.length,
          }),
        );
        assert.ok(res.ETag, `part ${i + 1} has no ETag`);
        done.push({ PartNumber: i + 1, ETag: res.ETag });
      }
      const res = await s3.send(new CompleteMultipartUploadCommand({ Bucket: env.s3.bucket, Key: key, UploadId, MultipartUpload: { Parts: done } }));
      uploaded = true;
      // A multipart ETag is "<md5 of part md5s>-<part count>".
      assert.match(res.ETag ?? '', /-3"?$/);
    } catch (err) {
      await s3.send(new AbortMultipartUploadCommand({ Bucket: env.s3.bucket, Key: key, UploadId })).catch(() => undefined);
      throw err;
    }

    const head = await s3.send(new HeadObjectCommand({ Bucket: env.s3.bucket, Key: key }));
    assert.equal(head.ContentLength, data.length);
  });

  it('serves ranged GETs with exactly the requested bytes', { timeout: 60_000 }, async () => {
    assert.ok(uploaded, 'the multipart upload test must have passed first');
    const ranges: Array<[number, number]> = [
      [0, 0], // first byte
      [5 * MiB - 100, 5 * MiB + 99], // across the part 1/2 boundary
      [10 * MiB + 4000, 10 * MiB + 5000], // across the part 2/3 boundary
      [data.length - 1000, data.length - 1], // the tail
    ];
    for (const [start, end] of ranges) {
      const res = await s3.send(new GetObjectCommand({ Bucket: env.s3.bucket, Key: key, Range: `bytes=${start}-${end}` }));
      const body = Buffer.from((await res.Body?.transformToByteArray()) ?? []);
      assert.equal(res.ContentRange, `bytes ${start}-${end}/${data.length}`);
      assert.equal(res.ContentLength, end - start + 1);
      assert.equal(body.length, end - start + 1, `length of bytes=${start}-${end}`);
      assert.ok(body.equals(data.subarray(start, end + 1)), `content of bytes=${start}-${end}`);
    }
    // Suffix range: the last 4 KiB.
    const res = await s3.send(new GetObjectCommand({ Bucket: env.s3.bucket, Key: key, Range: 'bytes=-4096' }));
    const tail = Buffer.from((await res.Body?.transformToByteArray()) ?? []);
    assert.ok(tail.equals(data.subarray(data.length - 4096)), 'content of bytes=-4096');
  });

  it('deletes the object (HeadObject then answers 404)', { timeout: 30_000 }, async () => {
    assert.ok(uploaded, 'the multipart upload test must have passed first');
    await s3.send(new DeleteObjectCommand({ Bucket: env.s3.bucket, Key: key }));
    uploaded = false;
    await assert.rejects(s3.send(new HeadObjectCommand({ Bucket: env.s3.bucket, Key: key })), (err: unknown) => {
      assert.equal(httpStatus(err), 404);
      return true;
    });
  });
});
