import { z } from 'zod';
import { BackupSpec } from './backup-spec.js';
import { AbsolutePath, FileMode, Identifier, Ipv6Address, Port, Principal, RelativePath, SealedSecret } from './common.js';

/**
 * NodeSpec: the desired state of one host, as the control plane sends it over
 * Kafka. Objects are strict: a misspelt field is an error, never silently
 * ignored, because an ignored `wipe` or `ports` setting is how hosts get hurt.
 * New capabilities add optional fields; `apiVersion` changes only when the
 * meaning of an existing field changes.
 */

export const PackagesSpec = z.strictObject({
  /** packages to bring to their newest version at boot (dnf on Fedora) */
  refresh: z.array(z.string().regex(/^[A-Za-z0-9._+-]+$/, 'expected a package name')).default([]),
  /** give up refreshing after this long; the node still boots with what it has */
  deadlineSeconds: z.number().int().min(10).max(3600).default(600),
});

const DeviceMatch = z.strictObject({
  /** which kind of disk: all NVMe instance-store disks, or any disk */
  kind: z.enum(['nvme-instance-store', 'any']).default('any'),
  minSizeGiB: z.number().positive().optional(),
  /** exactly this many disks must match, or the phase refuses */
  count: z.number().int().min(1).max(64).optional(),
  /** only disks with no signature at all (no partition table, filesystem, RAID or LUKS header) */
  unused: z.boolean().default(true),
});

export const DiskSelection = z.union([z.strictObject({ paths: z.array(AbsolutePath).min(1).max(64) }), z.strictObject({ match: DeviceMatch })]);

export const RaidSpec = z.strictObject({
  level: z.literal([0, 1, 10]),
  /** the array's fixed name: /dev/md/<name> after every reboot */
  name: Identifier.default('data'),
  chunkKiB: z.number().int().min(4).max(65536).optional(),
});

export const LuksKey = z.union([SealedSecret, z.strictObject({ keyFile: AbsolutePath })], {
  error: () => 'expected a sealed secret {"sealed": …} or a key file {"keyFile": "/abs/path"}; plaintext keys are refused',
});

export const LuksSpec = z.strictObject({
  /** the mapping name: /dev/mapper/<name> */
  name: Identifier.default('data'),
  key: LuksKey,
  /** pass discards through (instance-store SSDs); leaks which blocks are in use */
  discard: z.boolean().default(true),
});

export const FilesystemSpec = z.strictObject({
  type: z.enum(['xfs', 'ext4']),
  label: z
    .string()
    .regex(/^[A-Za-z0-9_-]{1,12}$/, 'expected at most 12 letters, digits, "-" or "_"')
    .optional(),
  mountOptions: z.array(z.string().regex(/^[A-Za-z0-9_=.,:-]+$/)).default(['noatime']),
});

export const MountSpec = z.strictObject({
  path: AbsolutePath,
  owner: Principal.optional(),
  group: Principal.optional(),
  mode: FileMode.default('0750'),
});

export const DisksSpec = z
  .strictObject({
    devices: DiskSelection,
    raid: RaidSpec.optional(),
    luks: LuksSpec.optional(),
    filesystem: FilesystemSpec,
    mount: MountSpec,
    /**
     * What to do with a selected disk that holds a signature bosun did not make:
     * refuse (default; report and change nothing) or wipe it (only for disks that
     * are known to be scratch, such as fresh instance store).
     */
    foreignSignatures: z.enum(['refuse', 'wipe']).default('refuse'),
  })
  .superRefine((d, ctx) => {
    const n = 'paths' in d.devices ? d.devices.paths.length : d.devices.match.count;
    if (d.raid && n !== undefined && n < 2) {
      ctx.addIssue({ code: 'custom', path: ['raid'], message: `RAID ${d.raid.level} needs at least 2 devices, ${n} selected` });
    }
    if (!d.raid && n !== undefined && n !== 1) {
      ctx.addIssue({ code: 'custom', path: ['devices'], message: `${n} devices selected but no raid level given; a single volume uses exactly one device` });
    }
    if ('paths' in d.devices && new Set(d.devices.paths).size !== d.devices.paths.length) {
      ctx.addIssue({ code: 'custom', path: ['devices', 'paths'], message: 'a device is listed twice' });
    }
  });

