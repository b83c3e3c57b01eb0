/** What a unit step asks systemctl to do. */
export type UnitAction = 'daemon-reload' | 'enable' | 'disable' | 'start' | 'stop' | 'restart' | 'reload' | 'enable-now';

/**
 * The systemctl argv for a unit step: one spelling, used to run it and to print it.
 *
 * enable and disable never reload systemd (`--no-reload`): a plain `systemctl enable` is a
 * full daemon-reload of its own, and a phase that writes unit files already has
 * its one `daemon-reload` step, so the implicit ones only cost time (on the lab's
 * emulated guests 10-30 s each: a new node's apply spent ~90 s in four of them).
 * An enable only adds [Install] symlinks (disable removes them), which matter at the next boot; what
 * must run now is started explicitly (`enable --now`, a start step). So a phase
 * that enables a unit it has just written must order its daemon-reload first.
 */
export function systemctlArgv(action: UnitAction, unit?: string): string[] {
  if (action === 'daemon-reload') return ['systemctl', 'daemon-reload'];
  if (!unit) throw new Error(`systemctl ${action} needs a unit`);
  if (action === 'enable-now') return ['systemctl', 'enable', '--now', '--no-reload', unit];
  if (action === 'enable' || action === 'disable') return ['systemctl', action, '--no-reload', unit];
  return ['systemctl', action, unit];
}

/** Is this process a systemd unit's (bosun.service, or the lab's agent unit)? Tests run it as a plain process. */
export function underSystemd(): boolean {
  return process.env.INVOCATION_ID !== undefined;
}

/**
 * `command` in a transient service of its own, waited for, with its stdin, stdout and exit code passed
 * through (`--pipe --wait`): outside bosun.service's sandbox and cgroup, and not killed with bosun.
 * KillMode=mixed stops its children with it; `properties` add unit settings ("CPUWeight=20").
 */
export function transientUnitArgv(command: readonly string[], opts: { unit?: string; properties?: readonly string[] } = {}): string[] {
  return [
    'systemd-run',
    '--quiet',
    '--wait',
    '--pipe',
    '--collect',
    '--service-type=exec',
    ...(opts.unit ? [`--unit=${opts.unit}`] : []),
    ...['KillMode=mixed', ...(opts.properties ?? [])].flatMap((property) => ['-p', property]),
    '--',
    ...command,
  ];
}
