import type { Step } from '../../engine/step.js';
import { BosunError } from '../../errors.js';
import type { HostProbe } from '../../host/probe.js';
import type { IpsecSpec, NodeSpec } from '../../spec/node-spec.js';
import type { Phase } from '../types.js';
import type { IpsecBackend, ObservedIke, PeerConn } from './backend.js';
import { OWNED_HEADER, libreswan, readSealedMarker, sealedMarker } from './libreswan.js';
import { strongswan } from './strongswan.js';
import { POLICY_FILE, POLICY_TABLE, POLICY_UNIT, POLICY_UNIT_FILE, renderPolicy, renderPolicyUnit } from './policy.js';

/**
 * The network phase: an IPv6 IPsec mesh (IKEv2, transport mode, ESP AES-GCM)
 * from this node to every peer. It changes only what differs: a new peer gets
 * its conn added, a removed peer's conn is deleted, a changed conn is
 * replaced; every other tunnel keeps carrying traffic.
 */

export interface ObservedNetwork {
  ike: ObservedIke;
  /** bosun-owned files in the config dir, by name: a conn file's content, or a secrets file's sealed marker (never its key) */
  files: Record<string, string>;
  /** files in the config dir with a name like ours that someone else wrote */
  foreign: string[];
  policy?: string;
  policyUnit?: string;
  /** bosun's drop-in for the daemon's unit */
  daemonDropIn?: string;
  policyLoaded: boolean;
  policyEnabled: boolean;
  /** the backend's one-time set-up is done (or it needs none) */
  prepared: boolean;
}

const BACKENDS: Record<string, IpsecBackend | undefined> = { libreswan, strongswan };

export function backendFor(s: IpsecSpec): IpsecBackend {
  const b = BACKENDS[s.backend];
  if (!b) throw new BosunError('E_INVALID_SPEC', `network: unknown IPsec backend ${s.backend}`);
  return b;
}

export function peerConns(spec: NodeSpec): PeerConn[] {
  const s = spec.network!.ipsec!;
  return s.peers.map((p) => ({
    name: `bosun-${p.node}`,
    localNode: spec.node,
    localAddress: s.address,
    peerNode: p.node,
    peerAddress: p.address,
    initiator: spec.node < p.node,
    psk: p.psk && { secret: p.psk, label: `network.ipsec.peers[${p.node}].psk` },
  }));
}

/** What the network phase looks at: bosun's files, the IKE daemon and its conns, the drop policy (also read by the decommission phase). */
export async function observeNetwork(spec: NodeSpec, probe: HostProbe): Promise<ObservedNetwork> {
  const backend = backendFor(spec.network!.ipsec!);
  if (probe.blank)
    return { ike: { running: false, loaded: [], traffic: {} }, files: {}, foreign: [], policyLoaded: false, policyEnabled: false, prepared: !backend.prepare };
  const files: Record<string, string> = {};
  const foreign: string[] = [];
  for (const name of await probe.listDir(backend.dir)) {
    if (!backend.ownedConn(name)) continue;
    const text = (await probe.readFile(`${backend.dir}/${name}`))?.toString('utf8') ?? '';
    // A file is bosun's by its name and its first line: one that someone else wrote under a
    // name like ours is left alone (and a conn of ours never overwrites it: see plan()).
    if (!text.startsWith(OWNED_HEADER)) {
      foreign.push(name);
      continue;
    }
    files[name] = backend.isSecretsFile(name) ? (readSealedMarker(text) ?? '') : text;
  }
  const unit = await probe.unitState(backend.unit);
  const running = unit.active === 'active';
  let ike: ObservedIke = { running, loaded: [], traffic: {}, version: backend.parseVersion((await probe.run(backend.versionCommand())).stdout) };
  if (running) {
    const loaded = backend.parseLoaded((await probe.run(backend.loadedCommand())).stdout);
    ike = { ...ike, loaded, traffic: backend.parseTraffic((await probe.run(backend.trafficCommand())).stdout) };
  }
  const policyUnit = await probe.unitState(POLICY_UNIT);
  return {
    ike,
    files,
    foreign,
    policy: (await probe.readFile(POLICY_FILE))?.toString('utf8'),
    policyUnit: (await probe.readFile(POLICY_UNIT_FILE))?.toString('utf8'),
    daemonDropIn: (await probe.readFile(daemonDropInPath(backend)))?.toString('utf8'),
    policyLoaded: (await probe.run(['nft', 'list', 'table', 'inet', POLICY_TABLE])).exitCode === 0,
    policyEnabled: policyUnit.enabled === 'enabled',
    prepared: !backend.prepare || (await probe.listDir(backend.prepare.dir)).includes(backend.prepare.file),
  };
}