export const IpsecPeer = z.strictObject({
  node: Identifier,
  address: Ipv6Address,
  /** pre-shared key for this pair, sealed to this host */
  psk: SealedSecret.optional(),
});

export const IpsecCertAuth = z.strictObject({
  /** this host's certificate and the CA that signed every peer's, PEM */
  certificate: z.string().includes('BEGIN CERTIFICATE'),
  ca: z.string().includes('BEGIN CERTIFICATE'),
  key: SealedSecret,
});

export const IpsecSpec = z
  .strictObject({
    backend: z.enum(['libreswan', 'strongswan']).default('libreswan'),
    /** this node's own address on the cluster link */
    address: Ipv6Address,
    auth: z.enum(['psk', 'cert']).default('psk'),
    cert: IpsecCertAuth.optional(),
    peers: z.array(IpsecPeer).max(1000).default([]),
  })
  .superRefine((s, ctx) => {
    const seenNodes = new Set<string>();
    const seenAddrs = new Set<string>([s.address]);
    s.peers.forEach((p, i) => {
      if (seenNodes.has(p.node)) ctx.addIssue({ code: 'custom', path: ['peers', i, 'node'], message: `peer ${p.node} is listed twice` });
      if (seenAddrs.has(p.address))
        ctx.addIssue({ code: 'custom', path: ['peers', i, 'address'], message: 'address is used twice (by another peer or by this node)' });
      seenNodes.add(p.node);
      seenAddrs.add(p.address);
      if (s.auth === 'psk' && !p.psk) ctx.addIssue({ code: 'custom', path: ['peers', i, 'psk'], message: 'required when auth is "psk"' });
    });
    if (s.auth === 'cert' && !s.cert) ctx.addIssue({ code: 'custom', path: ['cert'], message: 'required when auth is "cert"' });
  });

export const NetworkSpec = z.strictObject({
  ipsec: IpsecSpec.optional(),
});

const ConfigValue = z.union([z.string(), z.number(), z.boolean()]);

export const ConfigFile = z.strictObject({
  /** how settings are written: `key = value` lines (PostgreSQL), `key=value` (Java properties) */
  format: z.enum(['conf', 'properties']),
  settings: z.record(z.string(), ConfigValue).default({}),
  /** keys the platform needs; a user override may neither remove them nor change their value */
  required: z.array(z.string()).default([]),
});

// eslint-disable-next-line no-control-regex -- the point is to find control characters
const hasControl = (v: string): boolean => /[\x00-\x1f\x7f]/.test(v);

/** A config key as both formats can write it: no spaces, no "=", no comment characters. */
const ConfigKey = /^[A-Za-z0-9_.-]+$/;

