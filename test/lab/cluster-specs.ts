// The specs of the lab's example cluster, as a control plane would publish
// them: the example's cluster with the lab's two disks (RAID1 + LUKS2 + xfs),
// the IPsec PSK mesh, the demo service, a restore from object storage (a
// backup the host made with `bosun backup create`) or from a peer. Shared by
// the lifecycle scenario (test/lab/scenario.test.ts) and the lifecycle
// benchmark (test/bench/lifecycle.bench.ts), with the time-to-serve breakdown
// both read from the agent's reports.
import { execFile } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { publicKeyString } from '../../src/identity/seal.js';
import { isEvent, isHealthy, readExample, type ControlPlane } from './control-plane.js';
import { demoContainer } from './demo-spec.js';
import { repoRoot, type Vm } from './driver.js';

const run = promisify(execFile);

/** Each node's address on the private link (and in the mesh). */
export const CLUSTER_ADDR: Record<string, string> = {
  'node-a': 'fd00:b05:0:1::a',
  'node-b': 'fd00:b05:0:1::b',
  'node-c': 'fd00:b05:0:1::c',
  'node-d': 'fd00:b05:0:1::d',
};
/** Where the data volume is mounted. */
export const CLUSTER_DATA = '/var/lib/bosun/data';
/** The demo service's published port. */
export const DEMO_PORT = 18080;
/** The stages of the disks phase, in order, as the applied event lists them. */
export const DISK_STAGES = ['disks/raid', 'disks/luks', 'disks/filesystem', 'disks/mount'];

export interface SpecExtras {
  greeting?: string;
  restore?: Record<string, unknown>;
  peerServe?: Record<string, unknown>;
}

/** Specs for the nodes of one cluster: versions counted per node, each secret sealed once per node. */
export class ClusterSpecs {
  readonly versions: Record<string, number> = {};
  /** The key the host's backup is sealed to; object-storage restores get its private half, sealed. */
  readonly backupKey = generateKeyPairSync('x25519');
  readonly #cp: ControlPlane;
  readonly #prefix: string;
  readonly #psks = new Map<string, string>();
  readonly #luksKeys = new Map<string, string>();
  readonly #sealed = new Map<string, { sealed: string }>();

  /** prefix: where in the bucket this cluster's backup lives. */
  constructor(cp: ControlPlane, prefix: string) {
    this.#cp = cp;
    this.#prefix = prefix;
  }

  get prefix(): string {
    return this.#prefix;
  }

  #psk(a: string, b: string): string {
    const pair = [a, b].sort().join('/');
    if (!this.#psks.has(pair)) this.#psks.set(pair, randomBytes(32).toString('base64'));
    return this.#psks.get(pair)!;
  }

