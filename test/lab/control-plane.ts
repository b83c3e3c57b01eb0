// A small control plane for the lab, behind `bosun lab up`: it starts the real
// agent (`bosun run`) in every VM of the cluster, publishes each node's desired
// state (the example cluster's specs, with the lab's disks and with secrets
// sealed to each VM's own key) signed with a lab control-plane key, and shows
// what every agent reports on bosun.status and bosun.events until each node has
// applied its spec or failed.
import { generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import kafkajs from 'kafkajs';
import { signEnvelope } from '../../src/bus/envelope.js';
import type { SignedReport } from '../../src/bus/reporter.js';
import { ed25519PrivateFromPem } from '../../src/bus/envelope.js';
import { publicKeyString, seal, x25519PublicFromString } from '../../src/identity/seal.js';
import { requireServices } from '../services/env.js';
import { GUEST_HOST_ADDRESS, repoRoot, type Lab, type Vm } from './driver.js';

const { Kafka, logLevel } = kafkajs;
export const LAB_TOPICS = { desired: 'bosun.desired', status: 'bosun.status', events: 'bosun.events' };
const BOSUN = ['node', '/opt/bosun/dist/src/cli.js'];
/** Phases the lab cluster runs; the others are left out of its specs until they are built. */
const LAB_SECTIONS = ['disks', 'network'];

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

export async function runControlPlane(lab: Lab, runDir: string, out: Writable, timeoutMs = 20 * 60_000): Promise<boolean> {
  const env = await requireServices();
  const kafka = new Kafka({ clientId: 'bosun-lab-control-plane', brokers: env.kafkaBrokers, logLevel: logLevel.NOTHING });
  const admin = kafka.admin();
  await admin.connect();
  const existing = await admin.listTopics();
  await admin.createTopics({
    waitForLeaders: true,
    topics: [
      { topic: LAB_TOPICS.desired, numPartitions: 12, configEntries: [{ name: 'cleanup.policy', value: 'compact' }] },
      { topic: LAB_TOPICS.status, numPartitions: 3, configEntries: [{ name: 'cleanup.policy', value: 'compact' }] },
      { topic: LAB_TOPICS.events, numPartitions: 3 },
    ].filter((t) => !existing.includes(t.topic)),
  });
  await admin.disconnect();
  const cp = await controlPlaneKey(runDir);
  const cpPublic = publicKeyString('ed25519', (await import('node:crypto')).createPublicKey(cp));
  const kafkaGuest = `${GUEST_HOST_ADDRESS}:${env.kafkaLabListener?.split(':')[1] ?? '19094'}`;

  // Every VM: agent settings, its identity, then the agent itself as a systemd unit (bosun.service comes with the RPM, issue #10).
  const keys: Record<string, string> = {};
  for (const vm of lab.vms) {
    const settings = { node: vm.name, stateDir: '/var/lib/bosun', kafka: { brokers: [kafkaGuest] }, topics: LAB_TOPICS, trustedKeys: [{ id: 'lab-control-plane', publicKey: cpPublic }] };
    await guestOk(vm, ['sh', '-c', 'mkdir -p /etc/bosun && cat > /etc/bosun/agent.json'], JSON.stringify(settings, null, 2));
    keys[vm.name] = (JSON.parse(await guestOk(vm, [...BOSUN, 'identity', '--json'])) as { sealingKey: string }).sealingKey;
    await vm.exec(['systemctl', 'stop', 'bosun-lab-agent-run.service'], { timeoutMs: 60_000 });
    await guestOk(vm, ['systemd-run', '--unit=bosun-lab-agent-run', '--collect', '-p', 'Restart=on-failure', ...BOSUN, 'run']);
    out.write(`[${vm.name}] bosun run started (sealing key ${keys[vm.name]})\n`);
  }

  // Specs: the examples, with the lab's disks and secrets sealed to each VM.
  const names = lab.vms.map((v) => v.name);
  const pairPsk: Record<string, string> = {};
  const psk = (a: string, b: string) => (pairPsk[[a, b].sort().join('/')] ??= randomBytes(32).toString('base64'));
  const version = Math.floor(Date.now() / 1000);
  const producer = kafka.producer();
  await producer.connect();
  for (const node of names) {
    const example = JSON.parse(await readFile(join(repoRoot(), 'examples', `${node}.json`), 'utf8')) as Record<string, any>;
    const key = x25519PublicFromString(keys[node]!);
    const sealed = (v: string) => ({ sealed: seal(key, Buffer.from(v)) });
    const spec: Record<string, any> = { apiVersion: 'bosun/v1', cluster: example.cluster, node, version };
    for (const s of LAB_SECTIONS) spec[s] = example[s];
    spec.disks = { ...example.disks, devices: { paths: ['/dev/disk/by-id/virtio-bosun-disk1', '/dev/disk/by-id/virtio-bosun-disk2'] }, luks: { ...example.disks.luks, key: sealed(randomBytes(64).toString('base64')) } };
    spec.network.ipsec.peers = (spec.network.ipsec.peers as { node: string }[]).filter((p) => names.includes(p.node)).map((p) => ({ ...p, psk: sealed(psk(node, p.node)) }));
    await producer.send({ topic: LAB_TOPICS.desired, messages: [{ key: node, value: JSON.stringify(signEnvelope(spec, 'lab-control-plane', cp)) }] });
    out.write(`[lab] published version ${version} for ${node} (${LAB_SECTIONS.join(', ')}; container, restore and packages are left out until they are built)\n`);
  }
  await producer.disconnect();

  // Watch until every node has applied this version, or failed it.
  const done = new Map<string, 'applied' | 'failed'>();
  const consumer = kafka.consumer({ groupId: `bosun-lab-watch-${randomBytes(4).toString('hex')}` });
  await consumer.connect();
  await consumer.subscribe({ topics: [LAB_TOPICS.status, LAB_TOPICS.events], fromBeginning: false });
  await consumer.run({
    eachMessage: async ({ topic, message }) => {
      const r = JSON.parse(message.value!.toString()) as SignedReport;
      const body = JSON.parse(Buffer.from(r.payload, 'base64url').toString()) as Record<string, any>;
      const node = String(body.node);
      if (topic === LAB_TOPICS.events) {
        const what = body.kind === 'applied' ? `applied version ${body.version} (${body.steps} steps, stages ${(body.stages as string[]).join(' ')})` : body.kind === 'apply-failed' ? `apply of version ${body.version} failed: ${body.message}` : `${body.kind}: ${body.reason ?? ''} ${body.message ?? ''}`;
        out.write(`[${node}] ${what}\n`);
        if (body.version === version && (body.kind === 'applied' || body.kind === 'apply-failed')) done.set(node, body.kind === 'applied' ? 'applied' : 'failed');
      } else {
        const h = body.health as { ok?: boolean; problems?: string[] } | undefined;
        out.write(`[${node}] status: applied ${body.appliedVersion ?? 'none'}, wanted ${body.wantedVersion ?? 'none'}${h ? `, health ${h.ok ? 'ok' : (h.problems ?? []).join('; ')}` : ''}\n`);
      }
      await Promise.resolve();
    },
  });
  const started = Date.now();
  while (done.size < names.length && Date.now() - started < timeoutMs) await new Promise((r) => setTimeout(r, 500));
  await consumer.disconnect();
  const ok = names.every((n) => done.get(n) === 'applied');
  out.write(`[lab] ${names.map((n) => `${n}: ${done.get(n) ?? 'no answer'}`).join(', ')} after ${Math.round((Date.now() - started) / 1000)} s\n`);
  return ok;
}