export const ContainerSpec = z
  .strictObject({
    /** machine name: systemd-nspawn@<name>.service */
    name: Identifier,
    /** a directory tree pre-installed on the host image */
    image: AbsolutePath,
    /** the service inside the container, for reload and health */
    service: z.strictObject({
      unit: z.string().regex(/^[A-Za-z0-9@._-]+\.service$/, 'expected a systemd service unit name'),
      /** how a config change reaches the running service: reload it (ExecReload) or restart it; never the whole machine */
      onConfigChange: z.enum(['reload', 'restart']).default('restart'),
      /** a command run inside the machine; exit 0 means healthy */
      health: z.array(z.string()).min(1).optional(),
      /** how long a start may take to become healthy */
      startTimeoutSeconds: z.number().int().min(5).max(3600).default(300),
    }),
    limits: z
      .strictObject({
        memoryMax: z
          .string()
          .regex(/^[0-9]+[KMGT]?$/, 'expected bytes with an optional K, M, G or T suffix')
          .optional(),
        cpuQuota: z
          .string()
          .regex(/^[1-9][0-9]*%$/, 'expected a percentage such as "200%"')
          .optional(),
        ioWeight: z.number().int().min(1).max(10000).optional(),
        tasksMax: z.number().int().min(1).optional(),
      })
      .default({}),
    network: z
      .strictObject({
        /** private: own network namespace behind a veth, only `ports` published; host: the host's network */
        mode: z.enum(['private', 'host']).default('private'),
        ports: z.array(z.strictObject({ host: Port, container: Port, protocol: z.enum(['tcp', 'udp']).default('tcp') })).default([]),
      })
      .default({ mode: 'private', ports: [] }),
    /** capabilities the service keeps besides what the machine's init needs; every other one is dropped */
    capabilities: z.array(z.string().regex(/^CAP_[A-Z_]+$/, 'expected a capability name such as CAP_NET_BIND_SERVICE')).default([]),
    config: z
      .strictObject({
        /** where inside the container the config directory appears (read-only) */
        mountPoint: AbsolutePath,
        files: z.record(RelativePath, ConfigFile).default({}),
        /** user settings merged on top of `files`, per file; null removes a setting; a required setting cannot be changed or removed */
        overrides: z.record(RelativePath, z.record(z.string(), z.union([ConfigValue, z.null()]))).default({}),
      })
      .optional(),
    /** where the data volume appears inside the container (read-write) */
    dataMountPoint: AbsolutePath.optional(),
  })
  .superRefine((container, ctx) => {
    const net = container.network;
    if (net.mode === 'host' && net.ports.length > 0)
      ctx.addIssue({
        code: 'custom',
        path: ['network', 'ports'],
        message: 'ports are published only from a private network; with "host" the service is on the host\'s ports already',
      });
    if (net.mode === 'private' && container.name.length > 12)
      ctx.addIssue({
        code: 'custom',
        path: ['name'],
        message: 'at most 12 characters with a private network (the host side of its link is "ve-<name>", 15 characters at most)',
      });
    const seen = new Set<string>();
    net.ports.forEach((port, i) => {
      const k = `${port.protocol}:${port.host}`;
      if (seen.has(k))
        ctx.addIssue({ code: 'custom', path: ['network', 'ports', i, 'host'], message: `${port.protocol} port ${port.host} is published twice` });
      seen.add(k);
    });
    const mounts: [string, string | undefined][] = [
      ['dataMountPoint', container.dataMountPoint],
      ['config', container.config?.mountPoint],
    ];
    for (const [field, mountPoint] of mounts) {
      if (mountPoint !== undefined && mountPoint.replace(/\/+$/, '') === '')
        ctx.addIssue({ code: 'custom', path: field === 'config' ? ['config', 'mountPoint'] : [field], message: "cannot be the container's root" });
    }
    if (container.config && container.dataMountPoint) {
      const configDir = container.config.mountPoint.replace(/\/+$/, '') + '/';
      const dataDir = container.dataMountPoint.replace(/\/+$/, '') + '/';
      if (configDir.startsWith(dataDir) || dataDir.startsWith(configDir))
        ctx.addIssue({ code: 'custom', path: ['config', 'mountPoint'], message: 'the config directory and the data volume cannot sit inside each other' });
    }
    if (!container.config) return;
    for (const [file, configFile] of Object.entries(container.config.files)) {
      for (const [key, value] of Object.entries(configFile.settings)) {
        if (!ConfigKey.test(key))
          ctx.addIssue({ code: 'custom', path: ['config', 'files', file, 'settings', key], message: 'expected a key of letters, digits, "_", "." or "-"' });
        if (typeof value === 'string' && hasControl(value))
          ctx.addIssue({
            code: 'custom',
            path: ['config', 'files', file, 'settings', key],
            message: 'control characters (such as a newline) are not allowed in a value',
          });
      }
      configFile.required.forEach((key, i) => {
        if (!(key in configFile.settings))
          ctx.addIssue({ code: 'custom', path: ['config', 'files', file, 'required', i], message: 'marked required but this file has no such setting' });
      });
    }
    for (const [file, overrides] of Object.entries(container.config.overrides)) {
      const base = container.config.files[file];
      if (!base) {
        ctx.addIssue({ code: 'custom', path: ['config', 'overrides', file], message: 'overrides a file that is not in config.files' });
        continue;
      }
      for (const [key, value] of Object.entries(overrides)) {
        const path = ['config', 'overrides', file, key];
        if (!ConfigKey.test(key)) ctx.addIssue({ code: 'custom', path, message: 'expected a key of letters, digits, "_", "." or "-"' });
        if (typeof value === 'string' && hasControl(value))
          ctx.addIssue({ code: 'custom', path, message: 'control characters (such as a newline) are not allowed in a value' });
        if (!base.required.includes(key)) continue;
        if (value === null) ctx.addIssue({ code: 'custom', path, message: 'required by the platform: an override cannot remove it' });
        else if (value !== base.settings[key]) ctx.addIssue({ code: 'custom', path, message: 'required by the platform: an override cannot change it' });
      }
    }
  });

