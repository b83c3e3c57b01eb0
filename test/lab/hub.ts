// The lab's private link: a user-space Ethernet hub on 127.0.0.1.
//
// Every VM's second NIC is a qemu `-netdev dgram` whose frames arrive here as
// UDP datagrams, one socket per VM (so the sender is known by the socket, not
// by a MAC it could forge). Each frame is forwarded to every other attached
// VM, counted (by EtherType and, for IPv6, by upper-layer protocol after the
// extension headers: ESP = 50, ICMPv6 = 58), optionally written to a pcap
// file, and dropped instead when a test has cut that VM's link. Nothing here
// ever sends to an address other than 127.0.0.1.
import { createSocket, type Socket } from 'node:dgram';
import { createWriteStream, type WriteStream } from 'node:fs';
import { connect } from 'node:net';

export const ETHERTYPE_IPV4 = 0x0800;
export const ETHERTYPE_ARP = 0x0806;
export const ETHERTYPE_IPV6 = 0x86dd;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;
export const IPPROTO_ESP = 50;
export const IPPROTO_AH = 51;
export const IPPROTO_ICMPV6 = 58;

export interface LinkCounters {
  frames: number;
  bytes: number;
  /** Frames by EtherType, keys as lowercase hex such as '0x86dd'. */
  byEtherType: Record<string, number>;
  /** IPv6 frames by upper-layer protocol (decimal next-header value after extension headers), e.g. '50' for ESP. */
  byIpv6Proto: Record<string, number>;
  /** IPv4 frames by protocol number. */
  byIpv4Proto: Record<string, number>;
  /** Frames dropped because the link was cut. */
  dropped: number;
}

export interface HubCounters {
  /** Every frame the hub received from any VM. */
  total: LinkCounters;
  /** Frames received from each VM (what it sent onto the link). */
  byNode: Record<string, LinkCounters>;
}

/** What tests can do with the link, whether the hub runs in this process or in another one. */
export interface HubControl {
  counters(): Promise<HubCounters>;
  resetCounters(): Promise<void>;
  /** Drop every frame from and to this node until heal(). */
  cut(node: string): Promise<void>;
  heal(node: string): Promise<void>;
}

export interface HubPort {
  node: string;
  /** The hub's UDP port for this node (qemu's remote.port). */
  hubPort: number;
  /** qemu's own UDP port (local.port); 0 until attached. */
  vmPort: number;
}

export type FrameListener = (from: string, frame: Buffer) => void;

const LOOPBACK = '127.0.0.1';

export function emptyCounters(): LinkCounters {
  return { frames: 0, bytes: 0, byEtherType: {}, byIpv6Proto: {}, byIpv4Proto: {}, dropped: 0 };
}

/** Classifies one Ethernet frame: EtherType and the IP upper-layer protocol (null if not IP or truncated). */
export function classifyFrame(frame: Buffer): { etherType: number; ipVersion: 4 | 6 | null; proto: number | null } {
  if (frame.length < 14) return { etherType: -1, ipVersion: null, proto: null };
  let off = 12;
  let etherType = frame.readUInt16BE(off);
  while ((etherType === 0x8100 || etherType === 0x88a8) && frame.length >= off + 6) {
    off += 4;
    etherType = frame.readUInt16BE(off);
  }
  off += 2;
  if (etherType === ETHERTYPE_IPV4) {
    if (frame.length < off + 20) return { etherType, ipVersion: 4, proto: null };
    return { etherType, ipVersion: 4, proto: frame[off + 9] ?? null };
  }
  if (etherType !== ETHERTYPE_IPV6 || frame.length < off + 40) return { etherType, ipVersion: etherType === ETHERTYPE_IPV6 ? 6 : null, proto: null };
  let next = frame[off + 6] as number;
  let p = off + 40;
  // Walk extension headers: hop-by-hop, routing, destination options, fragment, AH.
  for (let hops = 0; hops < 8; hops++) {
    if (next === 0 || next === 43 || next === 60) {
      if (frame.length < p + 2) return { etherType, ipVersion: 6, proto: null };
      const following = frame[p] as number;
      p += ((frame[p + 1] as number) + 1) * 8;
      next = following;
    } else if (next === 44) {
      if (frame.length < p + 8) return { etherType, ipVersion: 6, proto: null };
      const following = frame[p] as number;
      // Only the first fragment carries the upper-layer header; count the protocol anyway.
      p += 8;
      next = following;
    } else if (next === IPPROTO_AH) {
      if (frame.length < p + 2) return { etherType, ipVersion: 6, proto: null };
      const following = frame[p] as number;
      p += ((frame[p + 1] as number) + 2) * 4;
      next = following;
    } else {
      break;
    }
  }
  return { etherType, ipVersion: 6, proto: next };
}