function plan(spec: NodeSpec, obs: ObservedNetwork): Step[] {
  const ipsec = spec.network!.ipsec!;
  const backend = backendFor(ipsec);
  if (ipsec.auth === 'cert')
    return [{ kind: 'pending', phase: 'network', issue: 6, why: 'certificate authentication (NSS database) is not built yet; pre-shared keys are' }];
  const steps: Step[] = [];
  const conns = peerConns(spec);
  for (const conn of conns) {
    for (const path of [backend.confPath(conn), backend.secretsPath(conn)]) {
      const fileName = path.split('/').pop()!;
      if (obs.foreign.includes(fileName))
        throw new BosunError(
          'E_REFUSED',
          `network: ${path} exists and was not written by bosun; leaving it untouched (move it away to let bosun manage the tunnel to ${conn.peerNode}); nothing was changed`,
          { path },
        );
    }
  }

  // 1. The drop policy first: from here on, peer traffic is protected or dropped.
  const policy = renderPolicy(conns.map((c) => c.peerAddress));
  const policyUnit = renderPolicyUnit();
  const dropIn = renderDaemonDropIn();
  if (policyUnit !== obs.policyUnit)
    steps.push({
      kind: 'write',
      phase: 'network',
      path: POLICY_UNIT_FILE,
      mode: 0o644,
      content: policyUnit,
      why: 'load the drop policy at every boot, before the network and the IKE daemon',
    });
  if (dropIn !== obs.daemonDropIn)
    steps.push({
      kind: 'write',
      phase: 'network',
      path: daemonDropInPath(backend),
      mode: 0o644,
      content: dropIn,
      why: `give ${backend.unit} time to start on a slow host`,
    });
  if (policyUnit !== obs.policyUnit || dropIn !== obs.daemonDropIn)
    steps.push({ kind: 'unit', phase: 'network', action: 'daemon-reload', why: 'systemd must read the units bosun wrote' });
  if (!obs.policyEnabled || policyUnit !== obs.policyUnit)
    steps.push({ kind: 'unit', phase: 'network', action: 'enable', unit: POLICY_UNIT, why: 'the drop policy must be in force from early boot' });
  if (policy !== obs.policy)
    steps.push({
      kind: 'write',
      phase: 'network',
      path: POLICY_FILE,
      mode: 0o644,
      content: policy,
      why: `drop unprotected traffic to and from ${conns.length} peer${conns.length === 1 ? '' : 's'}`,
    });
  if (policy !== obs.policy || !obs.policyLoaded)
    steps.push({ kind: 'exec', phase: 'network', argv: ['nft', '-f', POLICY_FILE], why: 'replace the drop policy in one transaction' });

  // 2. Files for every peer; remember which conns changed.
  const changedConn = new Set<string>();
  let secretsChanged = false;
  const rotated = new Set<string>();
  for (const conn of conns) {
    const confName = backend.confPath(conn).split('/').pop()!;
    const secName = backend.secretsPath(conn).split('/').pop()!;
    const conf = backend.renderConn(conn, obs.ike.version);
    if (obs.files[confName] !== conf) {
      steps.push({
        kind: 'write',
        phase: 'network',
        path: backend.confPath(conn),
        mode: 0o644,
        content: conf,
        why: `${obs.files[confName] === undefined ? 'new peer' : 'changed peer'} ${conn.peerNode}`,
      });
      changedConn.add(conn.name);
    }
    // Sealed keys are compared by the marker of the sealed value they were written from.
    const secrets = backend.renderSecrets(conn);
    if (conn.psk && obs.files[secName] === sealedMarker(conn.psk.secret.sealed)) {
      // unchanged
    } else if (secrets.length > 0) {
      steps.push({
        kind: 'write',
        phase: 'network',
        path: backend.secretsPath(conn),
        mode: 0o600,
        content: secrets,
        why: `pre-shared key for ${conn.peerNode}`,
      });
      secretsChanged = true;
      if (obs.files[secName] !== undefined) rotated.add(conn.name);
    } else if (obs.files[secName] !== undefined) {
      steps.push({ kind: 'remove', phase: 'network', path: backend.secretsPath(conn), why: `no pre-shared key for ${conn.peerNode} any more` });
    }
  }

  // 3. Peers that left: delete their conns and files; nothing else is touched.
  const wanted = new Set(conns.map((c) => c.name));
  const owned = Object.keys(obs.files)
    .map((f) => backend.ownedConn(f))
    .filter((n): n is string => n !== undefined);
  const gone = [...new Set(owned)].filter((n) => !wanted.has(n)).sort();
  for (const name of gone) {
    if (obs.ike.loaded.includes(name)) steps.push({ kind: 'exec', phase: 'network', argv: backend.remove(name), why: `${name.slice(6)} left the cluster` });
    for (const fileName of Object.keys(obs.files).filter((f) => backend.ownedConn(f) === name))
      steps.push({ kind: 'remove', phase: 'network', path: `${backend.dir}/${fileName}`, why: `${name.slice(6)} left the cluster` });
  }

  // 4. The daemon: start it (it loads every conn file) or load only what changed.
  if (!obs.prepared && backend.prepare)
    steps.push({ kind: 'exec', phase: 'network', argv: backend.prepare.argv, timeoutSeconds: 600, why: backend.prepare.why });
  if (!obs.ike.running) {
    steps.push({
      kind: 'unit',
      phase: 'network',
      action: 'enable-now',
      unit: backend.unit,
      why: 'the IKE daemon loads every conn at start; initiators bring theirs up',
    });
    return steps;
  }
  if (secretsChanged)
    steps.push({ kind: 'exec', phase: 'network', argv: backend.rereadSecrets(), why: 'the daemon rereads the pre-shared keys; SAs already up stay up' });
  // A backend that loads every conn with one command (swanctl) needs it once.
  const load = (argv: string[], why: string): void => {
    if (!steps.some((st) => st.kind === 'exec' && st.argv.join('\0') === argv.join('\0'))) steps.push({ kind: 'exec', phase: 'network', argv, why });
  };
  const unload = backend.afterRemove?.();
  if (gone.length > 0 && unload) load(unload, `the daemon forgets the conn${gone.length === 1 ? '' : 's'} of ${gone.map((n) => n.slice(6)).join(', ')}`);
  for (const conn of conns) {
    const loaded = obs.ike.loaded.includes(conn.name);
    if (!loaded) load(backend.add(conn.name), `load the conn to ${conn.peerNode}`);
    else if (changedConn.has(conn.name)) load(backend.replace(conn.name), `reload the changed conn to ${conn.peerNode}`);
    const up = obs.ike.traffic[conn.name] !== undefined && !changedConn.has(conn.name);
    if (backend.loadStarts && (!loaded || changedConn.has(conn.name))) continue;
    if (conn.initiator && !up)
      steps.push({
        kind: 'exec',
        phase: 'network',
        argv: backend.up(conn.name),
        ...(backend.upOkExitCodes ? { okExitCodes: backend.upOkExitCodes } : {}),
        why: `this node initiates to ${conn.peerNode} (the lower node id does)`,
      });
    else if (conn.initiator && rotated.has(conn.name))
      steps.push({
        kind: 'exec',
        phase: 'network',
        argv: backend.rekey(conn.name),
        why: `new keys for the tunnel to ${conn.peerNode} after the key change; its traffic keeps flowing on the current SA`,
      });
  }
  return steps;
}

