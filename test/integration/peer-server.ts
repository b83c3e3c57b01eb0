// A PeerServer in a child process (peer-server-child.ts) for integration tests
// that restore from a peer: start it, learn its port and key, kill it (SIGKILL
// mid-transfer included). And host keys for either side.
import { spawn, type ChildProcess } from 'node:child_process';
import { createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { publicKeyString } from '../../src/identity/seal.js';
import { repoRoot } from '../helpers.js';
import type { PeerServerChildConfig } from './peer-server-child.js';

export interface Host {
  ed: KeyObject;
  edKey: string;
  keyFile: string;
  x: KeyObject;
  xPub: string;
}

export async function makeHost(dir: string, name: string): Promise<Host> {
  const ed = generateKeyPairSync('ed25519').privateKey;
  const x = generateKeyPairSync('x25519').privateKey;
  const keyFile = join(dir, `${name}-ed25519.pem`);
  await writeFile(keyFile, ed.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
  return { ed, edKey: publicKeyString('ed25519', createPublicKey(ed)), keyFile, x, xPub: publicKeyString('x25519', createPublicKey(x)) };
}

export interface ServerChild {
  port: number;
  key: string;
  child: ChildProcess;
  stderr: () => string;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

const children = new Set<ChildProcess>();

export async function startServer(cfg: PeerServerChildConfig): Promise<ServerChild> {
  const child = spawn(process.execPath, [join(repoRoot, 'dist/test/integration/peer-server-child.js'), JSON.stringify(cfg)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const first = await new Promise<string>((resolve, reject) => {
    let buf = '';
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      const nl = buf.indexOf('\n');
      if (nl >= 0) resolve(buf.slice(0, nl));
    });
    child.once('exit', (code) => reject(new Error(`peer server child exited (${code}) before listening: ${stderr}`)));
  });
  const { port, key } = JSON.parse(first) as { port: number; key: string };
  return {
    port,
    key,
    child,
    stderr: () => stderr,
    async kill(signal: NodeJS.Signals = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
      children.delete(child);
    },
  };
}

/** SIGKILL every server child still running (an after hook). */
export function stopAllServers(): void {
  for (const c of children) c.kill('SIGKILL');
  children.clear();
}
