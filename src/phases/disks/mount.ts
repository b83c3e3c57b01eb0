/**
 * The data volume is mounted by a systemd mount unit that names the
 * filesystem by UUID, so it never mounts the wrong device after disks are
 * renumbered. It has no [Install] section: the volume exists only after bosun
 * has assembled and opened it, so bosun starts the unit itself; boot never
 * waits on it.
 */

/** systemd-escape --path: "/var/lib/bosun/data" -> "var-lib-bosun-data". */
export function escapeUnitPath(path: string): string {
  const trimmed = path.replace(/\/+/g, '/').replace(/^\/|\/$/g, '');
  if (trimmed === '') return '-';
  return trimmed
    .split('/')
    .map((seg) =>
      [...Buffer.from(seg, 'utf8')]
        .map((b, i) => {
          const c = String.fromCharCode(b);
          if (/[A-Za-z0-9:_]/.test(c) || (c === '.' && i > 0)) return c;
          return `\\x${b.toString(16).padStart(2, '0')}`;
        })
        .join(''),
    )
    .join('-');
}

export function mountUnitName(path: string): string {
  return `${escapeUnitPath(path)}.mount`;
}

export function mountUnitPath(path: string): string {
  return `/etc/systemd/system/${mountUnitName(path)}`;
}

export function renderMountUnit(opts: { where: string; fsUuid: string; type: string; options: readonly string[] }): string {
  return [
    '# Written by bosun (disks phase). Started by bosun once the volume is assembled and opened; edits are overwritten.',
    '[Unit]',
    `Description=bosun data volume at ${opts.where}`,
    'DefaultDependencies=no',
    'Conflicts=umount.target',
    'Before=umount.target',
    '',
    '[Mount]',
    `What=/dev/disk/by-uuid/${opts.fsUuid}`,
    `Where=${opts.where}`,
    `Type=${opts.type}`,
    `Options=${opts.options.join(',')}`,
    '',
  ].join('\n');
}
