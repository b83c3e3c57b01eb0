import type { IpsecBackend } from './backend.js';
import { OWNED_HEADER, sealedMarker } from './libreswan.js';

const DIR = '/etc/swanctl/conf.d';

/**
 * strongSwan through swanctl (vici): one connection file and one secrets file
 * per peer under /etc/swanctl/conf.d, which the stock swanctl.conf includes.
 * `swanctl --load-conns` loads what is new or changed and unloads what is gone
 * without touching the SAs of unchanged connections; `--load-creds` rereads
 * the keys. Same choices as the libreswan backend: transport mode, IKEv2,
 * AES-GCM, the lower node id initiates and retries for ever, the other side
 * only answers.
 */
export const strongswan: IpsecBackend = {
  id: 'strongswan',
  unit: 'strongswan.service',
  dir: DIR,
  confPath: (c) => `${DIR}/${c.name}.conf`,
  secretsPath: (c) => `${DIR}/${c.name}.secrets.conf`,
  ownedConn(fileName) {
    return /^(bosun-[a-z0-9-]+?)(\.secrets)?\.conf$/.exec(fileName)?.[1];
  },
  isSecretsFile: (fileName) => fileName.endsWith('.secrets.conf'),

  renderConn(conn) {
    return [
      `${OWNED_HEADER}: IPsec between ${conn.localNode} and ${conn.peerNode}. Edits are overwritten.`,
      'connections {',
      `\t${conn.name} {`,
      '\t\tversion = 2',
      `\t\tlocal_addrs = ${conn.localAddress}`,
      `\t\tremote_addrs = ${conn.peerAddress}`,
      '\t\tproposals = aes256gcm16-prfsha256-ecp256',
      '\t\trekey_time = 8h',
      '\t\tdpd_delay = 10s',
      // 0: retry for ever; charon backs off between its retransmits.
      '\t\tkeyingtries = 0',
      '\t\tlocal {',
      '\t\t\tauth = psk',
      `\t\t\tid = @${conn.localNode}`,
      '\t\t}',
      '\t\tremote {',
      '\t\t\tauth = psk',
      `\t\t\tid = @${conn.peerNode}`,
      '\t\t}',
      '\t\tchildren {',
      `\t\t\t${conn.name} {`,
      '\t\t\t\tmode = transport',
      '\t\t\t\tesp_proposals = aes256gcm16-ecp256',
      '\t\t\t\trekey_time = 1h',
      // The initiator brings the tunnel up when the conn is loaded and again after a dead peer; the responder waits.
      `\t\t\t\tstart_action = ${conn.initiator ? 'start' : 'none'}`,
      `\t\t\t\tdpd_action = ${conn.initiator ? 'restart' : 'clear'}`,
      `\t\t\t\tclose_action = ${conn.initiator ? 'start' : 'none'}`,
      '\t\t\t}',
      '\t\t}',
      '\t}',
      '}',
      '',
    ].join('\n');
  },

  renderSecrets(conn) {
    if (!conn.psk) return [];
    return [
      `${OWNED_HEADER}. Root-only.\n# ${sealedMarker(conn.psk.secret.sealed)}\nsecrets {\n\tike-${conn.name} {\n\t\tid-local = @${conn.localNode}\n\t\tid-peer = @${conn.peerNode}\n\t\tsecret = 0s`,
      { ...conn.psk, encoding: 'base64' },
      '\n\t}\n}\n',
    ];
  },

  // load-conns loads every file: new and changed conns, and unloads those whose file is gone.
  add: () => ['swanctl', '--load-conns'],
  replace: () => ['swanctl', '--load-conns'],
  // Detach after a second: charon keeps trying (keyingtries = 0); exit 1 is that detach, not a failure.
  up: (name) => ['swanctl', '--initiate', '--child', name, '--timeout', '1'],
  upOkExitCodes: [1],
  // start_action = start: charon initiates a conn as it loads it.
  loadStarts: true,
  remove: (name) => ['swanctl', '--terminate', '--ike', name, '--timeout', '10'],
  afterRemove: () => ['swanctl', '--load-conns'],
  rereadSecrets: () => ['swanctl', '--load-creds', '--noprompt'],
  rekey: (name) => ['swanctl', '--rekey', '--ike', name],
  loadedCommand: () => ['swanctl', '--list-conns'],
  parseLoaded: (conns) => [...new Set([...conns.matchAll(/^(bosun-[a-z0-9-]+): IKEv/gm)].map((found) => found[1]!))].sort(),
  trafficCommand: () => ['swanctl', '--list-sas'],
  parseTraffic(sas) {
    const traffic: Record<string, { inBytes: number; outBytes: number }> = {};
    let child: string | undefined;
    for (const line of sas.split('\n')) {
      const c = /^ {2}(bosun-[a-z0-9-]+): #\d+, reqid \d+, (\w+)/.exec(line);
      if (c) {
        child = c[2] === 'INSTALLED' ? c[1] : undefined;
        if (child) traffic[child] ??= { inBytes: 0, outBytes: 0 };
        continue;
      }
      if (/^\S/.test(line) || /^ {2}\S/.test(line)) child = undefined;
      const b = child && /^\s+(in|out)\s+[0-9a-f]+(?:_i|_o)?(?: \([^)]*\))?,\s+(\d+) bytes/.exec(line);
      if (b && child) traffic[child]![b[1] === 'in' ? 'inBytes' : 'outBytes'] += Number(b[2]);
    }
    return traffic;
  },

  versionCommand: () => ['swanctl', '--version'],
  parseVersion: (out) => /strongSwan swanctl (\d+\.\d+)/i.exec(out)?.[1],
};
