/**
 * Restore from a peer (README.md here): PeerServer on the serving node,
 * restoreFromPeer on the new one, and the service-command alternative.
 */
export { PeerServer, SnapshotFailure, type PeerServerOptions, type SnapshotHooks, type SnapshotReply, type SnapshotRequest } from './server.js';
export {
  restoreFromPeer,
  PeerTransport,
  PeerRestoreError,
  PeerKeyError,
  isPeerRestoreError,
  PEER_RETRY,
  type PeerAddress,
  type PeerRestoreOptions,
  type PeerRestoreResult,
  type PeerStage,
} from './client.js';
export { restoreWithCommand, substituteRestoreCommand, type CommandRestoreOptions, type CommandRestoreResult, type RestoreCommandVars } from './command.js';
export { tlsCredential, hostTlsCredential, selfSignedCertificate, certificateKey, type TlsCredential } from './cert.js';
export { PEER_SNAPSHOT_PORT } from '../../spec/node-spec.js';
export { DirTransport } from './spool.js';
export { peerRestorePlan, peerServerOptions, type PeerRestorePlan } from './from-spec.js';
