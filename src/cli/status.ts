import { ExitCode } from '../errors.js';
import { collectHealth } from '../health/collect.js';
import { LiveProbe } from '../host/index.js';
import { readIdentity } from '../identity/host-identity.js';
import { Redactor } from '../secrets/redact.js';
import { readApplied, readLastGoodSpec } from '../state/applied.js';
import { lifecycleOf, readDecommissionRecord, type DecommissionRecord, type Lifecycle } from '../state/decommission.js';
import { Journal, type JournalState } from '../state/journal.js';
import { readRestoreProgress, type RestoreProgressRecord } from '../state/restore-progress.js';
import { commonOptions, resolveState, stateOptions, type Command, type Io } from './common.js';

export const statusCommand: Command = {
  summary: 'what this host has applied, what is in progress, and its public keys',
  usage: 'bosun status [--state-dir DIR] [--settings FILE] [--health] [--json]',
  help: 'Reads the state dir only; never creates or changes anything.\n  --health  also observe the host (read-only) and report the health of what the last good spec built',
  options: { ...commonOptions, ...stateOptions, health: { type: 'boolean' } },
  async run({ values, io }) {
    const { settings, stateDir } = await resolveState(values, false);
    const journal = new Journal(stateDir);
    const [applied, inProgress, identity, restore, decommission] = await Promise.all([
      readApplied(stateDir),
      journal.read(),
      readIdentity(stateDir),
      readRestoreProgress(stateDir),
      readDecommissionRecord(stateDir),
    ]);
    const { formatBytes } = await import('../backup/progress.js');
    let health: Record<string, unknown> | null = null;
    if (values.health) {
      const lastGood = await readLastGoodSpec(stateDir);
      if (lastGood?.ok) health = await collectHealth(lastGood.spec, new LiveProbe(new Redactor()));
    }
    const status = {
      node: settings?.node,
      stateDir,
      identity: identity ? { sealingKey: identity.sealingKey, signingKey: identity.signingKey } : null,
      applied: applied ?? null,
      inProgress: inProgress ? unfinishedApply(inProgress) : null,
      restore: restore ?? null,
      lifecycle: lifecycleOf(decommission, undefined),
      ...(values.health ? { health } : {}),
    };
    if (io.json) io.data(status);
    else {
      io.out(`node:        ${status.node ?? '(no agent.json)'}`);
      io.out(`state dir:   ${stateDir}`);
      io.out(`identity:    ${identity ? identity.sealingKey : 'none yet (made on first run)'}`);
      if (decommission) io.out(`lifecycle:   ${lifecycleLine(decommission, status.lifecycle)}`);
      io.out(`applied:     ${applied ? `version ${applied.specVersion} at ${applied.appliedAt} (${applied.steps} steps)` : 'nothing yet'}`);
      if (status.inProgress) {
        const apply = status.inProgress;
        io.out(
          `in progress: version ${apply.specVersion}${apply.phase ? `, phase ${apply.phase} step ${apply.step} of ${apply.steps}` : ''}${apply.interrupted ? ' (interrupted)' : ''}${apply.lastError ? `, failed: ${apply.lastError.message}` : ''}`,
        );
      }
      if (restore) io.out(`restore:     ${restoreLine(restore, formatBytes)}`);
      if (values.health) printHealth(io, health);
    }
    return ExitCode.ok;
  },
};

/** The journal of an apply that has not finished, as status shows it. */
function unfinishedApply(journal: JournalState) {
  return {
    specVersion: journal.specVersion,
    donePhases: journal.donePhases,
    phase: journal.current?.phase ?? null,
    step: journal.current ? journal.current.next + 1 : null,
    steps: journal.current?.steps.length ?? null,
    runs: journal.runs,
    interrupted: journal.current?.inFlight !== undefined,
    lastError: journal.lastError ?? null,
    updatedAt: journal.updatedAt,
  };
}

function lifecycleLine(decommission: DecommissionRecord, lifecycle: Lifecycle): string {
  return `${lifecycle.state}${lifecycle.safeToDelete ? ', safe to delete' : ''}${decommission.finishedAt ? ` (finished ${decommission.finishedAt})` : ''}${decommission.problems.length > 0 ? `: ${decommission.problems.join('; ')}` : ''}`;
}

function restoreLine(restore: RestoreProgressRecord, formatBytes: (bytes: number) => string): string {
  const running = restore.state === 'running' ? `, ${formatBytes(restore.rate)}/s, ETA ${restore.etaSeconds ?? '?'}s` : '';
  return `${restore.state} ${restore.percent}% of ${formatBytes(restore.bytesTotal)} (${restore.source} backup ${restore.backupId ?? restore.backup} into ${restore.target})${running}${restore.error ? `: ${restore.error}` : ''}, at ${restore.updatedAt}`;
}

function printHealth(io: Io, health: { ok?: boolean; problems?: string[] } | null): void {
  io.out(`health:      ${!health ? 'nothing applied yet' : health.ok ? 'ok' : `${health.problems?.length} problem(s)`}`);
  for (const problem of health?.problems ?? []) io.out(`  ${problem}`);
}
