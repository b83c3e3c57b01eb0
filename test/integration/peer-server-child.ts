// A peer server in its own process, so a test can SIGKILL it mid-transfer and
// the benchmark measures two real processes. Config as JSON in argv[2]; prints
// {"port":…,"key":…} as one line once listening, then serves until killed.
import { readFileSync } from 'node:fs';
import { pino } from 'pino';
import { PeerServer, type SnapshotHooks } from '../../src/backup/peer/index.js';

export interface PeerServerChildConfig {
  dataDir: string;
  spoolDir: string;
  /** PEM of the server's Ed25519 identity key */
  keyFile: string;
  allowedClients: string[];
  host?: string;
  port?: number;
  hooks?: SnapshotHooks;
  chunkSize?: number;
  packSize?: number;
  workers?: number;
  /** log level for pino on stderr (default silent) */
  log?: string;
}

const cfg = JSON.parse(process.argv[2] ?? '{}') as PeerServerChildConfig;
const logger = pino({ level: cfg.log ?? 'silent' }, pino.destination(2));
const server = new PeerServer({
  dataDir: cfg.dataDir,
  spoolDir: cfg.spoolDir,
  host: cfg.host ?? '127.0.0.1',
  port: cfg.port ?? 0,
  identity: readFileSync(cfg.keyFile, 'utf8'),
  allowedClients: cfg.allowedClients,
  hostLabel: 'peer-child',
  logger,
  ...(cfg.hooks ? { hooks: cfg.hooks } : {}),
  ...(cfg.chunkSize !== undefined ? { chunkSize: cfg.chunkSize } : {}),
  ...(cfg.packSize !== undefined ? { packSize: cfg.packSize } : {}),
  ...(cfg.workers !== undefined ? { workers: cfg.workers } : {}),
});
const addr = await server.start();
process.stdout.write(JSON.stringify({ port: addr.port, key: server.publicKey }) + '\n');
const stop = (): void => {
  void server.stop().then(() => {
    const u = process.resourceUsage();
    process.stderr.write(JSON.stringify({ ...server.stats, maxRssBytes: u.maxRSS * 1024, cpuSeconds: (u.userCPUTime + u.systemCPUTime) / 1e6 }) + '\n');
    process.exit(0);
  });
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