function count(c: LinkCounters, frame: Buffer, dropped: boolean): void {
  if (dropped) {
    c.dropped++;
    return;
  }
  c.frames++;
  c.bytes += frame.length;
  const k = classifyFrame(frame);
  const et = `0x${k.etherType.toString(16).padStart(4, '0')}`;
  c.byEtherType[et] = (c.byEtherType[et] ?? 0) + 1;
  if (k.proto !== null) {
    const table = k.ipVersion === 6 ? c.byIpv6Proto : c.byIpv4Proto;
    table[String(k.proto)] = (table[String(k.proto)] ?? 0) + 1;
  }
}

interface Member extends HubPort {
  socket: Socket;
  counters: LinkCounters;
  cut: boolean;
}

export interface HubOptions {
  /** Write every forwarded frame (first snapLen bytes) to this pcap file. */
  pcapPath?: string;
  snapLen?: number;
}

/** The hub itself. Create with Hub.start(nodeNames), then attach() each VM's qemu port before booting it. */
export class Hub implements HubControl {
  readonly #members = new Map<string, Member>();
  #total = emptyCounters();
  readonly #listeners = new Set<FrameListener>();
  #pcap: WriteStream | undefined;
  readonly #snapLen: number;
  #closed = false;

  private constructor(opts: HubOptions) {
    this.#snapLen = opts.snapLen ?? 256;
    if (opts.pcapPath !== undefined) {
      this.#pcap = createWriteStream(opts.pcapPath);
      const header = Buffer.alloc(24);
      header.writeUInt32LE(0xa1b2c3d4, 0);
      header.writeUInt16LE(2, 4);
      header.writeUInt16LE(4, 6);
      header.writeUInt32LE(this.#snapLen, 16);
      header.writeUInt32LE(1, 20); // LINKTYPE_ETHERNET
      this.#pcap.write(header);
    }
  }

  static async start(nodes: readonly string[], opts: HubOptions = {}): Promise<Hub> {
    const hub = new Hub(opts);
    try {
      for (const node of nodes) await hub.#add(node);
    } catch (err) {
      hub.stop();
      throw err;
    }
    return hub;
  }

  async #add(node: string): Promise<void> {
    if (this.#members.has(node)) throw new Error(`hub: node '${node}' is already a member`);
    const socket = createSocket({ type: 'udp4' });
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(0, LOOPBACK, () => {
        socket.off('error', reject);
        resolve();
      });
    });
    const member: Member = { node, hubPort: socket.address().port, vmPort: 0, socket, counters: emptyCounters(), cut: false };
    socket.on('message', (frame, rinfo) => this.#onFrame(member, frame, rinfo.address, rinfo.port));
    socket.on('error', () => {
      /* a VM that went away makes sends fail with ECONNREFUSED; nothing to do */
    });
    this.#members.set(node, member);
  }

