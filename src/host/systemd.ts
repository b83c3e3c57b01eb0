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
