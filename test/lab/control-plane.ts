// A small control plane for the lab, behind `bosun lab up` and the scenario
// test: it starts the real agent (`bosun run`) in a VM, publishes each node's
// desired state signed with a lab control-plane key (secrets sealed to each
// VM's own key), and records what every agent reports on bosun.status and
// bosun.events, with the time each report arrived, so a test can wait for and
// assert on them.
//
//   const cp = await ControlPlane.open(lab.dir, { out });
//   const id = await cp.startAgent(vm, { objectStorage: {...} });
//   await cp.publish(spec);                          // signed envelope on bosun.desired
//   await cp.waitFor('node-a healthy', (r) => r.node === 'node-a' && healthOk(r), 600_000);
//   await cp.close();
import { createPublicKey, generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import kafkajs from 'kafkajs';
import { ed25519PrivateFromPem, signEnvelope } from '../../src/bus/envelope.js';
import type { SignedReport } from '../../src/bus/reporter.js';
import { publicKeyString, seal, x25519PublicFromString } from '../../src/identity/seal.js';
import { requireServices, type ServiceEnv } from '../services/env.js';
import { GUEST_BOSUN, GUEST_HOST_ADDRESS, repoRoot, type Lab, type Vm } from './driver.js';

const { Kafka, logLevel } = kafkajs;
export const LAB_TOPICS = { desired: 'bosun.desired', status: 'bosun.status', events: 'bosun.events' };
export const CONTROL_PLANE_KEY_ID = 'lab-control-plane';

/** One message an agent published, decoded, with the host time it arrived. */
export interface Report {
  topic: 'status' | 'events';
  node: string;
  /** host clock, ms since the epoch, when the watcher got it */
  at: number;
  body: Record<string, any>;
}

export interface AgentIdentity {
  sealingKey: string;
  /** "ed25519:..." host key (peerServe clients, restore.peerKey) */
  signingKey: string;
  /** host clock when `bosun run` was started in the guest */
  startedAt: number;
}

async function controlPlaneKey(runDir: string): Promise<KeyObject> {
  const file = join(runDir, 'control-plane.pem');
  if (existsSync(file)) return ed25519PrivateFromPem(await readFile(file));
  const { privateKey } = generateKeyPairSync('ed25519');
  await writeFile(file, privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
  return privateKey;
}

async function guestOk(vm: Vm, argv: string[], stdin?: string): Promise<string> {
  const r = await vm.exec(argv, { timeoutMs: 120_000, ...(stdin !== undefined ? { stdin } : {}) });
  if (r.exitCode !== 0) throw new Error(`${vm.name}: ${argv.join(' ')} failed (${r.exitCode}): ${r.stderr.trim()}`);
  return r.stdout;
}

/** A one-line description of a report, for the progress output. */
export function describeReport(r: Report): string {
  const b = r.body;
  if (r.topic === 'events') {
    if (b.kind === 'applied')
      return `applied version ${b.version} (${b.steps} steps, stages ${(b.stages as string[]).join(' ')}${b.durationMs !== undefined ? `, ${b.durationMs} ms` : ''})`;
    if (b.kind === 'apply-failed') return `apply of version ${b.version} failed: ${b.message}`;
    return `${b.kind}: ${b.reason ?? ''} ${b.message ?? ''}`;
  }
  const h = b.health as { ok?: boolean; problems?: string[] } | undefined;
  const a = b.applying as { version: number; step: string } | null | undefined;
  const rs = b.restore as { state: string; phase?: string; percent: number } | null | undefined;
  const last = b.lastApply as { result?: string; version?: number; error?: { message?: string } } | null | undefined;
  const failed = last?.result === 'failed' ? last : undefined;
  return (
    `status: applied ${b.appliedVersion ?? 'none'}, wanted ${b.wantedVersion ?? 'none'}${h ? `, health ${h.ok ? 'ok' : (h.problems ?? []).join('; ')}` : ''}${b.lifecycle ? `, lifecycle ${b.lifecycle.state}` : ''}` +
    (a ? `, now ${a.step}` : '') +
    (a && rs?.state === 'running' ? ` (restore ${rs.phase ?? ''} ${rs.percent} %)` : '') +
    (failed && !a ? `, last apply (version ${failed.version}) failed: ${failed.error?.message ?? ''}` : '')
  );
}

export class ControlPlane {
  readonly reports: Report[] = [];
  readonly identities = new Map<string, AgentIdentity>();
  #waiters = new Set<() => void>();

  private constructor(
    readonly env: ServiceEnv,
    readonly kafka: InstanceType<typeof Kafka>,
    readonly producer: kafkajs.Producer,
    readonly consumer: kafkajs.Consumer,
    readonly key: KeyObject,
    readonly out: Writable | undefined,
  ) {}

  /** Creates the topics if missing, loads or makes the control-plane key in runDir, and starts watching status and events (from now on). */
  static async open(runDir: string, opts: { out?: Writable } = {}): Promise<ControlPlane> {
    const env = await requireServices();
    const kafka = new Kafka({ clientId: 'bosun-lab-control-plane', brokers: env.kafkaBrokers, logLevel: logLevel.NOTHING });
    const admin = kafka.admin();
    await admin.connect();
    try {
      const existing = await admin.listTopics();
      await admin.createTopics({
        waitForLeaders: true,
        topics: [
          { topic: LAB_TOPICS.desired, numPartitions: 12, configEntries: [{ name: 'cleanup.policy', value: 'compact' }] },
          { topic: LAB_TOPICS.status, numPartitions: 3, configEntries: [{ name: 'cleanup.policy', value: 'compact' }] },
          { topic: LAB_TOPICS.events, numPartitions: 3 },
        ].filter((t) => !existing.includes(t.topic)),
      });
    } finally {
      await admin.disconnect();
    }
    const producer = kafka.producer();
    await producer.connect();
    const consumer = kafka.consumer({ groupId: `bosun-lab-watch-${randomBytes(4).toString('hex')}` });
    const cp = new ControlPlane(env, kafka, producer, consumer, await controlPlaneKey(runDir), opts.out);
    await consumer.connect();
    await consumer.subscribe({ topics: [LAB_TOPICS.status, LAB_TOPICS.events], fromBeginning: false });
    await consumer.run({
      eachMessage: async ({ topic, message }) => {
        if (!message.value) return;
        const r = JSON.parse(message.value.toString()) as SignedReport;
        const body = JSON.parse(Buffer.from(r.payload, 'base64url').toString()) as Record<string, any>;
        const report: Report = { topic: topic === LAB_TOPICS.events ? 'events' : 'status', node: String(body.node), at: Date.now(), body };
        cp.reports.push(report);
        cp.out?.write(`[${report.node}] ${describeReport(report)}\n`);
        for (const w of cp.#waiters) w();
        await Promise.resolve();
      },
    });
    // Let the group join before anything is published, so no report is missed.
    await new Promise<void>((resolve) => {
      const off = consumer.on(consumer.events.GROUP_JOIN, () => {
        off();
        resolve();
      });
      setTimeout(resolve, 15_000);
    });
    return cp;
  }

  get publicKey(): string {
    return publicKeyString('ed25519', createPublicKey(this.key));
  }

  /** The Kafka address the guests use (the lab listener through guestfwd). */
  get guestKafka(): string {
    return `${GUEST_HOST_ADDRESS}:${this.env.kafkaLabListener?.split(':')[1] ?? '19094'}`;
  }

  /** Writes /etc/bosun/agent.json (plus extra settings), reads the VM's identity, starts `bosun run` as a transient unit. */
  async startAgent(vm: Vm, extra: Record<string, unknown> = {}): Promise<AgentIdentity> {
    const settings = {
      node: vm.name,
      stateDir: '/var/lib/bosun',
      kafka: { brokers: [this.guestKafka] },
      topics: LAB_TOPICS,
      trustedKeys: [{ id: CONTROL_PLANE_KEY_ID, publicKey: this.publicKey }],
      ...extra,
    };
    await guestOk(vm, ['sh', '-c', 'mkdir -p /etc/bosun && cat > /etc/bosun/agent.json'], JSON.stringify(settings, null, 2));
    const ids = JSON.parse(await guestOk(vm, [...GUEST_BOSUN, 'identity', '--json'])) as { sealingKey: string; signingKey: string };
    await vm.exec(['systemctl', 'stop', 'bosun-lab-agent-run.service'], { timeoutMs: 60_000 });
    const startedAt = Date.now();
    await guestOk(vm, ['systemd-run', '--unit=bosun-lab-agent-run', '--collect', '-p', 'Restart=on-failure', ...GUEST_BOSUN, 'run']);
    const id = { sealingKey: ids.sealingKey, signingKey: ids.signingKey, startedAt };
    this.identities.set(vm.name, id);
    this.out?.write(`[${vm.name}] bosun run started (sealing key ${id.sealingKey})\n`);
    return id;
  }

  /** A secret sealed to node's key (startAgent first). */
  seal(node: string, secret: string | Buffer): { sealed: string } {
    const id = this.identities.get(node);
    if (!id) throw new Error(`control plane: no identity for ${node}; start its agent first`);
    return { sealed: seal(x25519PublicFromString(id.sealingKey), typeof secret === 'string' ? Buffer.from(secret) : secret) };
  }

  /** Signs spec and publishes it on bosun.desired under its node id. */
  async publish(spec: Record<string, any>): Promise<void> {
    await this.producer.send({
      topic: LAB_TOPICS.desired,
      messages: [{ key: String(spec.node), value: JSON.stringify(signEnvelope(spec as never, CONTROL_PLANE_KEY_ID, this.key)) }],
    });
    this.out?.write(`[lab] published version ${spec.version} for ${spec.node}\n`);
  }

  /** Reports so far that match. */
  find(pred: (r: Report) => boolean): Report[] {
    return this.reports.filter(pred);
  }

  /**
   * What a timeout shows: the last reports of each node named in what was
   * awaited (a node that went quiet would otherwise be hidden behind the
   * others' health rounds: "0 reports since the wait began" says so), then
   * the last few of all.
   */
  #lastReports(what: string, since: number): string {
    const line = (r: Report) => `  ${new Date(r.at).toISOString().slice(11, 19)} [${r.node}] ${describeReport(r).slice(0, 400)}`;
    const named = [...new Set(what.match(/\bnode-[a-z0-9-]+/g) ?? [])];
    const parts = named.map((n) => {
      const all = this.reports.filter((r) => r.node === n);
      const recent = all.filter((r) => r.at >= since);
      const head = `${n}: ${recent.length} reports since the wait began (${all.length} in all)${all.length > 0 ? `, last at ${new Date(all.at(-1)!.at).toISOString().slice(11, 19)}` : ''}`;
      // Its events first (failures carry their message), then its newest statuses.
      const events = all.filter((r) => r.topic === 'events').slice(-6);
      const statuses = all.filter((r) => r.topic !== 'events').slice(-3);
      return [head, ...[...events, ...statuses].sort((a, b) => a.at - b.at).map(line)].join('\n');
    });
    return [...parts, `last reports of all nodes:`, ...this.reports.slice(-6).map(line)].join('\n');
  }

  /** The first report (already received or still to come) that matches, or an error naming what was awaited and the node's last reports. */
  async waitFor(what: string, pred: (r: Report) => boolean, timeoutMs: number, since = 0): Promise<Report> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.reports.find((r) => r.at >= since && pred(r));
      if (hit) return hit;
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`control plane: timed out after ${Math.round(timeoutMs / 1000)} s waiting for ${what}\n${this.#lastReports(what, since)}`);
      }
      await new Promise<void>((resolve) => {
        const done = () => {
          this.#waiters.delete(done);
          clearTimeout(timer);
          resolve();
        };
        const timer = setTimeout(done, Math.min(left, 2000));
        this.#waiters.add(done);
      });
    }
  }

  async close(): Promise<void> {
    await this.consumer.disconnect().catch(() => undefined);
    await this.producer.disconnect().catch(() => undefined);
  }
}

