import { planToJson, renderPlanText } from '../engine/render.js';
import { ExitCode } from '../errors.js';
import { writeFileAtomic } from '../host/files.js';
import { BlankProbe, LiveProbe } from '../host/index.js';
import { RecordingProbe } from '../host/probe-record.js';
import { planNode } from '../phases/index.js';
import { Redactor } from '../secrets/redact.js';
import { loadNodeSpec } from '../spec/validate.js';
import { commonOptions, pickDistro, single, type Command } from './common.js';

export const planCommand: Command = {
  summary: 'print the exact ordered steps applying a spec would take, without changing anything',
  usage: 'bosun plan <spec> [--blank] [--distro fedora|debian] [--content] [--record-probe FILE] [--json]',
  help: [
    'Observes this host read-only (files, unit states) and prints every command with its argv and every',
    'file with its path and mode, in order, with why. Secrets print as <redacted:...>.',
    '  --blank    plan as for a blank host, without looking at this one',
    '  --distro   plan for this distribution instead of the one detected',
    '  --content  also print the content of every file written',
    '  --record-probe FILE  also write every question asked of the host and its answer (mode 0600: it',
    '             can hold file contents); the disks re-run benchmark replays it to time the agent alone',
  ].join('\n'),
  options: { ...commonOptions, blank: { type: 'boolean' }, distro: { type: 'string' }, content: { type: 'boolean' }, 'record-probe': { type: 'string' } },
  async run({ values, positionals, io }) {
    const file = single(positionals, 'plan needs exactly one spec file');
    const spec = await loadNodeSpec(file);
    const distro = await pickDistro(values.distro as string | undefined);
    const redactor = new Redactor();
    const base = values.blank ? new BlankProbe() : new LiveProbe(redactor);
    const recordTo = values['record-probe'] as string | undefined;
    const probe = recordTo ? new RecordingProbe(base) : base;
    const steps = await planNode(spec, probe, { distro });
    if (probe instanceof RecordingProbe) await writeFileAtomic(recordTo!, JSON.stringify(probe.recording()), { mode: 0o600 });
    const header = {
      node: spec.node,
      cluster: spec.cluster,
      version: spec.version,
      distro: distro.id,
      observed: values.blank ? ('blank' as const) : ('host' as const),
    };
    if (io.json) io.data(planToJson(header, steps));
    else io.out(renderPlanText(header, steps, values.content === true).trimEnd());
    return ExitCode.ok;
  },
};
