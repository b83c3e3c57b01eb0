import { createHash } from 'node:crypto';
import type { IpsecBackend } from './backend.js';

const DIR = '/etc/ipsec.d';
export const NSS_DIR = '/var/lib/ipsec/nss';
/** Every file bosun writes here starts with this. */
export const OWNED_HEADER = '# Written by bosun (network phase)';

/**
 * libreswan: one conn and one secrets file per peer under /etc/ipsec.d (both
 * read by the stock ipsec.conf and ipsec.secrets includes), loaded one at a
 * time with `ipsec auto`, so adding or removing a peer never restarts pluto
 * or touches another tunnel.
 */
export const libreswan: IpsecBackend = {
  id: 'libreswan',
  unit: 'ipsec.service',
  dir: DIR,
  confPath: (c) => `${DIR}/${c.name}.conf`,
  secretsPath: (c) => `${DIR}/${c.name}.secrets`,
  ownedConn(fileName) {
    const m = /^(bosun-[a-z0-9-]+)\.(conf|secrets)$/.exec(fileName);
    return m?.[1];
  },
  isSecretsFile: (fileName) => fileName.endsWith('.secrets'),

  renderConn(conn, version) {
    // libreswan 5 derives the address family from the addresses and calls these keywords obsolete.
    const v4 = version === undefined || Number(version.split('.')[0]) < 5;
    return [
      `${OWNED_HEADER}: IPsec between ${conn.localNode} and ${conn.peerNode}. Edits are overwritten.`,
      `conn ${conn.name}`,
      '\ttype=transport',
      '\tauthby=secret',
      ...(v4 ? ['\thostaddrfamily=ipv6', '\tclientaddrfamily=ipv6'] : []),
      `\tleft=${conn.localAddress}`,
      `\tleftid=@${conn.localNode}`,
      `\tright=${conn.peerAddress}`,
      `\trightid=@${conn.peerNode}`,
      '\tike=aes_gcm256-sha2_256;dh19',
      '\tesp=aes_gcm256',
      '\tikelifetime=8h',
      '\tsalifetime=1h',
      // IKEv2 liveness: a probe after 10 s of silence; a peer that does not answer within
      // retransmit-timeout (below) is dead. pluto ignores dpdtimeout= for IKEv2 (and warns).
      '\tdpddelay=10',
      // The initiator restarts a tunnel whose peer stopped answering; the responder only
      // clears it and waits, so the two never initiate at once.
      `\tdpdaction=${conn.initiator ? 'restart' : 'clear'}`,
      // A peer that is down is retried for ever, pluto backing off (0.5 s doubling) within each 30 s attempt, so a peer that comes back is found within about half a minute.
      '\tkeyingtries=%forever',
      '\tretransmit-timeout=30s',
      // The initiator keeps the tunnel up; the responder only accepts it.
      `\tauto=${conn.initiator ? 'start' : 'add'}`,
      '',
    ].join('\n');
  },

  renderSecrets(conn) {
    if (!conn.psk) return [];
    // "0s" + base64 holds any bytes, so a PSK can never break out of its line.
    return [
      `${OWNED_HEADER}. Root-only.\n# ${sealedMarker(conn.psk.secret.sealed)}\n@${conn.localNode} @${conn.peerNode} : PSK 0s`,
      { ...conn.psk, encoding: 'base64' },
      '\n',
    ];
  },

  prepare: {
    dir: NSS_DIR,
    file: 'cert9.db',
    argv: ['ipsec', 'initnss', '--nssdir', NSS_DIR],
    why: "create pluto's NSS database (keys and certificates) before pluto's first start",
  },
  add: (name) => ['ipsec', 'auto', '--add', name],
  replace: (name) => ['ipsec', 'auto', '--replace', name],
  up: (name) => ['ipsec', 'auto', '--asynchronous', '--up', name],
  remove: (name) => ['ipsec', 'auto', '--delete', name],
  rereadSecrets: () => ['ipsec', 'auto', '--rereadsecrets'],
  // A child SA rekey opens a window on the responder (it sends on the new SA before the
  // initiator has installed it) in which a packet can be lost; an IKE SA rekey leaves the
  // child SAs alone.
  rekey: (name) => ['ipsec', 'whack', '--asynchronous', '--rekey-ike', '--name', name],
  loadedCommand: () => ['ipsec', 'status'],
  parseLoaded: (status) => [...new Set([...status.matchAll(/^(?:\d{3} )?"(bosun-[a-z0-9-]+)":/gm)].map((found) => found[1]!))].sort(),
  trafficCommand: () => ['ipsec', 'trafficstatus'],
  parseTraffic(traffic) {
    const t: Record<string, { inBytes: number; outBytes: number }> = {};
    for (const line of traffic.split('\n')) {
      const m = /"(bosun-[a-z0-9-]+)".*\binBytes=(\d+), outBytes=(\d+)/.exec(line);
      if (!m) continue;
      const prev = t[m[1]!] ?? { inBytes: 0, outBytes: 0 };
      t[m[1]!] = { inBytes: prev.inBytes + Number(m[2]), outBytes: prev.outBytes + Number(m[3]) };
    }
    return t;
  },

  versionCommand: () => ['ipsec', '--version'],
  parseVersion: (out) => /Libreswan (?:U|v)?(\d+\.\d+)/i.exec(out)?.[1],
};

/**
 * A secrets file records which sealed value it was written from, so a plan can
 * tell an unchanged key from a changed one without opening either. The hash
 * is of the sealed ciphertext, which says nothing about the key itself.
 */
export function sealedMarker(sealed: string): string {
  return `sealed-sha256: ${createHash('sha256').update(sealed).digest('hex')}`;
}

export function readSealedMarker(secretsFile: string): string | undefined {
  return /^# (sealed-sha256: [0-9a-f]{64})$/m.exec(secretsFile)?.[1];
}