  /** Seals secret to node once: a new seal is a new ciphertext, which the agent (rightly) sees as a changed section. */
  sealOnce(node: string, label: string, secret: string | Buffer): { sealed: string } {
    const key = `${node}|${label}`;
    if (!this.#sealed.has(key)) this.#sealed.set(key, this.#cp.seal(node, secret));
    return this.#sealed.get(key)!;
  }

  /** node's next spec: the example's cluster, the lab's disks, the mesh with `mesh`, the demo service; restore and peerServe as given. */
  async nodeSpec(node: string, mesh: string[], extra: SpecExtras = {}): Promise<Record<string, any>> {
    const example = await readExample(node === 'node-d' ? 'node-c' : node);
    this.versions[node] = (this.versions[node] ?? 0) + 1;
    if (!this.#luksKeys.has(node)) this.#luksKeys.set(node, randomBytes(64).toString('base64'));
    return {
      apiVersion: 'bosun/v1',
      cluster: example.cluster,
      node,
      version: this.versions[node],
      disks: {
        devices: { paths: ['/dev/disk/by-id/virtio-bosun-disk1', '/dev/disk/by-id/virtio-bosun-disk2'] },
        raid: { level: 1, name: 'data' },
        luks: { name: 'data', key: this.sealOnce(node, 'luks', this.#luksKeys.get(node)!) },
        filesystem: { type: 'xfs', label: 'pgdata', mountOptions: ['noatime'] },
        mount: { path: CLUSTER_DATA, mode: '0755' },
        foreignSignatures: 'refuse',
      },
      network: {
        ipsec: {
          backend: 'libreswan',
          address: CLUSTER_ADDR[node],
          auth: 'psk',
          peers: mesh.filter((p) => p !== node).map((p) => ({ node: p, address: CLUSTER_ADDR[p], psk: this.sealOnce(node, `psk-${p}`, this.#psk(node, p)) })),
        },
      },
      container: demoContainer(DEMO_PORT, extra.greeting ?? `hello from ${node}`),
      ...(extra.restore ? { restore: extra.restore } : {}),
      ...(extra.peerServe ? { peerServe: extra.peerServe } : {}),
      // The default interval: at 10 s the rounds (~25 commands, and the demo's own check in node) kept an idle
      // guest 78-84 % busy under TCG (top in step 2), starving the guest that had work.
      health: { intervalSeconds: 30 },
    };
  }

  /** The restore section of node: the host's backup in MinIO, credentials and backup key sealed to node. */
  objectStorageRestore(node: string): Record<string, unknown> {
    const s3 = this.#cp.env.s3;
    return {
      from: 'object-storage',
      bucket: s3.bucket,
      prefix: this.#prefix,
      backup: 'latest',
      credentials: { accessKeyId: this.sealOnce(node, 's3-id', s3.accessKeyId), secretAccessKey: this.sealOnce(node, 's3-secret', s3.secretAccessKey) },
      backupKey: this.sealOnce(node, 'backup-key', this.backupKey.privateKey.export({ format: 'pem', type: 'pkcs8' })),
    };
  }

  /** The restore section of a node that copies peer's data volume over the mesh. */
  peerRestore(peer: string): Record<string, unknown> {
    return { from: 'peer', peer, peerKey: this.#cp.identities.get(peer)!.signingKey };
  }

  /** peerServe for a node that serves snapshots of its volume to clients, the demo machine frozen while the snapshot is taken. */
  peerServe(clients: string[]): Record<string, unknown> {
    return {
      clients: clients.map((node) => ({ node, hostKey: this.#cp.identities.get(node)!.signingKey })),
      hooks: {
        quiesce: ['systemctl', 'freeze', 'systemd-nspawn@demo.service'],
        release: ['systemctl', 'thaw', 'systemd-nspawn@demo.service'],
        timeoutSeconds: 120,
      },
    };
  }

  /** Backs src up to this cluster's prefix with the CLI on the host, sealed to backupKey; returns the CLI's JSON report and the milliseconds. */
  async backUpFromHost(src: string): Promise<Record<string, unknown>> {
    const s3 = this.#cp.env.s3;
    const started = Date.now();
    const cli = join(repoRoot(), 'dist/src/cli.js');
    const to = publicKeyString('x25519', this.backupKey.publicKey);
    const { stdout } = await run(
      process.execPath,
      [cli, 'backup', 'create', src, '--bucket', s3.bucket, '--prefix', this.#prefix, '--to', to, '--endpoint', s3.endpoint, '--region', s3.region, '--json'],
      { env: { ...process.env, AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey } },
    );
    return { ms: Date.now() - started, ...(JSON.parse(stdout) as Record<string, unknown>) };
  }
}

interface ApplyTimings {
  planMs: number;
  phases: { phase: string; ms: number; planMs: number; stepMs: number; steps: number; slowest?: { step: string; ms: number } }[];
}

/**
 * Time to serve of node, from VM power-on (poweredOnAt, host clock) to its
 * first healthy status at version on Kafka, per part: the VM's start, the
 * lab's setup (settings, identity: a control plane's enrolment), the agent's
 * start (node, Kafka, its spec), each phase (its steps: the tools' real work,
 * and the rest: observe, plan, journal), the apply's own planning pass, and
 * the wait for the first health round. All on the host clock (reports stamped
 * on arrival). Throws if a report it needs is missing.
 */
export function timeToServe(cp: ControlPlane, node: string, vm: Vm, version: number, poweredOnAt: number): Record<string, number | string> {
  const applied = cp.find(isEvent(node, 'applied', version))[0];
  const healthy = cp.find(isHealthy(node, version))[0];
  if (!applied || !healthy) throw new Error(`${node}: no applied event or healthy status at version ${version}`);
  const timings = applied.body.timings as ApplyTimings | undefined;
  if (!timings) throw new Error(`${node}: the applied event carries no timings`);
  const vmStart = vm.startTimesMs[0]!;
  const id = cp.identities.get(node)!;
  const applyMs = applied.body.durationMs as number;
  const applyStart = applied.at - applyMs;
  const out: Record<string, number | string> = {
    totalS: (healthy.at - poweredOnAt) / 1000,
    vmStartS: vmStart / 1000,
    labSetupS: (id.startedAt - poweredOnAt - vmStart) / 1000,
    agentStartToApplyS: (applyStart - id.startedAt) / 1000,
    applyPlanS: timings.planMs / 1000,
  };
  let stepMs = 0;
  let overheadMs = timings.planMs;
  for (const p of timings.phases) {
    out[`${p.phase}S`] = p.ms / 1000;
    out[`${p.phase}StepsS`] = p.stepMs / 1000;
    if (p.slowest) out[`${p.phase}Slowest`] = `${p.slowest.step.slice(0, 80)} ${(p.slowest.ms / 1000).toFixed(1)} s`;
    stepMs += p.stepMs;
    overheadMs += p.ms - p.stepMs;
  }
  out.applyS = applyMs / 1000;
  out.appliedToHealthyStatusS = (healthy.at - applied.at) / 1000;
  out.toolsWorkS = stepMs / 1000;
  out.agentOverheadInApplyS = (overheadMs + (applyMs - timings.planMs - timings.phases.reduce((n, p) => n + p.ms, 0))) / 1000;
  return out;
}

/** One line of key=value figures. */
export function timesLine(times: Record<string, number | string>): string {
  return Object.entries(times)
    .map(([k, v]) => `${k}=${typeof v === 'number' ? v.toFixed(1) : v}`)
    .join(' ');
}
