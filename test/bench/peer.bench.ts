// Benchmark: restore from a peer between two processes (the serving agent's
// PeerServer in one, restoreFromPeer in another, TLS on loopback), side by
// side in one run with the references for the same bytes: bosun's restore
// from MinIO (same format, same pipeline, S3 transport) and `s5cmd cp` of the
// raw files (no decrypt, decompress or verify).
//
//   node dist/test/bench/peer.bench.js [--size 1GiB] [--runs 3] [--concurrency N] [--dir /tmp] [--keep]
//
// Needs the test services (MinIO, s5cmd) from test/services/up. A peer restore
// is timed end to end (the peer's snapshot, made fresh each run, included) and
// its transfer part alone (manifest fetch to commit). Peak RSS of both
// processes. Runs alternate their order. Prints the figures and one JSON line.
import { spawn, type ChildProcess } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeleteObjectsCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { createS3Client, formatBytes } from '../../src/backup/index.js';
import { publicKeyString } from '../../src/identity/seal.js';
import { median, repoRoot } from '../helpers.js';
import { requireServices } from '../services/env.js';
import type { PeerServerChildConfig } from '../integration/peer-server-child.js';
import type { BenchChildConfig } from './child.js';
import type { PeerBenchChildConfig } from './peer-child.js';
import { productNodeFlags } from './node-flags.js';
import { out, parseSize } from './print.js';

const MiB = 1024 * 1024;

function args(): { size: number; runs: number; concurrency?: number; dir: string; keep: boolean } {
  const a = process.argv.slice(2);
  const get = (name: string): string | undefined => {
    const i = a.indexOf(`--${name}`);
    return i >= 0 ? a[i + 1] : undefined;
  };
  const concurrency = get('concurrency');
  return {
    size: parseSize(get('size') ?? '1GiB'),
    runs: Number(get('runs') ?? 3),
    ...(concurrency !== undefined ? { concurrency: Number(concurrency) } : {}),
    dir: get('dir') ?? tmpdir(),
    keep: a.includes('--keep'),
  };
}

/** Mixed files like restore.bench: 10% of the bytes in small files, 30% medium, 60% large; half text-like (about 3:1), half random. */
async function generate(root: string, size: number): Promise<{ files: number; bytes: number }> {
  const words = 'select insert update delete from where order by group the quick brown fox jumps over lazy dog id name value timestamp error'.split(' ');
  const parts: string[] = [];
  for (let n = 0; n < 16 * MiB;) {
    const w = `${words[Math.floor(Math.random() * words.length)]} ${Math.floor(Math.random() * 100000)}${Math.random() < 0.1 ? '\n' : ' '}`;
    parts.push(w);
    n += w.length;
  }
  const base = Buffer.from(parts.join(''));
  const textBlock = (n: number): Buffer => {
    const b = Buffer.allocUnsafe(n);
    for (let off = 0; off < n; off += 65536) {
      const len = Math.min(65536, n - off);
      const at = Math.floor(Math.random() * (base.length - len));
      base.copy(b, off, at, at + len);
    }
    return b;
  };
  let files = 0;
  let bytes = 0;
  const write = async (path: string, n: number, text: boolean): Promise<void> => {
    const fh = await open(path, 'w');
    try {
      for (let off = 0; off < n; off += 8 * MiB) {
        const len = Math.min(8 * MiB, n - off);
        await fh.write(text ? textBlock(len) : randomBytes(len));
      }
    } finally {
      await fh.close();
    }
    files++;
    bytes += n;
  };
  let budget = Math.round(size * 0.1);
  for (let d = 0; budget > 0; d++) {
    const dir = join(root, 'small', String(d).padStart(3, '0'));
    await mkdir(dir, { recursive: true });
    for (let i = 0; i < 100 && budget > 0; i++) {
      const n = Math.min(budget, 1024 + Math.floor(Math.random() * 63 * 1024));
      await write(join(dir, `f${i}.dat`), n, i % 2 === 0);
      budget -= n;
    }
  }
  budget = Math.round(size * 0.3);
  await mkdir(join(root, 'medium'), { recursive: true });
  for (let i = 0; budget > 0; i++) {
    const n = Math.min(budget, MiB + Math.floor(Math.random() * 15 * MiB));
    await write(join(root, 'medium', `m${i}.bin`), n, i % 2 === 0);
    budget -= n;
  }
  budget = size - bytes;
  await mkdir(join(root, 'large'), { recursive: true });
  for (let i = 0; budget > 0; i++) {
    const n = Math.min(budget, 64 * MiB + Math.floor(Math.random() * 192 * MiB));
    await write(join(root, 'large', `l${i}.bin`), n, i % 2 === 1);
    budget -= n;
  }
  return { files, bytes };
}

