// The lab driver: boots Debian guests under qemu (TCG only), each with its own
// qcow2 overlay over the cached base image and its own sparse data disks,
// joins them with a private Ethernet hub on 127.0.0.1 (hub.ts), forwards a few
// host services into them (qemu user networking with restrict=on and
// guestfwd), shares the repository read-only at /opt/bosun (9p), and runs
// commands in them through the guest agent (channel.ts). See README.md.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createSocket } from 'node:dgram';
import {
  accessSync,
  closeSync,
  constants,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  unlinkSync,
  writeFileSync,
  ftruncateSync,
  chmodSync,
  renameSync,
} from 'node:fs';
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { AgentChannel, ChannelError, type ExecResult } from './channel.js';
import { Hub, HubClient, type HubControl } from './hub.js';
import { recordLabTime } from './lab-times.js';
import { Qmp } from './qmp.js';
import { ensureSavedState, type SavedState } from './saved-state.js';

export type { ExecResult } from './channel.js';

// ---------------------------------------------------------------- paths

/** The repository root: the nearest ancestor of this file holding test/lab/image/build (works from test/ and dist/test/). */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'test', 'lab', 'image', 'build'))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`lab: cannot find the repository root (a directory with test/lab/image/build) above ${fileURLToPath(import.meta.url)}`);
    dir = parent;
  }
}

/** <repo>/.cache/lab, or $BOSUN_LAB_CACHE. */
export function labCacheDir(): string {
  return process.env.BOSUN_LAB_CACHE || join(repoRoot(), '.cache', 'lab');
}

/**
 * What the tests build and any clone on this machine may reuse (the lab image, the saved guest state, the
 * services' binaries): $BOSUN_BUILD_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/bosun-build (as test/lab/image/build
 * and test/services/lib.sh compute it).
 */
export function buildCacheDir(): string {
  if (process.env.BOSUN_BUILD_CACHE) return process.env.BOSUN_BUILD_CACHE;
  const base = process.env.XDG_CACHE_HOME || (process.env.HOME ? join(process.env.HOME, '.cache') : undefined);
  return base ? join(base, 'bosun-build') : join(repoRoot(), '.cache', 'build');
}

export function labRunDir(name: string): string {
  return join(labCacheDir(), 'run', name);
}

// ---------------------------------------------------------------- options

export interface DiskSpec {
  sizeMiB: number;
}

export interface VmSpec {
  name: string;
  /** Extra virtio disks: /dev/vdb, /dev/vdc, ... and /dev/disk/by-id/virtio-bosun-disk1, -disk2, ... */
  disks?: DiskSpec[];
  /** Address on the private link (eth1), with or without /prefix (default /64). Default fd00:b05:0:1::<index+1>. */
  ipv6?: string;
  memoryMiB?: number;
  cpus?: number;
  /** Not booted by startLab(): the test powers it on later with vm.start() (its disks and hub port are ready). */
  deferStart?: boolean;
  /** Boot for real at the first start too, instead of starting from the saved guest state (see saved-state.ts). */
  coldBoot?: boolean;
}

/** A host TCP service the guests reach at 10.0.2.100:guestPort. */
export interface Forward {
  guestPort: number;
  hostPort: number;
  /** Where the service listens on this host: loopback only. Default 127.0.0.1. */
  hostAddress?: string;
}

export interface LabOptions {
  nodes: VmSpec[];
  /** Names the run directory .cache/lab/run/<name>; a second lab with the same name cannot run at once. Default 'lab'. */
  name?: string;
  /** Host services forwarded to 10.0.2.100 in every guest. Default: Kafka's lab listener 19094 and S3 19000. */
  forwards?: Array<number | Forward>;
  /** Share the repository read-only at /opt/bosun (default true). */
  shareRepo?: boolean;
  /** Power-on to agent ready and boot finished, per VM (default 600 s). */
  bootTimeoutMs?: number;
  /** VMs and hub outlive this process (for `bosun lab up`); stop them with stopLabByName(). Default false. */
  detached?: boolean;
  /** Record the private link to <run dir>/lan.pcap (first 256 bytes of each frame). */
  pcap?: boolean;
  /** Use this image directory instead of building/finding the cached one. */
  image?: string;
  /** Build the image if it is not cached (default true; needs root and the Debian mirror). */
  buildImage?: boolean;
  /** Progress lines (image build, boots). */
  onProgress?: (line: string) => void;
  /**
   * First starts of fresh guests load the saved guest state instead of booting (default true; false, or
   * BOSUN_LAB_SAVED_STATE=0, boots every guest). Later starts (after a power cut or shutdown) always boot.
   */
  savedState?: boolean;
}

/** Root ports for data disks: a restored guest gets its disks plugged in, so every guest has these, used or not. */
export const DISK_SLOTS = 6;
const DEFAULT_MEMORY_MIB = 1024;
const DEFAULT_CPUS = 1;

export const DEFAULT_FORWARDS: readonly number[] = [19094, 19000];
export const GUEST_HOST_ADDRESS = '10.0.2.100';

/**
 * The agent as a guest runs it: the bundle (rpm/bundle) from the shared
 * repository, as the RPM runs it, under the host's node binary. Loading it
 * costs a guest under TCG ~1.3 s against ~3.1 s for tsc's ~360 files.
 */
export const GUEST_BOSUN = ['node', '/opt/bosun/dist/bundle/cli.js'];

/** Fails unless dist/bundle was made after tsc's last output: a lab run must not test a stale agent. */
export function assertBundleFresh(root = repoRoot()): void {
  const bundle = join(root, 'dist/bundle/cli.js');
  const compiled = join(root, 'dist/src/cli.js');
  if (!existsSync(bundle)) throw new LabError(`lab: ${bundle} is missing; build with 'npm run build' (tsc, then rpm/bundle)`);
  if (existsSync(compiled) && statSync(bundle).mtimeMs < statSync(compiled).mtimeMs) {
    throw new LabError(`lab: ${bundle} is older than ${compiled}: the guests would run a stale agent; build with 'npm run build' (tsc, then rpm/bundle)`);
  }
}
export const LAN_PREFIX = 'fd00:b05:0:1::';

export class LabError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LabError';
  }
}

export class ExecError extends Error {
  constructor(
    readonly vm: string,
    readonly argv: readonly string[],
    readonly result: ExecResult,
  ) {
    const tail = (s: string): string => (s.length > 4000 ? `...${s.slice(-4000)}` : s);
    super(
      `${vm}: ${JSON.stringify(argv)} ${result.timedOut ? 'timed out' : `exited ${result.exitCode ?? result.signal}`}` +
        `${result.stdout ? `\n--- stdout\n${tail(result.stdout)}` : ''}${result.stderr ? `\n--- stderr\n${tail(result.stderr)}` : ''}`,
    );
    this.name = 'ExecError';
  }
}

// ---------------------------------------------------------------- host tools

function which(cmd: string): string | undefined {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(delimiter)) {
    const p = join(dir, cmd);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return undefined;
}

