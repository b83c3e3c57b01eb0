import { readFile } from 'node:fs/promises';

/**
 * Every difference between distributions lives here and nowhere else: the
 * target is Fedora, the lab is Debian. Phases ask the Distro for commands and
 * paths; they never spell a package manager or a config path themselves.
 */
export interface Distro {
  readonly id: 'fedora' | 'debian';
  /** argv lists that bring the named packages to their newest version, run in order */
  refreshPackages(packages: readonly string[]): string[][];
  readonly mdadmConf: string;
  readonly ipsecDir: string;
  readonly nspawnDir: string;
}

const fedora: Distro = {
  id: 'fedora',
  refreshPackages: (pkgs) => [['dnf', '-y', '--refresh', 'upgrade', ...pkgs]],
  mdadmConf: '/etc/mdadm.conf',
  ipsecDir: '/etc/ipsec.d',
  nspawnDir: '/etc/systemd/nspawn',
};

const debian: Distro = {
  id: 'debian',
  refreshPackages: (pkgs) => [
    ['apt-get', 'update', '-q'],
    ['apt-get', 'install', '-y', '-q', '--only-upgrade', ...pkgs],
  ],
  mdadmConf: '/etc/mdadm/mdadm.conf',
  ipsecDir: '/etc/ipsec.d',
  nspawnDir: '/etc/systemd/nspawn',
};

export const DISTROS = { fedora, debian } as const;
export type DistroId = keyof typeof DISTROS;

export function isDistroId(s: string): s is DistroId {
  return s === 'fedora' || s === 'debian';
}

/** The distro of the running host, from /etc/os-release; Fedora when it is neither. */
export async function detectDistro(osRelease = '/etc/os-release'): Promise<Distro> {
  let text: string;
  try {
    text = await readFile(osRelease, 'utf8');
  } catch {
    return fedora;
  }
  const fields = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^([A-Z_]+)=("?)(.*)\2$/.exec(line.trim());
    if (m) fields.set(m[1]!, m[3]!);
  }
  const ids = [fields.get('ID') ?? '', ...(fields.get('ID_LIKE') ?? '').split(/\s+/)];
  if (ids.includes('fedora') || ids.includes('rhel')) return fedora;
  if (ids.includes('debian')) return debian;
  return fedora;
}