interface Measured {
  seconds: number;
  maxRssBytes: number;
  cpuSeconds: number;
  stdout: string;
}

/** Run a command, timed from spawn to exit, with its peak RSS from GNU time. */
function measure(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<Measured> {
  return new Promise((resolve, reject) => {
    const timeFile = join(tmpdir(), `bosun-peer-bench-time-${process.pid}-${Math.random().toString(36).slice(2)}`);
    const started = performance.now();
    const child = spawn('/usr/bin/time', ['-f', '%M %U %S', '-o', timeFile, ...argv], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      const seconds = (performance.now() - started) / 1000;
      void readFile(timeFile, 'utf8')
        .then(async (t) => {
          await rm(timeFile, { force: true });
          if (code !== 0) throw new Error(`${argv.join(' ')} exited with ${code}: ${stderr.slice(-2000)}`);
          const [rssKb, user, sys] = t.trim().split('\n').at(-1)!.split(' ').map(Number);
          resolve({ seconds, maxRssBytes: rssKb! * 1024, cpuSeconds: user! + sys!, stdout });
        })
        .catch(reject);
    });
  });
}

/** The peer server child: listening port, and its peak RSS once stopped. */
async function startServer(
  cfg: PeerServerChildConfig,
): Promise<{ port: number; child: ChildProcess; stop: () => Promise<{ maxRssBytes: number; cpuSeconds: number }> }> {
  const child = spawn(process.execPath, [...productNodeFlags(), join(repoRoot, 'dist/test/integration/peer-server-child.js'), JSON.stringify(cfg)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const port = await new Promise<number>((resolve, reject) => {
    let buf = '';
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      if (buf.includes('\n')) resolve((JSON.parse(buf.slice(0, buf.indexOf('\n'))) as { port: number }).port);
    });
    child.once('exit', (code) => reject(new Error(`peer server exited (${code}): ${stderr}`)));
  });
  return {
    port,
    child,
    stop: async () => {
      const exited = new Promise<void>((r) => child.once('exit', () => r()));
      child.kill('SIGTERM');
      await exited;
      const last = stderr.trim().split('\n').at(-1) ?? '{}';
      return JSON.parse(last) as { maxRssBytes: number; cpuSeconds: number };
    },
  };
}

const rate = (bytes: number, seconds: number): string => `${formatBytes(bytes / seconds)}/s`;