function requireTool(cmd: string, pkg: string): string {
  const p = which(cmd);
  if (!p) throw new LabError(`lab: '${cmd}' is not installed (Debian package ${pkg}); run test/lab/image/install-host-deps as root`);
  return p;
}

export interface LabImage {
  dir: string;
  rootImage: string;
  kernel: string;
  initrd: string;
  manifest: Record<string, unknown>;
}

function readImage(dir: string): LabImage {
  const manifestPath = join(dir, 'manifest.json');
  if (!existsSync(manifestPath)) throw new LabError(`lab: ${dir} is not a built lab image (no manifest.json)`);
  const image = {
    dir,
    rootImage: join(dir, 'root.qcow2'),
    kernel: join(dir, 'vmlinuz'),
    initrd: join(dir, 'initrd.img'),
    manifest: JSON.parse(readFileSync(manifestPath, 'utf8')) as Record<string, unknown>,
  };
  for (const f of [image.rootImage, image.kernel, image.initrd]) if (!existsSync(f)) throw new LabError(`lab: image ${dir} lacks ${f}`);
  return image;
}

/**
 * The guest image for the current recipe: found in the cache, or built by
 * test/lab/image/build (which also installs qemu and friends) when allowed.
 */
export async function ensureImage(opts: { build?: boolean; onProgress?: (line: string) => void } = {}): Promise<LabImage> {
  const script = join(repoRoot(), 'test', 'lab', 'image', 'build');
  const args = opts.build === false ? ['--check'] : [];
  const started = Date.now();
  const { code, stdout, stderr } = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
    const child = spawn('bash', [script, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, BOSUN_LAB_CACHE: labCacheDir() } });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
      for (const line of d.toString().split('\n')) if (line.trim() !== '') opts.onProgress?.(line);
    });
    child.on('error', reject);
    child.on('close', (c) => resolve({ code: c, stdout: out, stderr: err }));
  });
  if (code !== 0) {
    throw new LabError(`lab: no guest image: ${script} ${args.join(' ')} exited ${code}` + `\n${stderr.trim().split('\n').slice(-25).join('\n')}`);
  }
  const dir = stdout.trim().split('\n').pop() ?? '';
  const image = readImage(dir);
  const took = Date.now() - started;
  if (took > 5000) opts.onProgress?.(`lab: image ready in ${(took / 1000).toFixed(0)} s: ${dir}`);
  return image;
}

/** A free UDP port on 127.0.0.1 (free when asked; qemu binds it right after). */
async function freeUdpPort(): Promise<number> {
  const s = createSocket('udp4');
  await new Promise<void>((resolve, reject) => {
    s.once('error', reject);
    s.bind(0, '127.0.0.1', () => resolve());
  });
  const port = s.address().port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

function tail(file: string, lines: number): string {
  try {
    const text = readFileSync(file, 'utf8');
    return text.split('\n').slice(-lines).join('\n');
  } catch {
    return '(no output)';
  }
}

/** Is pid alive and does its command line mention marker (so a recycled pid is never killed)? */
export function processMatches(pid: number, marker: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(marker);
  } catch {
    return false;
  }
}

function killPid(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    /* already gone */
  }
}

function sanitize(label: string): string {
  return label.replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 120) || 'unnamed';
}

