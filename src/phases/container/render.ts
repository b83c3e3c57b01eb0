import type { ContainerSpec, NodeSpec } from '../../spec/node-spec.js';

/*
 * What the container phase writes, rendered from the spec alone (pure): the
 * machine's .nspawn settings, two drop-ins for systemd-nspawn@<name>.service
 * (how it starts; its resource limits) and the service's config files.
 * Each is compared with what the host has, and the kind of file that changed
 * decides what the change costs: a machine restart, a live limit change, a
 * reload of the service inside, or nothing.
 */

/** nspawn's default bounding set for a container (systemd 252, src/nspawn/nspawn.c), plus CAP_NET_ADMIN which it adds for a private network. */
export const NSPAWN_DEFAULT_CAPS = [
  'CAP_AUDIT_CONTROL',
  'CAP_AUDIT_WRITE',
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_DAC_READ_SEARCH',
  'CAP_FOWNER',
  'CAP_FSETID',
  'CAP_IPC_OWNER',
  'CAP_KILL',
  'CAP_LEASE',
  'CAP_LINUX_IMMUTABLE',
  'CAP_MKNOD',
  'CAP_NET_ADMIN',
  'CAP_NET_BIND_SERVICE',
  'CAP_NET_BROADCAST',
  'CAP_NET_RAW',
  'CAP_SETFCAP',
  'CAP_SETGID',
  'CAP_SETPCAP',
  'CAP_SETUID',
  'CAP_SYS_ADMIN',
  'CAP_SYS_BOOT',
  'CAP_SYS_CHROOT',
  'CAP_SYS_NICE',
  'CAP_SYS_PTRACE',
  'CAP_SYS_RESOURCE',
  'CAP_SYS_TTY_CONFIG',
] as const;

/**
 * What systemd needs as the machine's init to boot and run units: mount its
 * own API filesystems and unit sandboxes (CAP_SYS_ADMIN, which inside the
 * machine's user namespace reaches only the machine's own namespaces), set up
 * /run with tmpfiles (CHOWN, FOWNER, DAC_OVERRIDE), start services as their
 * users with their own bounding sets (SETUID, SETGID, SETPCAP) and stop them
 * (KILL). Everything else is the service's to ask for in `capabilities`.
 */
export const INIT_CAPS = ['CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FOWNER', 'CAP_KILL', 'CAP_SETGID', 'CAP_SETPCAP', 'CAP_SETUID', 'CAP_SYS_ADMIN'] as const;

export const NSPAWN_BIN = '/usr/bin/systemd-nspawn';
/** The link between host and machine (private network): a /30 the host routes only to the machine. */
export const LINK = { host: '169.254.240.1', machine: '169.254.240.2', prefix: 30 } as const;

export const machineUnit = (c: ContainerSpec): string => `systemd-nspawn@${c.name}.service`;
export const nspawnPath = (nspawnDir: string, c: ContainerSpec): string => `${nspawnDir}/${c.name}.nspawn`;
export const dropInDir = (c: ContainerSpec): string => `/etc/systemd/system/${machineUnit(c)}.d`;
export const startDropIn = (c: ContainerSpec): string => `${dropInDir(c)}/10-bosun-machine.conf`;
export const limitsDropIn = (c: ContainerSpec): string => `${dropInDir(c)}/20-bosun-limits.conf`;
/** The config directory on the host: written by the agent, bound read-only into the machine. */
export const configDir = (c: ContainerSpec): string => `/etc/bosun/container/${c.name}`;
/** Which files in the config directory bosun wrote, so a file dropped from the spec is removed. */
export const MANIFEST = '.bosun-files';

/**
 * Run a command inside the running machine, in all its namespaces, as its
 * root. `systemd-run --machine=` and `systemctl --machine=` would be the
 * natural spelling, but on systemd 252 (Debian bookworm) their bus connection
 * into a machine with its own user namespace fails ("Failed to connect to
 * bus: No such file or directory"); nsenter into machined's leader works on
 * every version.
 */
export function machineArgv(c: ContainerSpec, argv: readonly string[]): string[] {
  return [
    '/bin/sh',
    '-c',
    'leader=$(machinectl show --property=Leader --value "$1") && shift && exec nsenter --target "$leader" --all -- "$@"',
    'sh',
    c.name,
    ...argv,
  ];
}

/** argv run inside the machine whose leader (its init, from machinectl's Leader) is known: no lookup of its own. */
export function leaderArgv(leader: number, argv: readonly string[]): string[] {
  return ['nsenter', '--target', String(leader), '--all', '--', ...argv];
}

export function keptCaps(c: ContainerSpec): string[] {
  return [...new Set([...INIT_CAPS, ...c.capabilities])].sort();
}

export function renderNspawn(spec: NodeSpec): string {
  const container = spec.container!;
  const kept = new Set(keptCaps(container));
  const drop = NSPAWN_DEFAULT_CAPS.filter((cap) => !kept.has(cap) && !(cap === 'CAP_NET_ADMIN' && container.network.mode === 'host'));
  const extra = [...kept].filter((cap) => !(NSPAWN_DEFAULT_CAPS as readonly string[]).includes(cap));
  const lines = [
    `# Written by bosun (container phase): machine ${container.name}. Edits are overwritten; a change restarts the machine.`,
    '[Exec]',
    'Boot=yes',
    'PrivateUsers=pick',
    'NoNewPrivileges=yes',
    ...(extra.length ? [`Capability=${extra.join(' ')}`] : []),
    `DropCapability=${drop.join(' ')}`,
    'ResolvConf=off',
    'Timezone=off',
    'LinkJournal=no',
    '',
    '[Files]',
    'ReadOnly=yes',
    'PrivateUsersOwnership=map',
  ];
  if (container.config) lines.push(`BindReadOnly=${configDir(container)}:${container.config.mountPoint}:idmap`);
  if (container.dataMountPoint) lines.push(`Bind=${spec.disks!.mount.path}:${container.dataMountPoint}:idmap`);
  lines.push('', '[Network]');
  if (container.network.mode === 'host') {
    lines.push('Private=no', 'VirtualEthernet=no');
  } else {
    lines.push('Private=yes', 'VirtualEthernet=yes');
    for (const port of container.network.ports) lines.push(`Port=${port.protocol}:${port.host}:${port.container}`);
  }
  return `${lines.join('\n')}\n`;
}