/** Shortcuts for predicates over reports. */
export const isEvent = (node: string, kind: string, version?: number) => (r: Report) =>
  r.topic === 'events' && r.node === node && r.body.kind === kind && (version === undefined || r.body.version === version);
export const isHealthy = (node: string, version?: number) => (r: Report) =>
  r.topic === 'status' &&
  r.node === node &&
  (r.body.health as { ok?: boolean } | undefined)?.ok === true &&
  (version === undefined || r.body.appliedVersion === version);

/** An example spec (examples/<node>.json) read as plain JSON. */
export async function readExample(node: string): Promise<Record<string, any>> {
  return JSON.parse(await readFile(join(repoRoot(), 'examples', `${node}.json`), 'utf8')) as Record<string, any>;
}

/** Phases `bosun lab up` publishes from the examples (the others need a service image and a backup the plain lab does not have). */
const LAB_SECTIONS = ['disks', 'network'];

/**
 * `bosun lab up`: the agent in every VM of the lab, each node's example spec
 * (its disks and IPsec mesh, with the lab's disks and secrets sealed to each
 * VM), and its reports until every node has applied that version or failed.
 */
export async function runControlPlane(lab: Lab, runDir: string, out: Writable, timeoutMs = 20 * 60_000): Promise<boolean> {
  const cp = await ControlPlane.open(runDir, { out });
  try {
    for (const vm of lab.vms) await cp.startAgent(vm);
    const names = lab.vms.map((v) => v.name);
    const pairPsk: Record<string, string> = {};
    const psk = (a: string, b: string) => (pairPsk[[a, b].sort().join('/')] ??= randomBytes(32).toString('base64'));
    const version = Math.floor(Date.now() / 1000);
    const since = Date.now();
    for (const node of names) {
      const example = await readExample(node);
      const spec: Record<string, any> = { apiVersion: 'bosun/v1', cluster: example.cluster, node, version };
      for (const s of LAB_SECTIONS) spec[s] = example[s];
      spec.disks = {
        ...example.disks,
        devices: { paths: ['/dev/disk/by-id/virtio-bosun-disk1', '/dev/disk/by-id/virtio-bosun-disk2'] },
        luks: { ...example.disks.luks, key: cp.seal(node, randomBytes(64).toString('base64')) },
      };
      spec.network.ipsec.peers = (spec.network.ipsec.peers as { node: string }[])
        .filter((p) => names.includes(p.node))
        .map((p) => ({ ...p, psk: cp.seal(node, psk(node, p.node)) }));
      await cp.publish(spec);
    }
    const done = (n: string) => (r: Report) => isEvent(n, 'applied', version)(r) || isEvent(n, 'apply-failed', version)(r);
    const results = await Promise.all(
      names.map((n) =>
        cp.waitFor(`${n} to apply version ${version}`, done(n), timeoutMs, since).then(
          (r) => r.body.kind as string,
          () => 'no answer',
        ),
      ),
    );
    out.write(`[lab] ${names.map((n, i) => `${n}: ${results[i]}`).join(', ')} after ${Math.round((Date.now() - since) / 1000)} s\n`);
    return results.every((r) => r === 'applied');
  } finally {
    await cp.close();
  }
}