export const ObjectStorageRestore = z.strictObject({
  from: z.literal('object-storage'),
  bucket: z.string().min(3).max(63),
  prefix: z.string().default(''),
  /** which backup: "latest" or a backup id */
  backup: z.string().default('latest'),
  credentials: z.strictObject({ accessKeyId: SealedSecret, secretAccessKey: SealedSecret }).optional(),
  /** key that opens the backup's sealed data key */
  backupKey: SealedSecret.optional(),
  bandwidthLimitMiBps: z.number().positive().optional(),
});

/** "ed25519:<base64url>", a host's identity key as `bosun identity` prints it */
export const Ed25519Key = z
  .string()
  .regex(/^ed25519:[A-Za-z0-9_-]{43}$/, 'expected an Ed25519 host key as printed by `bosun identity` (ed25519:<43 base64url characters>)');

/** the default port of an agent's snapshot server on the mesh */
export const PEER_SNAPSHOT_PORT = 7433;

const RESTORE_PLACEHOLDERS = new Set(['peer', 'peerAddress', 'target', 'node']);

/** An argv whose "{name}" placeholders are all known ("{{" and "}}" are literal braces). */
const CommandArgv = z
  .array(z.string().min(1))
  .min(1)
  .superRefine((argv, ctx) => {
    argv.forEach((arg, i) => {
      for (const m of arg.matchAll(/\{\{|\}\}|\{([A-Za-z]*)\}|[{}]/g)) {
        if (m[0] === '{{' || m[0] === '}}') continue;
        if (m[1] === undefined || !RESTORE_PLACEHOLDERS.has(m[1]))
          ctx.addIssue({
            code: 'custom',
            path: [i],
            message: `unknown placeholder ${m[0]}: expected {peer}, {peerAddress}, {target} or {node} ({{ and }} for literal braces)`,
          });
      }
    });
  });

export const PeerRestore = z.strictObject({
  from: z.literal('peer'),
  peer: Identifier,
  /**
   * "snapshot": the peer's agent serves a consistent snapshot of its data
   * volume in the backup format over TLS pinned to both host keys;
   * "command": the service's own tool copies from the peer (e.g. pg_basebackup).
   */
  method: z.enum(['snapshot', 'command']).optional(),
  /** the peer's Ed25519 host key: the only key its snapshot server may present, and the key its snapshot must be signed with */
  peerKey: Ed25519Key.optional(),
  /** the peer agent's snapshot server port on the mesh */
  port: Port.optional(),
  /** method "command": argv run on this host (no shell), with {peer}, {peerAddress}, {target} (the empty staging directory to fill) and {node} substituted */
  command: z
    .strictObject({
      argv: CommandArgv,
      timeoutSeconds: z
        .number()
        .int()
        .min(1)
        .max(7 * 86400)
        .optional(),
    })
    .optional(),
  /** when the peer cannot serve: fail, or restore from object storage instead */
  fallback: ObjectStorageRestore.omit({ from: true }).optional(),
});

export const RestoreSpec = z.discriminatedUnion('from', [ObjectStorageRestore, PeerRestore]);

/**
 * This node serves restores to its peers: a snapshot server on its mesh
 * address, quiesce/release hooks around each snapshot (argv, run on the host),
 * and the peers allowed to pull, by host key.
 */
export const PeerServeSpec = z.strictObject({
  port: Port.optional(),
  clients: z.array(z.strictObject({ node: Identifier, hostKey: Ed25519Key })).min(1),
  hooks: z
    .strictObject({
      /** makes the data volume consistent until release, e.g. ["podman", "pause", "pg"] */
      quiesce: z.array(z.string().min(1)).min(1).optional(),
      /** undoes quiesce; always run, also when the snapshot failed */
      release: z.array(z.string().min(1)).min(1).optional(),
      timeoutSeconds: z.number().int().min(1).max(3600).optional(),
    })
    .optional(),
  /** where snapshots are spooled while served (needs about their stored size free); outside the data volume */
  spoolDir: AbsolutePath.optional(),
});

