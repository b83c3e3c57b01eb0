import type { UnitAction } from '../engine/step.js';

/** The systemctl argv for a unit step: one spelling, used to run it and to print it. */
export function systemctlArgv(action: UnitAction, unit?: string): string[] {
  if (action === 'daemon-reload') return ['systemctl', 'daemon-reload'];
  if (!unit) throw new Error(`systemctl ${action} needs a unit`);
  if (action === 'enable-now') return ['systemctl', 'enable', '--now', unit];
  return ['systemctl', action, unit];
}
