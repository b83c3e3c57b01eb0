// What several integration tests set up the same way: a run's own bosun topics
// with a consumer that collects what agents report on them, and a backup of a
// directory made in the test MinIO.
import assert from 'node:assert/strict';
import { verify } from 'node:crypto';
import type { S3Client } from '@aws-sdk/client-s3';
import kafkajs, { type Consumer } from 'kafkajs';
import type { KeyObject } from 'node:crypto';
import { createBackup, createS3Client, S3Transport, type BackupResult } from '../../src/backup/index.js';
import { ed25519PublicFromString } from '../../src/bus/envelope.js';
import type { SignedReport } from '../../src/bus/reporter.js';
import type { ServiceEnv } from '../services/env.js';

export interface RunTopics {
  desired: string;
  status: string;
  events: string;
}

/** Topics of their own for one test run, so runs never read each other's messages. */
export function runTopics(run: string): RunTopics {
  return { desired: `bosun.desired.${run}`, status: `bosun.status.${run}`, events: `bosun.events.${run}` };
}

/**
 * Creates the run's topics as a cluster has them (desired and status
 * compacted), then starts a consumer that hands every status and event
 * value, from the beginning, to `onReport`. The caller disconnects it.
 */
export async function createTopicsAndWatch(
  kafka: kafkajs.Kafka,
  topics: RunTopics,
  o: { desiredPartitions: number; groupId: string; onReport: (kind: 'status' | 'event', value: Buffer | null) => void },
): Promise<Consumer> {
  const admin = kafka.admin();
  await admin.connect();
  try {
    await admin.createTopics({
      waitForLeaders: true,
      topics: [
        { topic: topics.desired, numPartitions: o.desiredPartitions, configEntries: [{ name: 'cleanup.policy', value: 'compact' }] },
        { topic: topics.status, numPartitions: 3, configEntries: [{ name: 'cleanup.policy', value: 'compact' }] },
        { topic: topics.events, numPartitions: 3 },
      ],
    });
  } finally {
    await admin.disconnect();
  }
  const watcher = kafka.consumer({ groupId: o.groupId });
  await watcher.connect();
  await watcher.subscribe({ topics: [topics.status, topics.events], fromBeginning: true });
  await watcher.run({
    eachMessage: async ({ topic, message }) => {
      o.onReport(topic === topics.status ? 'status' : 'event', message.value);
      await Promise.resolve();
    },
  });
  return watcher;
}

/** `bosun backup create` of `source` into the test MinIO under `prefix`, sealed to `recipient`, in 1 MiB chunks. */
export async function backupToMinio(env: ServiceEnv, source: string, prefix: string, recipient: KeyObject): Promise<BackupResult> {
  const client = minioClient(env);
  try {
    return await createBackup({ source, transport: new S3Transport({ client, bucket: env.s3.bucket, prefix }), recipient, chunkSize: 1024 * 1024 });
  } finally {
    client.destroy();
  }
}

/** A status or event as a test received it: when, the verified payload, the raw message. */
export interface Received {
  at: number;
  body: Record<string, any>;
  raw: string;
}

/** A signed report from the watcher, its signature checked against the agent's `signer` key (asserted). */
export function verifiedReport(raw: Buffer | null, signer: string): Received {
  const report = JSON.parse(raw!.toString()) as SignedReport;
  const payload = Buffer.from(report.payload, 'base64url');
  assert.ok(
    verify(null, Buffer.concat([Buffer.from(`${report.format}\0`), payload]), ed25519PublicFromString(signer), Buffer.from(report.signature, 'base64url')),
    'report signature',
  );
  return { at: Date.now(), body: JSON.parse(payload.toString()) as Record<string, any>, raw: raw!.toString() };
}

/** An S3 client for the test MinIO. */
export function minioClient(env: ServiceEnv): S3Client {
  return createS3Client({
    endpoint: env.s3.endpoint,
    region: env.s3.region,
    credentials: { accessKeyId: env.s3.accessKeyId, secretAccessKey: env.s3.secretAccessKey },
  });
}

/** The environment a `bosun` CLI run needs to reach the test MinIO (no agent.json). */
export function cliS3Env(env: ServiceEnv): Record<string, string> {
  return {
    AWS_ENDPOINT_URL: env.s3.endpoint,
    AWS_REGION: env.s3.region,
    AWS_ACCESS_KEY_ID: env.s3.accessKeyId,
    AWS_SECRET_ACCESS_KEY: env.s3.secretAccessKey,
    BOSUN_SETTINGS: '',
  };
}
