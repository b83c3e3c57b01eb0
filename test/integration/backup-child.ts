// A restore in a child process, so a test can SIGKILL it part-way (and the
// benchmark can read its peak RSS). Config as JSON in argv[2]; prints the
// RestoreResult plus resource usage as one JSON line on stdout.
import { createPrivateKey, createPublicKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createS3Client, restoreFromObjectStorage, S3Transport } from '../../src/backup/index.js';
import { openSealed } from '../../src/identity/seal.js';

export interface ChildConfig {
  endpoint: string;
  region: string;
  bucket: string;
  prefix: string;
  accessKeyId: string;
  secretAccessKey: string;
  backupId: string;
  target: string;
  /** PEM of the X25519 private key the data key is sealed to */
  keyFile: string;
  bandwidthLimit?: number;
  checkpointIntervalMs?: number;
  concurrency?: number;
  workers?: number;
  verifyFiles?: boolean;
}

const cfg = JSON.parse(process.argv[2] ?? '{}') as ChildConfig;
const priv = createPrivateKey(readFileSync(cfg.keyFile));
const pub = createPublicKey(priv);
const client = createS3Client({
  endpoint: cfg.endpoint,
  region: cfg.region,
  credentials: { accessKeyId: cfg.accessKeyId, secretAccessKey: cfg.secretAccessKey },
});
try {
  const result = await restoreFromObjectStorage({
    transport: new S3Transport({ client, bucket: cfg.bucket, prefix: cfg.prefix }),
    backupId: cfg.backupId,
    target: cfg.target,
    openDataKey: (sealed) => openSealed(priv, pub, sealed),
    ...(cfg.bandwidthLimit !== undefined ? { bandwidthLimit: cfg.bandwidthLimit } : {}),
    ...(cfg.checkpointIntervalMs !== undefined ? { checkpointIntervalMs: cfg.checkpointIntervalMs } : {}),
    ...(cfg.concurrency !== undefined ? { concurrency: cfg.concurrency } : {}),
    ...(cfg.workers !== undefined ? { workers: cfg.workers } : {}),
    ...(cfg.verifyFiles !== undefined ? { verifyFiles: cfg.verifyFiles } : {}),
  });
  const u = process.resourceUsage();
  process.stdout.write(JSON.stringify({ ...result, maxRssBytes: u.maxRSS * 1024, cpuSeconds: (u.userCPUTime + u.systemCPUTime) / 1e6 }) + '\n');
} finally {
  client.destroy();
}