/** How the machine starts: the image directory, what must be mounted first, and its end of the private link. */
export function renderStartDropIn(spec: NodeSpec): string {
  const container = spec.container!;
  const needs = [...(container.dataMountPoint ? [spec.disks!.mount.path] : []), ...(container.config ? [configDir(container)] : [])];
  const lines = [
    `# Written by bosun (container phase): how machine ${container.name} starts. Edits are overwritten; a change restarts the machine.`,
    '[Unit]',
    ...(needs.length ? [`RequiresMountsFor=${needs.join(' ')}`] : []),
    '',
    '[Service]',
    'ExecStart=',
    `ExecStart=${NSPAWN_BIN} --quiet --keep-unit --boot --link-journal=no --settings=override --machine=%i --directory=${container.image}`,
  ];
  if (container.network.mode === 'private') {
    // nspawn makes the veth pair but leaves it unconfigured (that is networkd's
    // job, which bosun hosts do not run): give both ends an address from the
    // host, so it works whatever the image carries. nspawn publishes `Port=`
    // to the machine's address as soon as it appears.
    const inMachine = 'nsenter --target "$leader" --net';
    const script = [
      'leader=$(machinectl show --property=Leader --value "$1")',
      'ip link set "ve-$1" up',
      `ip addr replace ${LINK.host}/${LINK.prefix} dev "ve-$1"`,
      `${inMachine} ip link set host0 up`,
      `${inMachine} ip addr replace ${LINK.machine}/${LINK.prefix} dev host0`,
      `${inMachine} ip route replace default via ${LINK.host}`,
      ...(container.network.ports.length ? ['sysctl -q -w net.ipv4.ip_forward=1'] : []),
    ].join('; ');
    // "$$" is a literal "$" for systemd (it expands $NAME itself).
    lines.push(`ExecStartPost=/bin/sh -ec '${script.replace(/\$/g, '$$$$')}' sh %i`);
  }
  return `${lines.join('\n')}\n`;
}

/** The resource limits: a change applies to the running machine with `systemctl set-property --runtime`, no restart. */
export function limitProperties(c: ContainerSpec): [string, string][] {
  const l = c.limits;
  return [
    ['MemoryMax', l.memoryMax ?? 'infinity'],
    ['CPUQuota', l.cpuQuota ?? ''],
    ['IOWeight', l.ioWeight !== undefined ? String(l.ioWeight) : ''],
    ['TasksMax', l.tasksMax !== undefined ? String(l.tasksMax) : 'infinity'],
  ];
}

export function renderLimitsDropIn(spec: NodeSpec): string {
  const c = spec.container!;
  return [
    `# Written by bosun (container phase): resource limits of machine ${c.name}. Edits are overwritten; a change applies live.`,
    '[Service]',
    ...limitProperties(c).map(([k, v]) => `${k}=${v}`),
    '',
  ].join('\n');
}

type Value = string | number | boolean;

/** Platform settings with the user's overrides on top (null removes one); keys sorted, so key order in the spec never shows as a change. */
export function mergedSettings(c: ContainerSpec, file: string): [string, Value][] {
  const base = c.config!.files[file]!;
  const merged = new Map<string, Value>(Object.entries(base.settings));
  for (const [k, v] of Object.entries(c.config!.overrides[file] ?? {})) {
    // Validation refuses an override of a required key; this keeps the rule even for a spec built in code.
    if (base.required.includes(k)) continue;
    if (v === null) merged.delete(k);
    else merged.set(k, v);
  }
  return [...merged.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

function confValue(v: Value): string {
  if (typeof v === 'number') return String(v);
  if (typeof v === 'boolean') return v ? 'on' : 'off';
  return `'${v.replace(/\\/g, '\\\\').replace(/'/g, "''")}'`;
}

function propertiesValue(v: Value): string {
  return String(v)
    .replace(/\\/g, '\\\\')
    .replace(/^\s/, (s) => `\\${s}`);
}

export function renderConfigFile(c: ContainerSpec, file: string): string {
  const f = c.config!.files[file]!;
  const head = `# Written by bosun (container phase) from the spec, with the user's overrides merged. Edits are overwritten.\n`;
  const body = mergedSettings(c, file).map(([k, v]) => (f.format === 'conf' ? `${k} = ${confValue(v)}` : `${k}=${propertiesValue(v)}`));
  return `${head}${body.join('\n')}\n`;
}

/** Every config file, by path relative to the config directory. */
export function renderConfig(c: ContainerSpec): Record<string, string> {
  if (!c.config) return {};
  return Object.fromEntries(
    Object.keys(c.config.files)
      .sort()
      .map((f) => [f, renderConfigFile(c, f)]),
  );
}

export function renderManifest(files: Record<string, string>): string {
  return Object.keys(files)
    .sort()
    .map((f) => `${f}\n`)
    .join('');
}