export function daemonDropInPath(backend: IpsecBackend): string {
  return `/etc/systemd/system/${backend.unit}.d/bosun.conf`;
}

/**
 * libreswan's unit loads the kernel's IPsec modules and checks its config
 * before pluto starts; on a slow or busy host (seen: 70 s of CPU on an emulated
 * one) that outlasts systemd's default 90 s and the start fails. The drop-in
 * only lengthens that wait.
 */
export function renderDaemonDropIn(): string {
  return `# Written by bosun (network phase).
[Service]
TimeoutStartSec=10min
`;
}

export const networkPhase: Phase<ObservedNetwork> = {
  name: 'network',
  stage: 'network',
  section: (s) => s.network?.ipsec,
  observe: observeNetwork,
  plan,
};

export interface PeerHealth {
  peer: string;
  address: string;
  /** the conn is loaded in the daemon */
  loaded: boolean;
  /** an ESP SA is installed for this peer */
  up: boolean;
  inBytes: number;
  outBytes: number;
  /** this node brings the tunnel up (and the daemon retries it, backing off, while the peer is down) */
  initiator: boolean;
}

/** Per peer: is the conn loaded, is an SA up, and is it carrying traffic (for status reports). */
export function ipsecHealth(spec: NodeSpec, ike: ObservedIke): PeerHealth[] {
  return peerConns(spec).map((c) => {
    const t = ike.traffic[c.name];
    return {
      peer: c.peerNode,
      address: c.peerAddress,
      loaded: ike.loaded.includes(c.name),
      up: t !== undefined,
      inBytes: t?.inBytes ?? 0,
      outBytes: t?.outBytes ?? 0,
      initiator: c.initiator,
    };
  });
}

/**
 * The network phase's part of a health round: the daemon, the drop policy, and every peer's conn and tunnel.
 * It asks only that (one unit state, the daemon's conns and SAs, the policy table), not what planning reads
 * (bosun's files, the daemon's version).
 */
export async function networkHealth(
  spec: NodeSpec,
  probe: HostProbe,
): Promise<{ ike: { running: boolean }; policyLoaded: boolean; peers: PeerHealth[]; problems: string[] }> {
  const backend = backendFor(spec.network!.ipsec!);
  const running = (await probe.unitState(backend.unit)).active === 'active';
  const loaded = running ? backend.parseLoaded((await probe.run(backend.loadedCommand())).stdout) : [];
  const traffic = running ? backend.parseTraffic((await probe.run(backend.trafficCommand())).stdout) : {};
  const policyLoaded = (await probe.run(['nft', 'list', 'table', 'inet', POLICY_TABLE])).exitCode === 0;
  const peers = ipsecHealth(spec, { running, loaded, traffic });
  const problems: string[] = [];
  if (!running) problems.push('network: the IKE daemon is not running; traffic to every peer is dropped until it is back');
  if (!policyLoaded) problems.push('network: the drop policy is not loaded; unprotected traffic between nodes is not blocked');
  for (const p of peers) {
    if (running && !p.up)
      problems.push(`network: no IPsec SA with ${p.peer} (${p.address})${p.initiator ? '; this node keeps retrying' : `; ${p.peer} initiates`}`);
  }
  return { ike: { running }, policyLoaded, peers, problems };
}
