// One restore from a peer in its own process, so the benchmark times it alone
// and reads its peak RSS. Config as JSON in argv[2]; prints one JSON line: the
// result, seconds (end to end, snapshot included), peak RSS and CPU seconds.
import { createPrivateKey, createPublicKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { restoreFromPeer } from '../../src/backup/peer/index.js';
import { openSealed, publicKeyString } from '../../src/identity/seal.js';

export interface PeerBenchChildConfig {
  host: string;
  port: number;
  /** the server's "ed25519:…" key, pinned */
  serverKey: string;
  /** PEM of this host's Ed25519 identity key */
  identityFile: string;
  /** PEM of this host's X25519 key (the snapshot is sealed to its public half) */
  sealingKeyFile: string;
  target: string;
  concurrency?: number;
  workers?: number;
}

const cfg = JSON.parse(process.argv[2] ?? '{}') as PeerBenchChildConfig;
const x = createPrivateKey(readFileSync(cfg.sealingKeyFile));
const xPub = createPublicKey(x);
const started = performance.now();
const result = await restoreFromPeer({
  peer: { host: cfg.host, port: cfg.port, key: cfg.serverKey, name: 'bench-peer' },
  identity: readFileSync(cfg.identityFile, 'utf8'),
  recipient: publicKeyString('x25519', xPub),
  openDataKey: (sealed) => openSealed(x, xPub, sealed),
  target: cfg.target,
  ...(cfg.concurrency !== undefined ? { concurrency: cfg.concurrency } : {}),
  ...(cfg.workers !== undefined ? { workers: cfg.workers } : {}),
});
const u = process.resourceUsage();
process.stdout.write(
  JSON.stringify({ result, seconds: (performance.now() - started) / 1000, maxRssBytes: u.maxRSS * 1024, cpuSeconds: (u.userCPUTime + u.systemCPUTime) / 1e6 }) +
    '\n',
);