function shellQuote(word: string): string {
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

function diskDeviceProps(i: number): Record<string, string> {
  return { driver: 'virtio-blk-pci', id: `vdisk${i + 1}`, drive: `disk${i + 1}`, serial: `bosun-disk${i + 1}`, bus: `rp${i + 1}` };
}

/** The -device argument for data disk i (what device_add plugs into a restored guest). */
function diskDevice(i: number): string {
  const { driver, ...props } = diskDeviceProps(i);
  return [driver, ...Object.entries(props).map(([k, v]) => `${k}=${v}`)].join(',');
}

/** Is a guest of this spec, in this lab, the machine the saved state was saved from (same memory, CPUs, share)? */
function canRestore(spec: VmSpec, lab: Lab): boolean {
  return (
    spec.coldBoot !== true &&
    (spec.memoryMiB ?? DEFAULT_MEMORY_MIB) === DEFAULT_MEMORY_MIB &&
    (spec.cpus ?? DEFAULT_CPUS) === DEFAULT_CPUS &&
    (spec.disks ?? []).length <= DISK_SLOTS &&
    lab.shareRepo
  );
}

// ---------------------------------------------------------------- state file

export interface LabState {
  name: string;
  dir: string;
  ownerPid: number;
  detached: boolean;
  hub?: { pid: number; socket: string };
  vms: Array<{ name: string; dir: string; pid: number | null; agentSocket: string; serialLog: string; ipv6: string }>;
}

// ---------------------------------------------------------------- VM

export interface ExecOptions {
  stdin?: string | Buffer;
  /** Default 120 s. Enforced in the guest (the process group is killed). */
  timeoutMs?: number;
  env?: Record<string, string>;
  cwd?: string;
  /** Stream output as it comes (the result's stdout/stderr are then empty). */
  onOutput?: (fd: 1 | 2, data: Buffer) => void;
}

interface VmConfig {
  lab: Lab;
  index: number;
  spec: VmSpec;
  image: LabImage;
}

export class Vm {
  readonly name: string;
  readonly dir: string;
  readonly serialLog: string;
  readonly qemuLog: string;
  readonly agentSocket: string;
  readonly qmpSocket: string;
  readonly overlay: string;
  readonly disks: string[];
  /** Address on the private link, without prefix. */
  readonly ipv6: string;
  readonly ipv6Prefix: number;
  /** Left off by startAll() (VmSpec.deferStart) until someone calls start(). */
  readonly deferStart: boolean;
  /** Milliseconds from qemu start to "agent answers and systemd finished booting", one entry per boot. */
  readonly bootTimesMs: number[] = [];
  /** Milliseconds from qemu start to "saved state loaded, identity set, disks plugged, agent answers", one entry per restore. */
  readonly restoreTimesMs: number[] = [];
  /** Every start in order, boot or restore: milliseconds from qemu start to ready. */
  readonly startTimesMs: number[] = [];
  /** The job lists the last boot's wait looked at ("<s after power-on>: UNIT/STATE ..."), to see why a boot took long. */
  bootJobLooks: string[] = [];
  /** Units that had failed when the last boot finished (systemctl --failed), if the state was 'degraded'. */
  failedUnits: string[] = [];
  #proc: ChildProcess | undefined;
  #pid: number | null = null;
  #exited: Promise<void> | undefined;
  #exitInfo: string | undefined;
  readonly #channel: AgentChannel;
  readonly #cfg: VmConfig;
  #bootId: string | undefined;
  /** The overlay chains on the saved state's and this guest has not run yet: the next start() restores. */
  #restoreNext = false;

  constructor(cfg: VmConfig) {
    this.#cfg = cfg;
    const { spec, index, lab } = cfg;
    if (!/^[a-z0-9][a-z0-9-]{0,30}$/.test(spec.name)) throw new LabError(`lab: VM name '${spec.name}' must be a short hostname (a-z, 0-9, -)`);
    this.name = spec.name;
    this.deferStart = spec.deferStart ?? false;
    this.dir = join(lab.dir, spec.name);
    this.serialLog = join(this.dir, 'serial.log');
    this.qemuLog = join(this.dir, 'qemu.log');
    this.agentSocket = join(this.dir, 'agent.sock');
    this.qmpSocket = join(this.dir, 'qmp.sock');
    this.overlay = join(this.dir, 'root.qcow2');
    this.disks = (spec.disks ?? []).map((_, i) => join(this.dir, `disk${i + 1}.img`));
    const [addr, prefix] = (spec.ipv6 ?? `${LAN_PREFIX}${(index + 1).toString(16)}`).split('/');
    this.ipv6 = addr as string;
    this.ipv6Prefix = prefix === undefined ? 64 : Number(prefix);
    if (Buffer.byteLength(this.agentSocket) > 100)
      throw new LabError(`lab: socket path too long for a unix socket (${this.agentSocket}); set BOSUN_LAB_CACHE to a shorter directory`);
    this.#channel = new AgentChannel(this.agentSocket, this.name);
  }

  get running(): boolean {
    return this.#pid !== null;
  }

  get pid(): number | null {
    return this.#pid;
  }

  /** The boot id the agent reported at the end of the last boot. */
  get bootId(): string | undefined {
    return this.#bootId;
  }

  /** Creates the overlay and disks if missing (resetDisks() recreates them). */
  async #prepareDisks(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    if (!existsSync(this.overlay)) {
      const saved = this.#savedStateToUse();
      const backing = saved ? saved.overlay : this.#cfg.image.rootImage;
      const r = spawnSync(requireTool('qemu-img', 'qemu-utils'), ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', backing, this.overlay], {
        encoding: 'utf8',
      });
      if (r.status !== 0) throw new LabError(`${this.name}: qemu-img create failed: ${r.stderr || r.error?.message}`);
      this.#restoreNext = saved !== undefined;
    }
    (this.#cfg.spec.disks ?? []).forEach((d, i) => {
      const path = this.disks[i] as string;
      if (existsSync(path)) return;
      const fd = openSync(path, 'w');
      try {
        ftruncateSync(fd, d.sizeMiB * 1024 * 1024);
      } finally {
        closeSync(fd);
      }
    });
  }

  /** The saved state this guest's first start may load: the lab has one and the guest is the machine it was saved from. */
  #savedStateToUse(): SavedState | undefined {
    const { lab, spec } = this.#cfg;
    return lab.savedState !== undefined && canRestore(spec, lab) ? lab.savedState : undefined;
  }

  #machineId(): string {
    return createHash('md5').update(`${this.#cfg.lab.name}/${this.name}`).digest('hex');
  }

  #mac(kind: number): string {
    return `52:54:00:b0:${kind.toString(16).padStart(2, '0')}:${(this.#cfg.index + 1).toString(16).padStart(2, '0')}`;
  }

  /** qemu's arguments; with incoming, the machine waits for that migration stream (a saved state) and has no disks plugged in. */
  #qemuArgs(lanLocalPort: number, lanHubPort: number, incoming?: string): string[] {
    const { lab, spec, image } = this.#cfg;
    const machineId = this.#machineId();
    const mac = (kind: number): string => this.#mac(kind);
    const cmdline = [
      'root=/dev/vda',
      'rw',
      'console=ttyS0',
      'net.ifnames=0',
      `systemd.hostname=${spec.name}`,
      `systemd.machine_id=${machineId}`,
      `bosun.lan6=${this.ipv6}/${this.ipv6Prefix}`,
      'panic=5',
      // Extra words for experiments (e.g. measuring a boot with `quiet`); read at each start.
      ...(process.env.BOSUN_LAB_APPEND ?? '').split(/\s+/).filter((w) => w !== ''),
    ].join(' ');
    const fwd = lab.forwards
      .map((f) => `,guestfwd=tcp:${GUEST_HOST_ADDRESS}:${f.guestPort}-cmd:socat STDIO TCP:${f.hostAddress ?? '127.0.0.1'}:${f.hostPort}`)
      .join('');
    const args = [
      '-name',
      `${lab.name}/${spec.name}`,
      '-machine',
      'q35,accel=tcg',
      // qemu64, not max: TCG emulates the AVX/AVX2 paths that glibc, the kernel and V8
      // pick on `max` more slowly than the SSE2 ones; on qemu64 a guest boots ~20 %
      // faster and node runs ~15 % faster (docs/reliability.md, "Lab CPU model and CI time").
      // The price: no AES-NI in the guest (dm-crypt, ESP and OpenSSL use generic
      // AES, ~1/3 the rate); the lab moves little data through them. BOSUN_LAB_CPU overrides.
      '-cpu',
      process.env.BOSUN_LAB_CPU ?? 'qemu64',
      '-m',
      String(spec.memoryMiB ?? DEFAULT_MEMORY_MIB),
      '-smp',
      String(spec.cpus ?? DEFAULT_CPUS),
      '-nodefaults',
      '-no-user-config',
      '-display',
      'none',
      '-chardev',
      `file,id=serial,path=${this.serialLog},append=on`,
      '-serial',
      'chardev:serial',
      '-kernel',
      image.kernel,
      '-initrd',
      image.initrd,
      '-append',
      cmdline,
      // eth0: host services only (restrict=on: nothing else leaves the VM this way)
      '-netdev',
      `user,id=host,restrict=on,net=10.0.2.0/24,host=10.0.2.2${fwd}`,
      '-device',
      `virtio-net-pci,netdev=host,mac=${mac(0)},romfile=`,
      // eth1: the private link, a UDP socket pair with the hub on loopback
      '-netdev',
      `dgram,id=lan,local.type=inet,local.host=127.0.0.1,local.port=${lanLocalPort},remote.type=inet,remote.host=127.0.0.1,remote.port=${lanHubPort}`,
      '-device',
      `virtio-net-pci,netdev=lan,mac=${mac(1)},romfile=`,
      '-drive',
      `file=${this.overlay},if=none,id=root,format=qcow2,cache=writeback,discard=unmap`,
      '-device',
      'virtio-blk-pci,drive=root,serial=bosun-root',
    ];
    // Data disks sit on root ports (rp1, rp2, ...), the same in every guest, so that a restored guest (saved with
    // none) is the same machine and gets its disks plugged in there.
    for (let slot = 1; slot <= DISK_SLOTS; slot++) args.push('-device', `pcie-root-port,id=rp${slot},chassis=${slot},slot=${slot}`);
    this.disks.forEach((path, i) => {
      // raw + cache=unsafe: a power cut (kill -9 of qemu) keeps every write qemu made; there is no metadata to corrupt.
      args.push('-drive', `file=${path},if=none,id=disk${i + 1},format=raw,cache=unsafe,discard=unmap`);
      if (incoming === undefined) args.push('-device', diskDevice(i));
    });
    args.push(
      '-device',
      'virtio-serial-pci',
      '-chardev',
      `socket,id=agent,path=${this.agentSocket},server=on,wait=off`,
      '-device',
      'virtserialport,chardev=agent,name=bosun.agent',
      '-device',
      'virtio-rng-pci',
      // A new generation id at every restore: the guest kernel reseeds its random pool, so guests restored from
      // one saved state do not share random numbers (keys, nonces).
      '-device',
      'vmgenid,guid=auto',
      '-qmp',
      `unix:${this.qmpSocket},server=on,wait=off`,
    );
    if (lab.shareRepo) args.push('-virtfs', `local,path=${repoRoot()},mount_tag=bosun,security_model=none,readonly=on`);
    if (incoming !== undefined) args.push('-incoming', incoming);
    return args;
  }

  /**
   * Powers the VM on (overlay and disks as they are) and waits until it has booted. A fresh guest of a lab with
   * a saved state is restored from it instead (restored()), every later start boots.
   */
  async start(): Promise<void> {
    if (this.running) throw new LabError(`${this.name}: already running (pid ${this.#pid})`);
    const qemu = requireTool('qemu-system-x86_64', 'qemu-system-x86');
    requireTool('socat', 'socat');
    await this.#prepareDisks();
    const { lab } = this.#cfg;
    const saved = this.#restoreNext ? this.#savedStateToUse() : undefined;
    for (let attempt = 1; ; attempt++) {
      const localPort = await freeUdpPort();
      const hubPort = await lab.hubPortFor(this.name);
      for (const sock of [this.agentSocket, this.qmpSocket]) rmSync(sock, { force: true });
      await lab.attachToHub(this.name, localPort);
      const started = Date.now();
      this.#spawn(qemu, this.#qemuArgs(localPort, hubPort, saved ? `exec:cat ${shellQuote(saved.stateFile)}` : undefined));
      lab.saveState();
      try {
        if (saved) await this.#waitRestored(started);
        else await this.#waitBooted(started, undefined);
        return;
      } catch (err) {
        // qemu could lose the race for its UDP port to another process; try again with another one.
        if (attempt < 3 && !this.running && /Address already in use/.test(tail(this.qemuLog, 20))) continue;
        await this.kill();
        throw err;
      } finally {
        // Whatever happened, the overlay is no longer the saved guest's disk as it was saved.
        if (this.running || attempt >= 3) this.#restoreNext = false;
      }
    }
  }

  /**
   * After qemu started with -incoming: waits until the saved state is loaded, runs the guest, gives it this VM's
   * identity (clock, hostname, machine id, MACs, private address), mounts the share and plugs in the data disks.
   */
  async #waitRestored(started: number): Promise<void> {
    const deadline = started + this.#cfg.lab.bootTimeoutMs;
    const qmp = await Qmp.connect(this.qmpSocket, this.name).catch((err: unknown) => {
      throw this.#bootFailure(`no QMP after starting from the saved state: ${err instanceof Error ? err.message : String(err)}`);
    });
    try {
      const status = await qmp.waitForStatus(['paused', 'running', 'postmigrate', 'internal-error', 'shutdown'], deadline - Date.now());
      if (status === 'paused') await qmp.execute('cont');
      else if (status !== 'running') throw this.#bootFailure(`loading the saved state left the machine '${status}'`);
      this.#bootId = (await this.#channel.ping(Math.max(5000, deadline - Date.now()))).bootId;
      const identity = await this.#channel.exec({ argv: ['sh', '-eu', '-c', this.#identityScript()], timeoutMs: 60_000 });
      if (identity.exitCode !== 0) throw this.#bootFailure(`setting the restored guest's identity failed: ${identity.stderr.trim() || identity.stdout.trim()}`);
      for (let i = 0; i < this.disks.length; i++) await this.#plugDisk(qmp, i);
    } finally {
      qmp.close();
    }
    this.failedUnits = [];
    const ms = Date.now() - started;
    this.restoreTimesMs.push(ms);
    this.startTimesMs.push(ms);
    recordLabTime({ lab: this.#cfg.lab.name, vm: this.name, kind: 'restore', ms });
    this.#cfg.lab.progress(`${this.name}: started from the saved state in ${(ms / 1000).toFixed(1)} s`);
  }

  /** The shell script that makes a restored guest this VM (the saved guest was another one). */
  #identityScript(): string {
    const addr = `${this.ipv6}/${this.ipv6Prefix}`;
    return [
      `date -s @${(Date.now() / 1000).toFixed(3)} >/dev/null`,
      `hostname ${this.name}`,
      // This VM's machine id (as its real boots get from systemd.machine_id=), and journald restarted to write
      // under it: journalctl reads only the directory of the id in /etc/machine-id, so the journal of this
      // "boot" and of the guest's later real boots are one journal (--list-boots), the saved guest's is not in it.
      `echo ${this.#machineId()} > /etc/machine-id`,
      'systemctl restart systemd-journald',
      `ip link set eth0 address ${this.#mac(0)}`,
      // eth1 down and flushed, so that the link-local address is made again from the new MAC.
      'ip link set eth1 down',
      'ip -6 addr flush dev eth1',
      `ip link set eth1 address ${this.#mac(1)}`,
      `ip -6 addr replace ${addr} dev eth1 nodad`,
      'ip link set eth1 up',
      ...(this.#cfg.lab.shareRepo ? ['mount /opt/bosun'] : []),
    ].join('\n');
  }

  /** Plugs data disk i into its root port and waits until the guest has its by-id link. */
  async #plugDisk(qmp: Qmp, i: number): Promise<void> {
    await qmp.execute('device_add', diskDeviceProps(i));
    const link = `/dev/disk/by-id/virtio-bosun-disk${i + 1}`;
    const r = await this.#channel.exec({
      argv: ['sh', '-c', `for n in $(seq 600); do [ -e ${link} ] && exit 0; sleep 0.1; done; exit 1`],
      timeoutMs: 90_000,
    });
    if (r.exitCode !== 0) throw this.#bootFailure(`disk ${i + 1} plugged into the restored guest did not appear as ${link} within 60 s`);
  }

  /**
   * Saves the running guest for later restores: unmounts the share (qemu cannot migrate a mounted 9p export),
   * stops the machine, writes its state to stateFile, quits qemu and moves the overlay to overlayTo. Returns the
   * milliseconds it took.
   */
  async saveTo(stateFile: string, overlayTo: string): Promise<number> {
    const started = Date.now();
    if (this.#cfg.lab.shareRepo) await this.check(['umount', '/opt/bosun']);
    const qmp = await Qmp.connect(this.qmpSocket, this.name);
    try {
      await qmp.execute('stop');
      await qmp.execute('migrate', { uri: `exec:cat > ${shellQuote(stateFile)}` });
      for (;;) {
        const info = (await qmp.execute('query-migrate')) as { status?: string; 'error-desc'?: string };
        if (info.status === 'completed') break;
        if (info.status === 'failed' || info.status === 'cancelled')
          throw new LabError(`${this.name}: saving the state failed: ${info['error-desc'] ?? info.status}`);
        await sleep(100);
      }
      await qmp.execute('quit').catch(() => undefined);
    } finally {
      qmp.close();
    }
    await this.#exited;
    renameSync(this.overlay, overlayTo);
    chmodSync(overlayTo, 0o444);
    recordLabTime({ lab: this.#cfg.lab.name, vm: this.name, kind: 'save', ms: Date.now() - started });
    return Date.now() - started;
  }

  #spawn(qemu: string, args: string[]): void {
    const { lab } = this.#cfg;
    const log = openSync(this.qemuLog, 'a');
    writeFileSync(log, `--- ${new Date().toISOString()} ${qemu} ${args.map((a) => (/[\s,]/.test(a) ? `'${a}'` : a)).join(' ')}\n`);
    let child: ChildProcess;
    const setpriv = which('setpriv');
    try {
      if (lab.detached) {
        child = spawn(qemu, args, { stdio: ['ignore', log, log], detached: true });
        child.unref();
      } else if (setpriv) {
        // setpriv execs qemu with PR_SET_PDEATHSIG: if this process dies, however it dies, qemu dies too.
        child = spawn(setpriv, ['--pdeathsig', 'KILL', '--', qemu, ...args], { stdio: ['ignore', log, log] });
      } else {
        child = spawn(qemu, args, { stdio: ['ignore', log, log] });
      }
    } finally {
      closeSync(log);
    }
    this.#proc = child;
    this.#pid = child.pid ?? null;
    this.#exitInfo = undefined;
    this.#exited = new Promise<void>((resolve) => {
      child.once('error', (err) => {
        this.#exitInfo = `could not start: ${err.message}`;
        this.#onExit(child);
        resolve();
      });
      child.once('exit', (code, signal) => {
        this.#exitInfo = signal ? `killed by ${signal}` : `exited with code ${code}`;
        this.#onExit(child);
        resolve();
      });
    });
  }

  #onExit(child: ChildProcess): void {
    if (this.#proc !== child) return;
    this.#proc = undefined;
    this.#pid = null;
    this.#channel.disconnect();
    this.#cfg.lab.saveState();
  }

  #bootFailure(why: string): LabError {
    return new LabError(
      `${this.name}: ${why}\n` +
        `--- last lines of the serial console (${this.serialLog})\n${tail(this.serialLog, 25)}\n` +
        `--- qemu output (${this.qemuLog})\n${tail(this.qemuLog, 8)}`,
    );
  }

  /** Waits for an agent ping with a boot id other than notBootId, then for systemd to finish booting. */
  async #waitBooted(started: number, notBootId: string | undefined): Promise<void> {
    const timeoutMs = this.#cfg.lab.bootTimeoutMs;
    const deadline = started + timeoutMs;
    let lastError = 'no answer yet';
    for (;;) {
      if (!this.running) throw this.#bootFailure(`qemu ${this.#exitInfo ?? 'stopped'} while booting`);
      if (Date.now() > deadline) {
        throw this.#bootFailure(
          `the guest agent did not answer within ${timeoutMs / 1000} s of power-on (last: ${lastError}; qemu pid ${this.#pid} still running)`,
        );
      }
      try {
        const pong = await this.#channel.ping(2000);
        if (pong.bootId !== notBootId) {
          this.#bootId = pong.bootId;
          break;
        }
        lastError = 'the agent still answers from the previous boot';
      } catch (err) {
        lastError = err instanceof Error ? err.message : String(err);
      }
      await sleep(500);
    }
    // The agent starts early; wait for the rest of the boot (network, mounts) too: until systemd has no job left,
    // or none but the service machine's start waiting for its data volume. On a built node that volume is LUKS
    // that only bosun can open (noauto in crypttab, the key sealed), so the machine's start waits for the device.
    // On a real host bosun.service runs first and opens it (units/bosun-nspawn.conf orders every machine after
    // it); in the lab a test starts bosun after the boot, and waiting for that job meant waiting out the device's
    // 90 s job timeout at every power-on of a built node (the faults test's boots: 103 s against 43 s).
    // One `is-system-running --wait` answers for most boots as soon as they finish; a look at the job list every
    // 10 s (a systemctl process on the booting guest's one vCPU, ~0.3 s of it under TCG) finds the other case.
    const remaining = Math.max(5000, deadline - Date.now());
    let settled: ExecResult | undefined;
    const whole = this.#channel.exec({ argv: ['systemctl', 'is-system-running', '--wait'], timeoutMs: remaining }).then(
      (res) => (settled = res),
      () => undefined,
    );
    let waitsForBosun = false;
    this.bootJobLooks = [];
    for (;;) {
      await Promise.race([whole, sleep(10_000)]);
      if (settled) break;
      const jobs = await this.#channel.exec({ argv: ['systemctl', 'list-jobs', '--no-legend', '--plain'], timeoutMs: 30_000 });
      // JOB UNIT TYPE STATE: the boot is stuck on the machine's volume when the only jobs running are device
      // waits and a machine's start is among the jobs waiting (with whatever is ordered after it).
      const listed = jobs.stdout
        .split('\n')
        .map((l) => l.trim().split(/\s+/))
        .filter((f) => f.length >= 4) as [string, string, string, string][];
      const units = listed.map((f) => f[1]);
      const running = listed.filter((f) => f[3] === 'running').map((f) => f[1]);
      this.bootJobLooks.push(
        `${Math.round((Date.now() - started) / 1000)} s: ${listed.map((f) => `${f[1]}/${f[3]}`).join(' ') || `(none; exit ${jobs.exitCode})`}`,
      );
      if (jobs.exitCode === 0 && running.length > 0 && running.every((u) => u.endsWith('.device')) && units.some((u) => u.startsWith('systemd-nspawn@'))) {
        waitsForBosun = true;
        break;
      }
      if (Date.now() > deadline)
        throw this.#bootFailure(`boot did not finish within ${timeoutMs / 1000} s of power-on; jobs left: ${units.join(' ') || jobs.stderr.trim()}`);
    }
    const r = settled ?? (await this.#channel.exec({ argv: ['systemctl', 'is-system-running'], timeoutMs: 30_000 }));
    const state = r.stdout.trim();
    if (state === 'degraded' || (state === 'starting' && waitsForBosun)) {
      const failed = await this.#channel.exec({ argv: ['systemctl', '--failed', '--no-legend', '--plain'], timeoutMs: 30_000 });
      this.failedUnits = failed.stdout
        .split('\n')
        .map((l) => l.split(/\s+/)[0] ?? '')
        .filter((u) => u !== '');
    } else if (state === 'running') {
      this.failedUnits = [];
    } else {
      throw this.#bootFailure(`boot did not finish: systemctl is-system-running says '${state}' ${r.stderr.trim()}`);
    }
    // The lab's own network unit: without it the guest has no way to the host's services or its peers, and a
    // test would only fail much later on a timeout.
    const net = await this.#channel.exec({ argv: ['systemctl', 'is-active', 'bosun-lab-net.service'], timeoutMs: 30_000 });
    if (net.stdout.trim() !== 'active') {
      const why = await this.#channel.exec({
        argv: ['sh', '-c', 'systemctl status --no-pager -n 20 bosun-lab-net.service 2>&1 | tail -n 25'],
        timeoutMs: 30_000,
      });
      throw this.#bootFailure(`the guest network (bosun-lab-net.service) is '${net.stdout.trim()}' after boot:\n${why.stdout.trim()}`);
    }
    this.bootTimesMs.push(Date.now() - started);
    this.startTimesMs.push(Date.now() - started);
    recordLabTime({ lab: this.#cfg.lab.name, vm: this.name, kind: 'boot', ms: Date.now() - started });
    this.#cfg.lab.progress(
      `${this.name}: booted in ${((Date.now() - started) / 1000).toFixed(1)} s${state === 'degraded' ? ` (degraded: ${this.failedUnits.join(' ')})` : ''}${waitsForBosun ? ' (the service machine waits for bosun to open its volume)' : ''}`,
    );
  }

  /** Runs argv in the guest as root. Never throws for a non-zero exit; see check(). */
  async exec(argv: string[], opts: ExecOptions = {}): Promise<ExecResult> {
    if (!this.running) throw new LabError(`${this.name}: not running`);
    try {
      return await this.#channel.exec({ argv, ...opts });
    } catch (err) {
      if (err instanceof ChannelError && !this.running) throw this.#bootFailure(`qemu ${this.#exitInfo ?? 'stopped'} during ${JSON.stringify(argv)}`);
      throw err;
    }
  }

  /** Runs a shell script (bash, errexit and pipefail on). */
  sh(script: string, opts: ExecOptions = {}): Promise<ExecResult> {
    return this.exec(['bash', '-euo', 'pipefail', '-c', script], opts);
  }

  /** Like exec()/sh() but throws ExecError (with stdout and stderr) unless the command exits 0. */
  async check(command: string | string[], opts: ExecOptions = {}): Promise<ExecResult> {
    const argv = typeof command === 'string' ? ['bash', '-euo', 'pipefail', '-c', command] : command;
    const r = await this.exec(argv, opts);
    if (r.exitCode !== 0 || r.timedOut) throw new ExecError(this.name, argv, r);
    return r;
  }

  /** Drops the guest's caches of the 9p share (mounted cache=loose) after rebuilding dist/ on the host. */
  async refreshShare(): Promise<void> {
    await this.check(['sh', '-c', 'sync; echo 3 > /proc/sys/vm/drop_caches']);
  }

  /** Clean reboot from inside the guest; resolves when the new boot has finished. */
  async reboot(): Promise<void> {
    if (!this.running) throw new LabError(`${this.name}: not running`);
    const before = (await this.#channel.ping(10_000)).bootId;
    const started = Date.now();
    // The reply may never come (the agent dies with the old boot), so only send it.
    this.exec(['systemctl', 'reboot'], { timeoutMs: 5000 }).catch(() => {});
    await this.#waitBooted(started, before);
  }

  /** Clean power-off from inside the guest; resolves when qemu has exited. */
  async shutdown(timeoutMs = 120_000): Promise<void> {
    if (!this.running) return;
    this.exec(['systemctl', 'poweroff'], { timeoutMs: 5000 }).catch(() => {});
    const exited = this.#exited;
    const timer = sleep(timeoutMs).then(() => 'timeout' as const);
    if ((await Promise.race([exited?.then(() => 'exited' as const), timer])) === 'timeout') {
      await this.kill();
      throw new LabError(`${this.name}: did not power off within ${timeoutMs / 1000} s; killed`);
    }
  }

  /** Pulls the plug: SIGKILL to qemu. Data the guest had not handed to its disks is lost. Start again with start(). */
  async powerCut(): Promise<void> {
    await this.kill();
  }

  /** SIGKILL qemu and wait until it is gone. */
  async kill(): Promise<void> {
    const pid = this.#pid;
    if (pid === null) return;
    killPid(pid, 'SIGKILL');
    await this.#exited;
  }

  /** Kills qemu synchronously (exit handlers). */
  killNow(): void {
    if (this.#pid !== null) killPid(this.#pid, 'SIGKILL');
  }

  /** Recreates the overlay (back to the pristine image) and blank data disks. The VM must be stopped. */
  async resetDisks(): Promise<void> {
    if (this.running) throw new LabError(`${this.name}: resetDisks() needs the VM stopped (powerCut(), shutdown() or kill() first)`);
    for (const f of [this.overlay, ...this.disks]) rmSync(f, { force: true });
    this.#restoreNext = false;
    await this.#prepareDisks();
    this.#bootId = undefined;
  }

  /**
   * Writes the current boot's journal, the failed units, the serial console
   * log and the qemu log to <cache>/artifacts/<label>/<vm>/ and returns that
   * directory. Works (with what there is) when the VM is down.
   */
  async collectJournal(label = 'adhoc'): Promise<string> {
    const dir = join(this.#cfg.lab.artifactsDir, sanitize(label), this.name);
    await mkdir(dir, { recursive: true });
    const grab = async (file: string, argv: string[]): Promise<void> => {
      try {
        if (!this.running) throw new Error('VM not running');
        const r = await this.exec(argv, { timeoutMs: 60_000 });
        await writeFile(join(dir, file), r.stdout + (r.stderr ? `\n--- stderr\n${r.stderr}` : ''));
      } catch (err) {
        await writeFile(join(dir, file), `could not run ${argv.join(' ')}: ${err instanceof Error ? err.message : String(err)}\n`);
      }
    };
    await grab('journal.txt', ['journalctl', '-b', '--no-pager', '-o', 'short-monotonic']);
    await grab('boots.txt', [
      'sh',
      '-c',
      'journalctl --list-boots --no-pager; echo; systemctl --failed --no-pager; echo; cat /proc/mdstat; echo; ip -d addr; echo; ip xfrm state',
    ]);
    for (const [src, name] of [
      [this.serialLog, 'serial.log'],
      [this.qemuLog, 'qemu.log'],
    ] as const) {
      if (existsSync(src)) await copyFile(src, join(dir, name));
    }
    return dir;
  }

  toState(): LabState['vms'][number] {
    return { name: this.name, dir: this.dir, pid: this.#pid, agentSocket: this.agentSocket, serialLog: this.serialLog, ipv6: this.ipv6 };
  }

  releaseChannel(): void {
    this.#channel.disconnect();
  }

  closeChannel(): void {
    this.#channel.close();
  }
}

// ---------------------------------------------------------------- lab

const liveLabs = new Set<Lab>();
let exitHooksInstalled = false;

function installExitHooks(): void {
  if (exitHooksInstalled) return;
  exitHooksInstalled = true;
  process.on('exit', () => {
    for (const lab of liveLabs) lab.stopNow();
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const handler = (): void => {
      for (const lab of liveLabs) lab.stopNow();
      process.off(sig, handler);
      process.kill(process.pid, sig);
    };
    process.on(sig, handler);
  }
}

export class Lab {
  readonly name: string;
  readonly dir: string;
  readonly artifactsDir: string;
  readonly vms: Vm[] = [];
  readonly forwards: Forward[];
  readonly shareRepo: boolean;
  readonly bootTimeoutMs: number;
  readonly detached: boolean;
  readonly image: LabImage;
  /** What fresh guests start from instead of booting (startLab() finds or makes it); undefined: every start boots. */
  savedState: SavedState | undefined;
  /** The hub in this process (attached labs); undefined when the hub runs in its own process. */
  readonly localHub: Hub | undefined;
  readonly hub: HubControl;
  readonly #hubPorts: Map<string, number>;
  readonly #hubPid: number | undefined;
  readonly #onProgress: ((line: string) => void) | undefined;
  #stopped = false;

  /** Use startLab(). */
  constructor(init: {
    name: string;
    opts: LabOptions;
    image: LabImage;
    hub: HubControl;
    localHub: Hub | undefined;
    hubPorts: Map<string, number>;
    hubPid: number | undefined;
  }) {
    const { opts } = init;
    this.name = init.name;
    this.dir = labRunDir(init.name);
    this.artifactsDir = join(labCacheDir(), 'artifacts');
    this.forwards = (opts.forwards ?? DEFAULT_FORWARDS).map((f) => (typeof f === 'number' ? { guestPort: f, hostPort: f } : f));
    for (const f of this.forwards) {
      if (f.hostAddress !== undefined && !/^127\.|^localhost$/.test(f.hostAddress))
        throw new LabError(`lab: forwards may only lead to loopback, not ${f.hostAddress}`);
    }
    this.shareRepo = opts.shareRepo ?? true;
    // 600 s: a disks-test guest rebooting beside two other busy guests on two cores took more than 300 s to
    // answer (2026-12-03, twice); a boot that is only slow must not fail a test.
    this.bootTimeoutMs = opts.bootTimeoutMs ?? 600_000;
    this.detached = opts.detached ?? false;
    this.image = init.image;
    this.hub = init.hub;
    this.localHub = init.localHub;
    this.#hubPorts = init.hubPorts;
    this.#hubPid = init.hubPid;
    this.#onProgress = opts.onProgress;
    opts.nodes.forEach((spec, index) => this.vms.push(new Vm({ lab: this, index, spec, image: init.image })));
    const names = new Set(this.vms.map((v) => v.name));
    if (names.size !== this.vms.length) throw new LabError('lab: node names must be unique');
  }

  vm(name: string): Vm {
    const vm = this.vms.find((v) => v.name === name);
    if (!vm) throw new LabError(`lab: no VM '${name}' (have ${this.vms.map((v) => v.name).join(', ')})`);
    return vm;
  }

  progress(line: string): void {
    this.#onProgress?.(line);
  }

  hubPortFor(node: string): Promise<number> {
    const p = this.#hubPorts.get(node);
    if (p === undefined) return Promise.reject(new LabError(`lab: hub has no port for ${node}`));
    return Promise.resolve(p);
  }

  async attachToHub(node: string, vmPort: number): Promise<void> {
    if (this.localHub) this.localHub.attach(node, vmPort);
    else await (this.hub as HubClient).attach(node, vmPort);
  }

  saveState(): void {
    if (this.#stopped) return;
    const state: LabState = {
      name: this.name,
      dir: this.dir,
      ownerPid: process.pid,
      detached: this.detached,
      ...(this.#hubPid !== undefined ? { hub: { pid: this.#hubPid, socket: join(this.dir, 'hub.sock') } } : {}),
      vms: this.vms.map((v) => v.toState()),
    };
    writeFileSync(join(this.dir, 'state.json.tmp'), JSON.stringify(state, null, 2));
    writeFileSync(join(this.dir, 'state.json'), JSON.stringify(state, null, 2));
    rmSync(join(this.dir, 'state.json.tmp'), { force: true });
  }

  /** Boots every VM that is not running, in parallel. */
  async startAll(): Promise<void> {
    const results = await Promise.allSettled(this.vms.filter((v) => !v.running && !v.deferStart).map((v) => v.start()));
    const failures = results.flatMap((r) => (r.status === 'rejected' ? [r.reason instanceof Error ? r.reason.message : String(r.reason)] : []));
    if (failures.length > 0) throw new LabError(`lab '${this.name}': ${failures.length} VM(s) did not boot:\n${failures.join('\n\n')}`);
  }

  /** Collects every VM's journal into artifacts/<label>/ and returns that directory. */
  async collectJournals(label: string): Promise<string> {
    await Promise.all(this.vms.map((v) => v.collectJournal(label)));
    return join(this.artifactsDir, sanitize(label));
  }

  /**
   * Lets this process exit while the lab keeps running (detached labs): drops
   * the agent and hub connections; the next exec() connects again.
   */
  release(): void {
    for (const v of this.vms) v.releaseChannel();
    if (this.hub instanceof HubClient) this.hub.close();
  }

  /** Kills every VM and the hub, removes sockets and the state file. Overlays and disks stay (for inspection) until the next start. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    await Promise.all(this.vms.map((v) => v.kill()));
    this.stopNow();
  }

  /** Synchronous stop for exit/signal handlers. */
  stopNow(): void {
    if (this.#stopped) return;
    for (const v of this.vms) v.killNow();
    for (const v of this.vms) v.closeChannel();
    this.#stopped = true;
    liveLabs.delete(this);
    this.localHub?.stop();
    if (this.#hubPid !== undefined && processMatches(this.#hubPid, this.dir)) killPid(this.#hubPid, 'SIGTERM');
    if (this.hub instanceof HubClient) this.hub.close();
    removeRunFiles(this.dir);
  }
}

function removeRunFiles(dir: string): void {
  for (const f of ['state.json', 'hub.sock', 'hub.json']) rmSync(join(dir, f), { force: true });
  try {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      if (!e.isDirectory()) continue;
      for (const s of ['agent.sock', 'qmp.sock']) rmSync(join(dir, e.name, s), { force: true });
    }
  } catch {
    /* no run dir */
  }
}

/**
 * Stops the lab recorded in .cache/lab/run/<name>/state.json, whichever
 * process started it: SIGKILL to each qemu and SIGTERM to the hub process,
 * but only pids whose command line names that run directory. Returns what it
 * stopped; a lab that is not running is not an error.
 */
export async function stopLabByName(name: string): Promise<{ stopped: string[] }> {
  const dir = labRunDir(name);
  const statePath = join(dir, 'state.json');
  const stopped: string[] = [];
  if (!existsSync(statePath)) return { stopped };
  const state = JSON.parse(readFileSync(statePath, 'utf8')) as LabState;
  const victims: Array<{ pid: number; marker: string }> = [];
  for (const vm of state.vms) {
    if (vm.pid !== null && processMatches(vm.pid, vm.agentSocket)) {
      killPid(vm.pid, 'SIGKILL');
      victims.push({ pid: vm.pid, marker: vm.agentSocket });
      stopped.push(`${vm.name} (qemu pid ${vm.pid})`);
    }
  }
  if (state.hub && processMatches(state.hub.pid, dir)) {
    killPid(state.hub.pid, 'SIGTERM');
    victims.push({ pid: state.hub.pid, marker: dir });
    stopped.push(`hub (pid ${state.hub.pid})`);
  }
  // Wait until they are really gone (a zombie whose parent is elsewhere still counts as gone).
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline && victims.some((v) => processMatches(v.pid, v.marker))) await sleep(100);
  removeRunFiles(dir);
  return { stopped };
}

/** Names of labs with a state file under .cache/lab/run/. */
export function listLabs(): string[] {
  const run = join(labCacheDir(), 'run');
  if (!existsSync(run)) return [];
  return readdirSync(run).filter((n) => existsSync(join(run, n, 'state.json')));
}

async function assertNotRunning(name: string): Promise<void> {
  const statePath = join(labRunDir(name), 'state.json');
  if (!existsSync(statePath)) return;
  let state: LabState;
  try {
    state = JSON.parse(readFileSync(statePath, 'utf8')) as LabState;
  } catch {
    return;
  }
  const alive = state.vms.filter((v) => v.pid !== null && processMatches(v.pid, v.agentSocket));
  if (alive.length > 0) {
    throw new LabError(
      `lab '${name}' is already running (${alive.map((v) => `${v.name} pid ${v.pid}`).join(', ')}, started by pid ${state.ownerPid}); ` +
        `stop it first (labDown / stopLabByName('${name}'))`,
    );
  }
  // Left over from a process that died: its hub may still be around.
  await stopLabByName(name);
}

async function startHubProcess(dir: string, nodes: string[], pcap: boolean): Promise<{ client: HubClient; ports: Map<string, number>; pid: number }> {
  const main = fileURLToPath(new URL('./hub-main.js', import.meta.url));
  if (!existsSync(main)) throw new LabError(`lab: ${main} is missing; build first (npm run build)`);
  writeFileSync(join(dir, 'hub-config.json'), JSON.stringify({ nodes, pcap: pcap ? join(dir, 'lan.pcap') : null }));
  rmSync(join(dir, 'hub.json'), { force: true });
  const log = openSync(join(dir, 'hub.log'), 'a');
  const child = spawn(process.execPath, [main, dir], { detached: true, stdio: ['ignore', log, log] });
  closeSync(log);
  child.unref();
  const deadline = Date.now() + 15_000;
  while (!existsSync(join(dir, 'hub.json'))) {
    if (Date.now() > deadline || child.exitCode !== null) throw new LabError(`lab: the hub process did not start; see ${join(dir, 'hub.log')}`);
    await sleep(100);
  }
  const info = JSON.parse(await readFile(join(dir, 'hub.json'), 'utf8')) as { pid: number; ports: Array<{ node: string; hubPort: number }> };
  const client = new HubClient(join(dir, 'hub.sock'));
  return { client, ports: new Map(info.ports.map((p) => [p.node, p.hubPort])), pid: info.pid };
}

function wantsSavedState(opts: LabOptions): boolean {
  return (opts.savedState ?? true) && process.env.BOSUN_LAB_SAVED_STATE !== '0';
}

/** The saved guest state for image: cached, or made now by booting one guest and saving it (saved-state.ts). */
function savedStateFor(image: LabImage, onProgress?: (line: string) => void): Promise<SavedState> {
  return ensureSavedState({
    cacheDir: join(buildCacheDir(), 'lab'),
    imageDir: image.dir,
    qemu: requireTool('qemu-system-x86_64', 'qemu-system-x86'),
    ...(onProgress ? { onProgress } : {}),
    build: async (tmpDir) => {
      const lab = await startLab({ name: `saving-${process.pid}`, nodes: [{ name: 'saved' }], forwards: [], image: image.dir, savedState: false });
      try {
        const vm = lab.vm('saved');
        const saveMs = await vm.saveTo(join(tmpDir, 'state.bin'), join(tmpDir, 'root.qcow2'));
        return { bootMs: vm.bootTimesMs[0] ?? 0, saveMs };
      } finally {
        await lab.stop();
        rmSync(lab.dir, { recursive: true, force: true });
      }
    },
  });
}

/**
 * Boots a lab: finds (or builds) the image, starts the hub, boots every VM in
 * parallel and resolves when all have booted. On failure everything started
 * is stopped and the error says which VM failed, why, and where its serial
 * log is.
 */
export async function startLab(opts: LabOptions): Promise<Lab> {
  const name = opts.name ?? 'lab';
  if (!/^[A-Za-z0-9._-]+$/.test(name)) throw new LabError(`lab: bad lab name '${name}'`);
  if (opts.nodes.length === 0) throw new LabError('lab: no nodes');
  requireTool('qemu-system-x86_64', 'qemu-system-x86');
  if (opts.shareRepo ?? true) assertBundleFresh();
  const image =
    opts.image !== undefined
      ? readImage(opts.image)
      : await ensureImage({ build: opts.buildImage ?? true, ...(opts.onProgress ? { onProgress: opts.onProgress } : {}) });
  requireTool('qemu-system-x86_64', 'qemu-system-x86');
  await assertNotRunning(name);
  const dir = labRunDir(name);
  mkdirSync(dir, { recursive: true });
  const nodes = opts.nodes.map((n) => n.name);
  let hub: HubControl;
  let localHub: Hub | undefined;
  let hubPorts: Map<string, number>;
  let hubPid: number | undefined;
  if (opts.detached) {
    const h = await startHubProcess(dir, nodes, opts.pcap ?? false);
    hub = h.client;
    hubPorts = h.ports;
    hubPid = h.pid;
  } else {
    localHub = await Hub.start(nodes, opts.pcap ? { pcapPath: join(dir, 'lan.pcap') } : {});
    hub = localHub;
    hubPorts = new Map(localHub.ports().map((p) => [p.node, p.hubPort]));
  }
  const lab = new Lab({ name, opts, image, hub, localHub, hubPorts, hubPid });
  if (!lab.detached) {
    installExitHooks();
    liveLabs.add(lab);
  }
  try {
    if (wantsSavedState(opts) && opts.nodes.some((n) => canRestore(n, lab))) lab.savedState = await savedStateFor(image, opts.onProgress);
  } catch (err) {
    await lab.stop();
    throw err;
  }
  // Fresh overlays for a fresh lab: what a previous run left is for inspection only.
  for (const vm of lab.vms) {
    for (const f of [vm.overlay, ...vm.disks]) rmSync(f, { force: true });
    for (const f of [vm.serialLog, vm.qemuLog]) if (existsSync(f)) unlinkSync(f);
  }
  lab.saveState();
  try {
    await lab.startAll();
  } catch (err) {
    await lab.stop();
    throw err;
  }
  return lab;
}
