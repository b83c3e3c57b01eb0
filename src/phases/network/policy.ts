/**
 * Traffic between cluster nodes travels in IPsec or not at all. An nftables
 * table drops any packet to or from a peer address that is not protected by
 * an SA, except what IPsec itself needs (IKE, ESP, neighbour discovery). It is
 * loaded by its own unit early at boot, before the network and before the IKE daemon (pluto or charon),
 * and it does not depend on pluto, so a pluto restart or crash never lets
 * plaintext through: traffic waits for the tunnel instead.
 */
export const POLICY_TABLE = 'bosun_ipsec';
export const POLICY_FILE = '/etc/bosun/ipsec-policy.nft';
export const POLICY_UNIT = 'bosun-ipsec-policy.service';
export const POLICY_UNIT_FILE = `/etc/systemd/system/${POLICY_UNIT}`;

const ND = '{ nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert }';

export function renderPolicy(peerAddresses: readonly string[]): string {
  const elements = peerAddresses.length > 0 ? `\n\t\telements = { ${[...peerAddresses].sort().join(', ')} }` : '';
  return `# Written by bosun (network phase): unprotected traffic between cluster nodes is dropped.
# Loading this file replaces the whole table in one transaction.
table inet ${POLICY_TABLE} {}
delete table inet ${POLICY_TABLE}
table inet ${POLICY_TABLE} {
\tset peers {
\t\ttype ipv6_addr${elements}
\t}
\tchain output {
\t\ttype filter hook output priority 0; policy accept;
\t\tip6 daddr @peers meta l4proto esp accept
\t\tip6 daddr @peers udp dport { 500, 4500 } accept
\t\tip6 daddr @peers icmpv6 type ${ND} accept
\t\tip6 daddr @peers rt ipsec missing counter drop
\t}
\tchain input {
\t\ttype filter hook input priority 0; policy accept;
\t\tip6 saddr @peers meta l4proto esp accept
\t\tip6 saddr @peers udp dport { 500, 4500 } accept
\t\tip6 saddr @peers icmpv6 type ${ND} accept
\t\tip6 saddr @peers meta secpath missing counter drop
\t}
}
`;
}

export function renderPolicyUnit(nftPath = '/usr/sbin/nft'): string {
  return `# Written by bosun (network phase).
[Unit]
Description=bosun: drop unprotected traffic between cluster nodes
DefaultDependencies=no
Before=network-pre.target ipsec.service strongswan.service
Wants=network-pre.target
ConditionPathExists=${POLICY_FILE}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=${nftPath} -f ${POLICY_FILE}

[Install]
WantedBy=sysinit.target
`;
}
