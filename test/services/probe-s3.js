// Readiness probe for the S3 service, run by test/services/up (plain ESM, no
// build). Creates the bucket if it is missing, then puts, gets and deletes a
// small object. Exit 0 only if all of that worked within PROBE_TIMEOUT_MS.
//
//   S3_ENDPOINT=http://127.0.0.1:19000 S3_REGION=us-east-1 S3_BUCKET=bosun-test \
//   S3_ACCESS_KEY=... S3_SECRET_KEY=... node test/services/probe-s3.js
import { randomUUID } from 'node:crypto';
import { CreateBucketCommand, DeleteObjectCommand, GetObjectCommand, HeadBucketCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';

const endpoint = process.env.S3_ENDPOINT ?? '';
const bucket = process.env.S3_BUCKET ?? '';
const timeoutMs = Number(process.env.PROBE_TIMEOUT_MS ?? 30000);

function fail(message) {
  process.stderr.write(`s3 probe failed (${endpoint}, bucket ${bucket}): ${message}\n`);
  process.exit(1);
}

for (const name of ['S3_ENDPOINT', 'S3_REGION', 'S3_BUCKET', 'S3_ACCESS_KEY', 'S3_SECRET_KEY']) {
  if (!process.env[name]) fail(`${name} is empty`);
}
const timer = setTimeout(() => fail(`no answer within ${timeoutMs} ms`), timeoutMs);

const s3 = new S3Client({
  endpoint,
  region: process.env.S3_REGION,
  forcePathStyle: true,
  credentials: { accessKeyId: process.env.S3_ACCESS_KEY ?? '', secretAccessKey: process.env.S3_SECRET_KEY ?? '' },
  maxAttempts: 2,
  requestHandler: { connectionTimeout: 3000, requestTimeout: 10000 },
});

async function main() {
  let created = false;
  try {
    await s3.send(new HeadBucketCommand({ Bucket: bucket }));
  } catch (err) {
    if (err?.$metadata?.httpStatusCode !== 404) throw err;
    await s3.send(new CreateBucketCommand({ Bucket: bucket }));
    created = true;
  }
  const key = `bosun-probe/${randomUUID()}`;
  const body = `probe ${key}`;
  await s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body }));
  try {
    const res = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    const got = await res.Body?.transformToString();
    if (got !== body) throw new Error(`GET returned ${JSON.stringify(got)}, expected ${JSON.stringify(body)}`);
  } finally {
    await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }));
  }
  return created;
}

main().then(
  (created) => {
    clearTimeout(timer);
    s3.destroy();
    process.stdout.write(`s3 ok: put+get in bucket ${bucket}${created ? ' (bucket created)' : ''} via ${endpoint}\n`);
    process.exit(0);
  },
  (err) => {
    const status = err?.$metadata?.httpStatusCode;
    const text = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
    fail(status ? `${text} (HTTP ${status}${status === 403 ? ': wrong S3_ACCESS_KEY/S3_SECRET_KEY?' : ''})` : text);
  },
);