const UnitName = z.string().regex(/^[A-Za-z0-9@._*-]+\.(service|scope|slice|mount|timer)$/, 'expected a systemd unit name');
const HostPort = z.string().regex(/^[A-Za-z0-9.-]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$/, 'expected host:port');

/** telegraf: scrape bosun's metrics endpoint and the service's, and watch the units that matter. */
export const TelegrafTemplate = z.strictObject({
  kind: z.literal('telegraf'),
  intervalSeconds: z.number().int().min(1).max(3600).default(30),
  /** bosun's own Prometheus endpoint (agent.json metrics.listen) */
  bosunMetrics: z.url({ protocol: /^https?$/ }).default('http://127.0.0.1:9559/metrics'),
  /** the service's Prometheus endpoints */
  serviceMetrics: z.array(z.url({ protocol: /^https?$/ })).default([]),
  /** units whose state telegraf reports */
  units: z.array(UnitName).default(['bosun.service', 'systemd-nspawn@*.service']),
});

/** journalpump: ship the journal to Kafka. */
export const JournalpumpTemplate = z.strictObject({
  kind: z.literal('journalpump'),
  brokers: z.array(HostPort).min(1),
  topic: z.string().regex(/^[A-Za-z0-9._-]{1,249}$/, 'expected a Kafka topic name'),
  /** only these units' messages (empty: the whole journal) */
  units: z.array(UnitName).default([]),
  tls: z.strictObject({ ca: AbsolutePath, cert: AbsolutePath.optional(), key: AbsolutePath.optional() }).optional(),
});

export const AuxiliaryAgent = z
  .strictObject({
    name: Identifier,
    unit: z.string().regex(/^[A-Za-z0-9@._-]+\.service$/, 'expected a systemd service unit name'),
    /** the config file: its content given as is, or made by bosun from `template` */
    config: z.strictObject({ path: AbsolutePath, content: z.string().optional(), mode: FileMode.default('0644') }).optional(),
    template: z.discriminatedUnion('kind', [TelegrafTemplate, JournalpumpTemplate]).optional(),
    enabled: z.boolean().default(true),
  })
  .superRefine((a, ctx) => {
    if (a.template && !a.config) ctx.addIssue({ code: 'custom', path: ['config'], message: 'a template needs config.path: where to write what it makes' });
    if (a.template && a.config?.content !== undefined)
      ctx.addIssue({ code: 'custom', path: ['config', 'content'], message: 'give either config.content or a template, not both' });
    if (!a.template && a.config && a.config.content === undefined)
      ctx.addIssue({ code: 'custom', path: ['config', 'content'], message: 'expected the file content (or a template)' });
  });

export const HealthSpec = z.strictObject({
  intervalSeconds: z.number().int().min(5).max(3600).default(30),
});

/**
 * Take this node out of service for good: stop the service, leave the mesh,
 * destroy every LUKS keyslot (crypto-erase) and report that the host is safe
 * to delete. The other sections stay: they name what there is to tear down.
 */
export const DecommissionSpec = z.strictObject({
  /** must equal `node`: a control-plane typo must not erase the wrong host */
  confirmNode: Identifier,
  /** crypto: destroy the LUKS keyslots so the disks are unreadable; none: only stop and leave */
  erase: z.enum(['crypto', 'none']).default('crypto'),
});

