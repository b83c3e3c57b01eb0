// One backup create or restore in its own process, so the benchmark can time
// it alone and read its peak RSS. Config as JSON in argv[2]; prints one JSON
// line: the result, seconds, peak RSS and CPU seconds.
import { createPrivateKey, createPublicKey } from 'node:crypto';
import { appendFileSync, readFileSync } from 'node:fs';
import { createBackup, createS3Client, restoreFromObjectStorage, S3Transport } from '../../src/backup/index.js';
import { openSealed } from '../../src/identity/seal.js';

export interface BenchChildConfig {
  mode: 'create' | 'restore';
  endpoint: string;
  region: string;
  bucket: string;
  prefix: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** PEM of the X25519 private key (its public half is the recipient) */
  keyFile: string;
  source?: string;
  target?: string;
  backupId?: string;
  concurrency?: number;
  workers?: number;
  slots?: number;
  verifyFiles?: boolean;
  /** ranged GETs on bosun's own connections (default) or through the SDK (false) */
  directGets?: boolean;
  /** RestoreOptions.flushAheadBytes (0: sync only at the end) */
  flushAheadBytes?: number;
  /** RestoreOptions.precreateFiles */
  precreateFiles?: boolean;
  chunkSize?: number;
  packSize?: number;
}

const cfg = JSON.parse(process.argv[2] ?? '{}') as BenchChildConfig;
const priv = createPrivateKey(readFileSync(cfg.keyFile));
const pub = createPublicKey(priv);
const client = createS3Client({
  endpoint: cfg.endpoint,
  region: cfg.region,
  credentials: { accessKeyId: cfg.accessKeyId, secretAccessKey: cfg.secretAccessKey },
});
const transport = new S3Transport({ client, bucket: cfg.bucket, prefix: cfg.prefix, ...(cfg.directGets !== undefined ? { directGets: cfg.directGets } : {}) });
const started = performance.now();
// BOSUN_BENCH_MEMTRACE=FILE: sample this process's memory every 200 ms and
// append, when done, one JSON line to FILE: the breakdown at the peak RSS
// (V8 heap, external and ArrayBuffer memory of the main thread; the rest is
// native: worker threads' isolates, malloc arenas, code) and how RSS went.
const memtrace = process.env.BOSUN_BENCH_MEMTRACE;
type MemSample = NodeJS.MemoryUsage & { t: number };
const samples: MemSample[] = [];
const sampler = memtrace ? setInterval(() => samples.push({ t: Math.round(performance.now() - started), ...process.memoryUsage() }), 200) : undefined;
try {
  let result: object;
  if (cfg.mode === 'create') {
    result = await createBackup({
      source: cfg.source!,
      transport,
      recipient: pub,
      ...(cfg.workers !== undefined ? { workers: cfg.workers } : {}),
      ...(cfg.chunkSize !== undefined ? { chunkSize: cfg.chunkSize } : {}),
      ...(cfg.packSize !== undefined ? { packSize: cfg.packSize } : {}),
    });
  } else {
    result = await restoreFromObjectStorage({
      transport,
      backupId: cfg.backupId ?? 'latest',
      target: cfg.target!,
      openDataKey: (sealed) => openSealed(priv, pub, sealed),
      ...(cfg.concurrency !== undefined ? { concurrency: cfg.concurrency } : {}),
      ...(cfg.workers !== undefined ? { workers: cfg.workers } : {}),
      ...(cfg.flushAheadBytes !== undefined ? { flushAheadBytes: cfg.flushAheadBytes } : {}),
      ...(cfg.precreateFiles !== undefined ? { precreateFiles: cfg.precreateFiles } : {}),
      ...(cfg.slots !== undefined ? { slots: cfg.slots } : {}),
      ...(cfg.verifyFiles !== undefined ? { verifyFiles: cfg.verifyFiles } : {}),
    });
  }
  const u = process.resourceUsage();
  process.stdout.write(
    JSON.stringify({
      result,
      seconds: (performance.now() - started) / 1000,
      maxRssBytes: u.maxRSS * 1024,
      cpuSeconds: (u.userCPUTime + u.systemCPUTime) / 1e6,
    }) + '\n',
  );
} finally {
  client.destroy();
  if (sampler && memtrace) {
    clearInterval(sampler);
    const peak = samples.reduce((a, b) => (b.rss > a.rss ? b : a), samples[0] ?? { t: 0, ...process.memoryUsage() });
    const mib = (n: number): number => Math.round(n / 1048576);
    const at = (f: number): number => mib(samples[Math.floor((samples.length - 1) * f)]?.rss ?? 0);
    const line = {
      mode: cfg.mode,
      peakMiB: {
        t: peak.t,
        rss: mib(peak.rss),
        heapTotal: mib(peak.heapTotal),
        heapUsed: mib(peak.heapUsed),
        external: mib(peak.external),
        arrayBuffers: mib(peak.arrayBuffers),
        native: mib(peak.rss - peak.heapTotal - peak.external),
      },
      rssMiBAt: { '10%': at(0.1), '25%': at(0.25), '50%': at(0.5), '75%': at(0.75), '100%': at(1) },
      maxMiB: {
        heapTotal: mib(Math.max(...samples.map((x) => x.heapTotal))),
        external: mib(Math.max(...samples.map((x) => x.external))),
        arrayBuffers: mib(Math.max(...samples.map((x) => x.arrayBuffers))),
      },
    };
    appendFileSync(memtrace, JSON.stringify(line) + '\n');
  }
}