async function main(): Promise<void> {
  const o = args();
  const env = await requireServices();
  if (!env.s5cmd) throw new Error('s5cmd not found: run BOSUN_SERVICES_S5CMD=1 bash test/services/up (it builds s5cmd and records its path)');
  const work = await mkdtemp(join(o.dir, 'bosun-peer-bench-'));
  const prefix = `bosun-peer-bench/${Date.now().toString(36)}/`;
  const client = createS3Client({
    endpoint: env.s3.endpoint,
    region: env.s3.region,
    credentials: { accessKeyId: env.s3.accessKeyId, secretAccessKey: env.s3.secretAccessKey },
  });
  const s5env = { ...process.env, AWS_ACCESS_KEY_ID: env.s3.accessKeyId, AWS_SECRET_ACCESS_KEY: env.s3.secretAccessKey, AWS_REGION: env.s3.region };
  const s5 = (...a: string[]): string[] => [env.s5cmd!, '--endpoint-url', env.s3.endpoint, ...a];
  const childJs = join(repoRoot, 'dist/test/bench/child.js');
  const peerChildJs = join(repoRoot, 'dist/test/bench/peer-child.js');
  const deletePrefix = async (p: string): Promise<void> => {
    for (;;) {
      const l = await client.send(new ListObjectsV2Command({ Bucket: env.s3.bucket, Prefix: p }));
      const keys = (l.Contents ?? []).map((c) => ({ Key: c.Key! }));
      if (keys.length === 0) break;
      await client.send(new DeleteObjectsCommand({ Bucket: env.s3.bucket, Delete: { Objects: keys } }));
    }
  };
  let server: Awaited<ReturnType<typeof startServer>> | undefined;
  try {
    const src = join(work, 'src');
    out(`bosun peer bench: generating ${formatBytes(o.size)} of mixed files in ${src} ...`);
    const ds = await generate(src, o.size);
    out(`  ${ds.files} files, ${formatBytes(ds.bytes)}`);
    await measure(['sync']);

    // Host keys: the serving peer's Ed25519 identity; the restoring host's Ed25519 identity and X25519 sealing key.
    const serverEd = generateKeyPairSync('ed25519');
    const clientEd = generateKeyPairSync('ed25519');
    const clientX = generateKeyPairSync('x25519');
    const serverKeyFile = join(work, 'server-ed25519.pem');
    const clientKeyFile = join(work, 'client-ed25519.pem');
    const sealingKeyFile = join(work, 'client-x25519.pem');
    await writeFile(serverKeyFile, serverEd.privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
    await writeFile(clientKeyFile, clientEd.privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
    await writeFile(sealingKeyFile, clientX.privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
    const serverKey = publicKeyString('ed25519', serverEd.publicKey);

    out('preparing the references: raw copy for s5cmd, bosun backup in MinIO ...');
    await measure(s5('cp', `${src}/*`, `s3://${env.s3.bucket}/${prefix}raw/`), s5env);
    const s3base: Omit<BenchChildConfig, 'mode'> = {
      endpoint: env.s3.endpoint,
      region: env.s3.region,
      bucket: env.s3.bucket,
      prefix: `${prefix}bosun/`,
      accessKeyId: env.s3.accessKeyId,
      secretAccessKey: env.s3.secretAccessKey,
      keyFile: sealingKeyFile,
      ...(o.concurrency !== undefined ? { concurrency: o.concurrency } : {}),
    };
    const created = await measure([
      process.execPath,
      ...productNodeFlags(),
      childJs,
      JSON.stringify({ ...s3base, mode: 'create', source: src } satisfies BenchChildConfig),
    ]);
    const backupId = (JSON.parse(created.stdout) as { result: { backupId: string } }).result.backupId;
    out(`  bosun backup create to MinIO: ${created.seconds.toFixed(2)} s, ${rate(ds.bytes, created.seconds)}`);

    server = await startServer({
      dataDir: src,
      spoolDir: join(work, 'spool'),
      keyFile: serverKeyFile,
      allowedClients: [publicKeyString('ed25519', clientEd.publicKey)],
    });
    const peerCfg = (target: string): PeerBenchChildConfig => ({
      host: '127.0.0.1',
      port: server!.port,
      serverKey,
      identityFile: clientKeyFile,
      sealingKeyFile,
      target,
      ...(o.concurrency !== undefined ? { concurrency: o.concurrency } : {}),
    });

    const peer: Array<Measured & { transferSeconds: number; snapshotSeconds: number }> = [];
    const s3: Measured[] = [];
    const s5runs: Measured[] = [];
    const kinds = ['peer', 's3', 's5cmd'] as const;
    for (let i = 0; i < o.runs; i++) {
      const order = [...kinds.slice(i % 3), ...kinds.slice(0, i % 3)];
      for (const who of order) {
        const dst = join(work, `dst-${who}`);
        await rm(dst, { recursive: true, force: true });
        await measure(['sync']);
        if (who === 'peer') {
          const m = await measure([process.execPath, ...productNodeFlags(), peerChildJs, JSON.stringify(peerCfg(dst))]);
          const r = JSON.parse(m.stdout) as { result: { seconds: number; quiescedMs: number } };
          peer.push({ ...m, transferSeconds: r.result.seconds, snapshotSeconds: r.result.quiescedMs / 1000 });
          out(
            `  peer restore   #${i + 1}: ${m.seconds.toFixed(2)} s end to end (${rate(ds.bytes, m.seconds)}); snapshot ${(r.result.quiescedMs / 1000).toFixed(2)} s, transfer ${r.result.seconds.toFixed(2)} s (${rate(ds.bytes, r.result.seconds)}); client peak RSS ${formatBytes(m.maxRssBytes)}, CPU ${m.cpuSeconds.toFixed(1)} s`,
          );
        } else if (who === 's3') {
          const m = await measure([
            process.execPath,
            ...productNodeFlags(),
            childJs,
            JSON.stringify({ ...s3base, mode: 'restore', target: dst, backupId } satisfies BenchChildConfig),
          ]);
          s3.push(m);
          out(
            `  MinIO restore  #${i + 1}: ${m.seconds.toFixed(2)} s (${rate(ds.bytes, m.seconds)}); peak RSS ${formatBytes(m.maxRssBytes)}, CPU ${m.cpuSeconds.toFixed(1)} s`,
          );
        } else {
          const m = await measure(s5('cp', `s3://${env.s3.bucket}/${prefix}raw/*`, `${dst}/`), s5env);
          s5runs.push(m);
          out(`  s5cmd cp       #${i + 1}: ${m.seconds.toFixed(2)} s (${rate(ds.bytes, m.seconds)}); peak RSS ${formatBytes(m.maxRssBytes)}`);
        }
        await rm(dst, { recursive: true, force: true });
      }
    }
    const srv = await server.stop();
    server = undefined;

    const peerMed = median(peer.map((m) => m.seconds));
    const transferMed = median(peer.map((m) => m.transferSeconds));
    const snapMed = median(peer.map((m) => m.snapshotSeconds));
    const s3Med = median(s3.map((m) => m.seconds));
    const s5Med = median(s5runs.map((m) => m.seconds));
    const [l1, l5] = loadavg();
    out('');
    out(`bosun peer bench, ${formatBytes(ds.bytes)} in ${ds.files} files, medians of ${o.runs} runs (load average ${l1!.toFixed(1)} / ${l5!.toFixed(1)}):`);
    out(`  peer restore, end to end   ${peerMed.toFixed(2)} s  ${rate(ds.bytes, peerMed)}  (fresh snapshot each run: quiesced ${snapMed.toFixed(2)} s)`);
    out(
      `  peer restore, transfer     ${transferMed.toFixed(2)} s  ${rate(ds.bytes, transferMed)}  client peak RSS ${formatBytes(Math.max(...peer.map((m) => m.maxRssBytes)))} (max), server peak RSS ${formatBytes(srv.maxRssBytes)}`,
    );
    out(
      `  MinIO restore (reference)  ${s3Med.toFixed(2)} s  ${rate(ds.bytes, s3Med)}  peak RSS ${formatBytes(Math.max(...s3.map((m) => m.maxRssBytes)))} (max)`,
    );
    out(`  s5cmd cp raw (reference)   ${s5Med.toFixed(2)} s  ${rate(ds.bytes, s5Med)}`);
    out(
      `  peer transfer rate / MinIO restore rate = ${(s3Med / transferMed).toFixed(2)}; / s5cmd rate = ${(s5Med / transferMed).toFixed(2)}; end to end / MinIO restore = ${(s3Med / peerMed).toFixed(2)}`,
    );
    out(
      JSON.stringify({
        bench: 'peer-restore',
        bytes: ds.bytes,
        files: ds.files,
        runs: o.runs,
        peerSeconds: peer.map((m) => m.seconds),
        peerTransferSeconds: peer.map((m) => m.transferSeconds),
        peerSnapshotSeconds: peer.map((m) => m.snapshotSeconds),
        peerClientMaxRssBytes: peer.map((m) => m.maxRssBytes),
        peerServerMaxRssBytes: srv.maxRssBytes,
        s3RestoreSeconds: s3.map((m) => m.seconds),
        s3RestoreMaxRssBytes: s3.map((m) => m.maxRssBytes),
        s5cmdSeconds: s5runs.map((m) => m.seconds),
        loadavg: [l1, l5],
      }),
    );
  } finally {
    if (server) await server.stop().catch(() => undefined);
    if (!o.keep) {
      await rm(work, { recursive: true, force: true });
      await deletePrefix(prefix);
    }
    client.destroy();
  }
}

await main();
