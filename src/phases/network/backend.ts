import type { SecretRef } from '../../secrets/ref.js';

/**
 * What the network phase needs from an IKE daemon. libreswan is the one
 * Fedora ships and the RPM requires; a strongSwan (swanctl) backend implements
 * the same interface beside it. Everything a backend returns is data: file
 * contents and argv lists that the phase turns into steps.
 */
export interface PeerConn {
  /** the connection's name in the daemon: bosun-<peer node> */
  name: string;
  localNode: string;
  localAddress: string;
  peerNode: string;
  peerAddress: string;
  /** exactly one side of each pair initiates, so the two never build crossing SAs */
  initiator: boolean;
  psk?: SecretRef;
}

export interface ObservedIke {
  /** the daemon runs and answers */
  running: boolean;
  /** "4.10", "5.2", ... */
  version?: string;
  /** connections the daemon has loaded */
  loaded: string[];
  /** established child SAs per connection, with traffic counters */
  traffic: Record<string, { inBytes: number; outBytes: number }>;
}

export interface IpsecBackend {
  readonly id: 'libreswan' | 'strongswan';
  /** the unit that runs the daemon */
  readonly unit: string;
  /** the directory of its per-peer files (bosun's and anyone else's) */
  readonly dir: string;
  confPath(conn: PeerConn): string;
  secretsPath(conn: PeerConn): string;
  /** does a file in the config dir belong to bosun, and for which connection */
  ownedConn(fileName: string): string | undefined;
  /** is this file (one ownedConn names) a secrets file */
  isSecretsFile(fileName: string): boolean;
  renderConn(conn: PeerConn, daemonVersion?: string): string;
  renderSecrets(conn: PeerConn): (string | SecretRef)[];
  /**
   * One-time set-up before the daemon's first start, done as its own visible
   * step when `file` is missing from `dir` (libreswan: its NSS database, where
   * keys and certificates live; the unit would make it too, out of sight).
   */
  readonly prepare?: { dir: string; file: string; argv: string[]; why: string };
  add(name: string): string[];
  replace(name: string): string[];
  up(name: string): string[];
  /** loading (or reloading) an initiator's conn also brings it up: no separate `up` then */
  readonly loadStarts?: boolean;
  /** exit codes of `up` that are not failures (a command that detaches while the daemon keeps trying) */
  readonly upOkExitCodes?: readonly number[];
  remove(name: string): string[];
  /** run once after the files of removed peers are gone (a daemon that unloads conns by rereading its files) */
  afterRemove?(): string[];
  rereadSecrets(): string[];
  /**
   * Rekey the IKE SA of an established connection (new keys, fresh DH) without
   * touching its child SAs: no packet is lost. Used after a credential change,
   * once this side accepts the new credential.
   */
  rekey(name: string): string[];
  /** argv whose output lists the conns the daemon has loaded (read by `parseLoaded`) */
  loadedCommand(): string[];
  parseLoaded(output: string): ObservedIke['loaded'];
  /** argv whose output lists the established child SAs and their bytes (read by `parseTraffic`): all a health round asks the daemon */
  trafficCommand(): string[];
  parseTraffic(output: string): ObservedIke['traffic'];
  versionCommand(): string[];
  parseVersion(output: string): string | undefined;
}