export const NodeSpec = z
  .strictObject({
    apiVersion: z.literal('bosun/v1'),
    cluster: Identifier,
    node: Identifier,
    /** only grows; an agent ignores any version it has already applied */
    version: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
    packages: PackagesSpec.optional(),
    disks: DisksSpec.optional(),
    network: NetworkSpec.optional(),
    container: ContainerSpec.optional(),
    restore: RestoreSpec.optional(),
    /** serve snapshots of the data volume to peers that restore from this node */
    peerServe: PeerServeSpec.optional(),
    /** back the data volume up to object storage on a schedule */
    backup: BackupSpec.optional(),
    auxiliary: z.array(AuxiliaryAgent).default([]),
    health: HealthSpec.default({ intervalSeconds: 30 }),
    /** present: this node is being retired; nothing is built, everything listed is torn down */
    decommission: DecommissionSpec.optional(),
  })
  .superRefine((s, ctx) => {
    if (s.decommission && s.decommission.confirmNode !== s.node) {
      ctx.addIssue({ code: 'custom', path: ['decommission', 'confirmNode'], message: `must equal "node" (${s.node}) to decommission this host` });
    }
    if (s.decommission?.erase === 'crypto' && !s.disks?.luks) {
      ctx.addIssue({
        code: 'custom',
        path: ['decommission', 'erase'],
        message: 'cannot crypto-erase an unencrypted volume; use erase: none to decommission without erasing',
      });
    }
    s.network?.ipsec?.peers.forEach((p, i) => {
      if (p.node === s.node) ctx.addIssue({ code: 'custom', path: ['network', 'ipsec', 'peers', i, 'node'], message: 'a node cannot be its own peer' });
    });
    if (s.restore && !s.disks) ctx.addIssue({ code: 'custom', path: ['restore'], message: 'restore needs a data volume: add "disks"' });
    if (s.restore?.from === 'peer' && s.restore.peer === s.node)
      ctx.addIssue({ code: 'custom', path: ['restore', 'peer'], message: 'a node cannot restore from itself' });
    if (s.restore?.from === 'peer' && s.restore.method === 'command' && !s.restore.command)
      ctx.addIssue({ code: 'custom', path: ['restore', 'command'], message: 'required when method is "command"' });
    if (s.restore?.from === 'peer' && s.restore.method !== 'command' && s.restore.command)
      ctx.addIssue({ code: 'custom', path: ['restore', 'method'], message: 'a restore command is only run with method "command"' });
    if (s.peerServe && !s.disks) ctx.addIssue({ code: 'custom', path: ['peerServe'], message: 'serving snapshots needs a data volume: add "disks"' });
    s.peerServe?.clients.forEach((c, i) => {
      if (c.node === s.node) ctx.addIssue({ code: 'custom', path: ['peerServe', 'clients', i, 'node'], message: 'a node cannot serve restores to itself' });
    });
    if (s.backup && !s.disks) ctx.addIssue({ code: 'custom', path: ['backup'], message: 'backups are of the data volume: add "disks"' });
    const spool = s.backup?.consistency.method === 'snapshot' ? s.backup.consistency.spoolDir : undefined;
    if (spool && s.disks && isWithin(spool, s.disks.mount.path))
      ctx.addIssue({
        code: 'custom',
        path: ['backup', 'consistency', 'spoolDir'],
        message: `must be outside the data volume (${s.disks.mount.path}): the spool would be part of its own backup`,
      });
    if (s.container?.dataMountPoint && !s.disks)
      ctx.addIssue({ code: 'custom', path: ['container', 'dataMountPoint'], message: 'needs a data volume: add "disks"' });
    const names = new Set<string>();
    s.auxiliary.forEach((a, i) => {
      if (names.has(a.name)) ctx.addIssue({ code: 'custom', path: ['auxiliary', i, 'name'], message: `auxiliary agent ${a.name} is listed twice` });
      names.add(a.name);
    });
  });

/** Is path the directory dir or inside it (both absolute, no ".." components)? */
function isWithin(path: string, dir: string): boolean {
  const trimmed = (p: string): string => p.replace(/\/+$/, '') || '/';
  const [inner, outer] = [trimmed(path), trimmed(dir)];
  return inner === outer || inner.startsWith(outer === '/' ? '/' : `${outer}/`);
}

export type NodeSpec = z.infer<typeof NodeSpec>;
export type DisksSpec = z.infer<typeof DisksSpec>;
export type IpsecSpec = z.infer<typeof IpsecSpec>;
export type ContainerSpec = z.infer<typeof ContainerSpec>;
export type RestoreSpec = z.infer<typeof RestoreSpec>;
export type PeerRestoreSpec = z.infer<typeof PeerRestore>;
export type PeerServeSpec = z.infer<typeof PeerServeSpec>;
export type AuxiliaryAgent = z.infer<typeof AuxiliaryAgent>;
export type PackagesSpec = z.infer<typeof PackagesSpec>;
export type DecommissionSpec = z.infer<typeof DecommissionSpec>;