  /** The ports, for qemu's -netdev dgram options. */
  ports(): HubPort[] {
    return [...this.#members.values()].map(({ node, hubPort, vmPort }) => ({ node, hubPort, vmPort }));
  }

  port(node: string): HubPort {
    const m = this.#member(node);
    return { node, hubPort: m.hubPort, vmPort: m.vmPort };
  }

  /** Tells the hub which local UDP port this node's qemu uses (again after each restart of qemu). */
  attach(node: string, vmPort: number): void {
    this.#member(node).vmPort = vmPort;
  }

  /** Calls listener(from, frame) for every frame received (before forwarding, also for cut links). */
  onFrame(listener: FrameListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #member(node: string): Member {
    const m = this.#members.get(node);
    if (!m) throw new Error(`hub: no node '${node}' (members: ${[...this.#members.keys()].join(', ')})`);
    return m;
  }

  #onFrame(from: Member, frame: Buffer, address: string, port: number): void {
    if (this.#closed || address !== LOOPBACK) return;
    if (from.vmPort === 0)
      from.vmPort = port; // not attached explicitly: learn it
    else if (port !== from.vmPort) return; // a stale qemu, or something else on loopback
    for (const l of this.#listeners) l(from.node, frame);
    const dropped = from.cut;
    count(from.counters, frame, dropped);
    count(this.#total, frame, dropped);
    if (dropped) return;
    this.#writePcap(frame);
    for (const to of this.#members.values()) {
      if (to === from || to.vmPort === 0 || to.cut) continue;
      to.socket.send(frame, to.vmPort, LOOPBACK);
    }
  }

  #writePcap(frame: Buffer): void {
    if (!this.#pcap) return;
    const now = Date.now();
    const rec = Buffer.alloc(16);
    rec.writeUInt32LE(Math.floor(now / 1000), 0);
    rec.writeUInt32LE((now % 1000) * 1000, 4);
    const len = Math.min(frame.length, this.#snapLen);
    rec.writeUInt32LE(len, 8);
    rec.writeUInt32LE(frame.length, 12);
    this.#pcap.write(Buffer.concat([rec, frame.subarray(0, len)]));
  }

  countersNow(): HubCounters {
    const byNode: Record<string, LinkCounters> = {};
    for (const m of this.#members.values()) byNode[m.node] = structuredClone(m.counters);
    return { total: structuredClone(this.#total), byNode };
  }

  counters(): Promise<HubCounters> {
    return Promise.resolve(this.countersNow());
  }

  resetCounters(): Promise<void> {
    this.#total = emptyCounters();
    for (const m of this.#members.values()) m.counters = emptyCounters();
    return Promise.resolve();
  }

  cut(node: string): Promise<void> {
    this.#member(node).cut = true;
    return Promise.resolve();
  }

  heal(node: string): Promise<void> {
    this.#member(node).cut = false;
    return Promise.resolve();
  }

  stop(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const m of this.#members.values()) m.socket.close();
    this.#pcap?.end();
  }
}

/** Frames of one protocol in a counters snapshot, for a node or (node undefined) the whole link. */
export function ipv6Frames(c: HubCounters, proto: number, node?: string): number {
  const link = node === undefined ? c.total : c.byNode[node];
  return link?.byIpv6Proto[String(proto)] ?? 0;
}

/** b - a, protocol by protocol: what happened on the link between two snapshots. */
export function diffCounters(a: HubCounters, b: HubCounters): HubCounters {
  const sub = (x: LinkCounters | undefined, y: LinkCounters): LinkCounters => {
    const base = x ?? emptyCounters();
    const table = (p: Record<string, number>, q: Record<string, number>): Record<string, number> =>
      Object.fromEntries(Object.entries(q).map(([k, v]) => [k, v - (p[k] ?? 0)]));
    return {
      frames: y.frames - base.frames,
      bytes: y.bytes - base.bytes,
      byEtherType: table(base.byEtherType, y.byEtherType),
      byIpv6Proto: table(base.byIpv6Proto, y.byIpv6Proto),
      byIpv4Proto: table(base.byIpv4Proto, y.byIpv4Proto),
      dropped: y.dropped - base.dropped,
    };
  };
  return {
    total: sub(a.total, b.total),
    byNode: Object.fromEntries(Object.entries(b.byNode).map(([n, c]) => [n, sub(a.byNode[n], c)])),
  };
}

/**
 * HubControl for a hub running in its own process (hub-main.ts, used by
 * detached labs): one JSON line request and one reply per connection to its
 * unix socket, so holding a HubClient never keeps this process alive.
 */
export class HubClient implements HubControl {
  readonly #path: string;

  constructor(socketPath: string) {
    this.#path = socketPath;
  }

  request(body: Record<string, unknown>, timeoutMs = 10_000): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const socket = connect(this.#path);
      let buf = '';
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`hub: no reply from ${this.#path} within ${timeoutMs} ms`));
      }, timeoutMs);
      socket.setEncoding('utf8');
      socket.on('connect', () => socket.write(JSON.stringify(body) + '\n'));
      socket.on('data', (d: string) => {
        buf += d;
        const nl = buf.indexOf('\n');
        if (nl < 0) return;
        clearTimeout(timer);
        socket.end();
        try {
          const reply = JSON.parse(buf.slice(0, nl)) as Record<string, unknown>;
          if (reply.ok === true) resolve(reply);
          else reject(new Error(`hub: ${String(reply.error)}`));
        } catch (err) {
          reject(err instanceof Error ? err : new Error(String(err)));
        }
      });
      socket.on('error', (err) => {
        clearTimeout(timer);
        reject(new Error(`hub: cannot reach ${this.#path}: ${err.message}`));
      });
    });
  }

  async counters(): Promise<HubCounters> {
    return (await this.request({ op: 'counters' })).counters as HubCounters;
  }

  async resetCounters(): Promise<void> {
    await this.request({ op: 'reset' });
  }

  async cut(node: string): Promise<void> {
    await this.request({ op: 'cut', node });
  }

  async heal(node: string): Promise<void> {
    await this.request({ op: 'heal', node });
  }

  async attach(node: string, vmPort: number): Promise<void> {
    await this.request({ op: 'attach', node, vmPort });
  }

  close(): void {
    /* nothing held open */
  }
}
