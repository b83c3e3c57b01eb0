import { applyNode } from '../apply-node.js';
import { BosunError, ExitCode } from '../errors.js';
import { Host, LiveProbe } from '../host/index.js';
import { loadOrCreateIdentity } from '../identity/host-identity.js';
import { createLogger } from '../log.js';
import { Redactor } from '../secrets/redact.js';
import { loadNodeSpec } from '../spec/validate.js';
import { commonOptions, pickDistro, resolveState, single, stateOptions, type Command } from './common.js';

export const applyCommand: Command = {
  summary: 'plan and apply a spec to this host now, resuming an unfinished apply of the same spec',
  usage: 'bosun apply <spec> [--state-dir DIR] [--settings FILE] [--root DIR] [--distro ...] [--json]',
  help: [
    'Refuses a spec for another node (per agent.json), an older version than the one applied, and a plan',
    'with phases not implemented yet; in each case nothing is changed. Progress is journalled in the state',
    'dir after every step, so an apply killed half-way continues where it stopped when run again.',
    '  --root DIR  write files under DIR instead of / (image builds, tests); commands still run on the host',
  ].join('\n'),
  options: { ...commonOptions, ...stateOptions, root: { type: 'string' }, distro: { type: 'string' } },
  async run({ values, positionals, io }) {
    const file = single(positionals, 'apply needs exactly one spec file');
    const spec = await loadNodeSpec(file);
    const { settings, stateDir } = await resolveState(values, false);
    if (settings && settings.node !== spec.node) {
      throw new BosunError('E_WRONG_NODE', `spec is for node ${spec.node} but this host is ${settings.node}; nothing was changed`);
    }
    const redactor = new Redactor();
    const { logger } = createLogger({ redactor, target: 'stderr', level: settings?.log.level ?? 'info' });
    const { identity } = await loadOrCreateIdentity(stateDir);
    const root = values.root as string | undefined;
    const outcome = await applyNode({
      spec,
      stateDir,
      host: new Host({ redactor, root }),
      probe: new LiveProbe(redactor, root ?? ''),
      ctx: { distro: await pickDistro(values.distro as string | undefined) },
      identity,
      logger,
      ...(settings?.objectStorage ? { objectStorage: settings.objectStorage } : {}),
    });
    if (io.json) io.data({ ok: true, ...outcome });
    else {
      const done =
        outcome.result === 'unchanged'
          ? 'nothing to do'
          : `${outcome.steps} steps applied${outcome.resumedAt !== undefined ? ` (resumed at phase ${outcome.resumedAt})` : ''}`;
      const decommissioned = outcome.decommission ? `; decommissioned, safe to delete: ${outcome.decommission.safeToDelete ? 'yes' : 'no'}` : '';
      io.out(`version ${outcome.specVersion}: ${done}${decommissioned}`);
    }
    return ExitCode.ok;
  },
};
