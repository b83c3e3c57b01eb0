import { join } from 'node:path';
import type { Redactor } from '../../secrets/redact.js';
import { BosunError } from '../../errors.js';
import type { Logger } from '../../log.js';
import { PEER_SNAPSHOT_PORT, type NodeSpec } from '../../spec/node-spec.js';
import type { TlsCredential } from './cert.js';
import type { PeerAddress } from './client.js';
import type { PeerServerOptions } from './server.js';

/**
 * From a NodeSpec to the arguments of the peer-restore functions: what the
 * agent (serving side) and the restore phase (restoring side) call. Pure: no
 * I/O, so the phase can plan with it and report a spec that cannot work
 * before anything runs.
 */

/** How this node restores from its peer, resolved against the mesh. */
export type PeerRestorePlan =
  { method: 'snapshot'; peer: PeerAddress } | { method: 'command'; peer: string; peerAddress: string; argv: string[]; timeoutSeconds?: number };

function specError(path: string, message: string): BosunError {
  return new BosunError('E_INVALID_SPEC', `${path}: ${message}`, { path });
}

/** The peer plan of `spec.restore`, or undefined when it does not restore from a peer. */
export function peerRestorePlan(spec: NodeSpec): PeerRestorePlan | undefined {
  const r = spec.restore;
  if (r?.from !== 'peer') return undefined;
  const mesh = spec.network?.ipsec;
  const entry = mesh?.peers.find((p) => p.node === r.peer);
  if (!entry) throw specError('restore.peer', `${r.peer} is not one of network.ipsec.peers: a peer is reached over the mesh, at the address listed there`);
  if (r.method === 'command') {
    if (!r.command) throw specError('restore.command', 'required when method is "command"');
    return {
      method: 'command',
      peer: r.peer,
      peerAddress: entry.address,
      argv: [...r.command.argv],
      ...(r.command.timeoutSeconds !== undefined ? { timeoutSeconds: r.command.timeoutSeconds } : {}),
    };
  }
  if (!r.peerKey)
    throw specError(
      'restore.peerKey',
      `required to restore a snapshot from ${r.peer}: its Ed25519 host key (bosun identity on ${r.peer}) is the only key its snapshot server may present`,
    );
  return { method: 'snapshot', peer: { host: entry.address, port: r.port ?? PEER_SNAPSHOT_PORT, key: r.peerKey, name: r.peer } };
}

/** The PeerServer options of `spec.peerServe`, or undefined when this node serves no restores. */
export function peerServerOptions(
  spec: NodeSpec,
  options: { stateDir: string; credential: TlsCredential; logger?: Logger; redactor?: Redactor },
): PeerServerOptions | undefined {
  const peerServe = spec.peerServe;
  if (!peerServe) return undefined;
  if (!spec.disks) throw specError('peerServe', 'serving snapshots needs a data volume: add "disks"');
  const address = spec.network?.ipsec?.address;
  if (!address) throw specError('peerServe', 'snapshots are served on the mesh address only: add network.ipsec');
  const hooks = peerServe.hooks;
  return {
    dataDir: spec.disks.mount.path,
    spoolDir: peerServe.spoolDir ?? join(options.stateDir, 'peer-spool'),
    host: address,
    port: peerServe.port ?? PEER_SNAPSHOT_PORT,
    identity: options.credential,
    allowedClients: peerServe.clients.map((c) => c.hostKey),
    hostLabel: spec.node,
    ...(hooks
      ? {
          hooks: {
            ...(hooks.quiesce ? { quiesce: hooks.quiesce } : {}),
            ...(hooks.release ? { release: hooks.release } : {}),
            ...(hooks.timeoutSeconds !== undefined ? { timeoutSeconds: hooks.timeoutSeconds } : {}),
          },
        }
      : {}),
    ...(options.logger ? { logger: options.logger } : {}),
    ...(options.redactor ? { redactor: options.redactor } : {}),
  };
}
