import type { ExecResult } from './exec.js';
import { parseUnitShow, type HostProbe, type VolumeUsage } from './probe.js';

export interface UnitState {
  enabled: string;
  active: string;
}

/**
 * The states of several units from one `systemctl show` (systemctl prints one
 * block per unit, in the order asked, separated by an empty line). A health
 * round asks about the IKE daemon, the drop policy, the service machine and
 * each auxiliary agent: one process instead of one per unit, and each
 * systemctl costs ~0.35 s of a small guest's CPU. Empty when the call fails or
 * its output does not have one block per unit: callers then ask one by one.
 */
export async function showUnits(probe: HostProbe, units: readonly string[]): Promise<Map<string, UnitState>> {
  const states = new Map<string, UnitState>();
  if (probe.blank || units.length === 0) return states;
  const shown: ExecResult | undefined = await probe
    .run(['systemctl', 'show', '--property=LoadState,ActiveState,UnitFileState', '--', ...units])
    .catch(() => undefined);
  if (!shown || shown.exitCode !== 0) return states;
  const blocks = shown.stdout.trimEnd().split(/\n\s*\n/);
  if (blocks.length !== units.length) return states;
  units.forEach((unit, index) => states.set(unit, parseUnitShow(blocks[index]!)));
  return states;
}

/**
 * A probe that answers `unitState` for the given units from one `showUnits`
 * call made up front, and passes every other question (and any other unit) to
 * the probe it wraps. For one round of questions: the states are not refreshed.
 */
export async function withUnitStates(probe: HostProbe, units: readonly string[]): Promise<HostProbe> {
  const states = await showUnits(probe, [...new Set(units)]);
  return {
    blank: probe.blank,
    readFile: (path: string) => probe.readFile(path),
    unitState: (unit: string) => {
      const known = states.get(unit);
      return known ? Promise.resolve(known) : probe.unitState(unit);
    },
    run: (argv: readonly string[]) => probe.run(argv),
    links: (dir: string) => probe.links(dir),
    listDir: (dir: string) => probe.listDir(dir),
    stat: (path: string) => probe.stat(path),
    usage: (path: string): Promise<VolumeUsage | undefined> => probe.usage(path),
  };
}
