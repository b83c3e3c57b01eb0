import { BosunError, describeError, isBosunError } from '../errors.js';
import type { Host } from '../host/index.js';
import type { HostIdentity } from '../identity/host-identity.js';
import type { Logger } from '../log.js';
import { spliceSecrets } from '../secrets/open.js';
import type { Redactor } from '../secrets/redact.js';
import type { Content } from '../secrets/ref.js';
import type { ExecStep, RefreshStep, Step } from './step.js';

/** What a step's executor is given: the host layer and what it needs to open secrets and to report. */
export interface StepContext {
  host: Host<Redactor>;
  identity?: HostIdentity;
  logger: Logger;
  stateDir: string;
}

export type StepExecutor<S extends Step> = (step: S, ctx: StepContext) => Promise<void>;

/**
 * Executors for the step kinds that are more than a call into `host/` (a
 * restore runs a whole library): whoever builds the apply registers them, so
 * the engine loads none of that code itself.
 */
export type StepExecutors = { [K in Step['kind']]?: StepExecutor<Extract<Step, { kind: K }>> };

/**
 * How long a command step may run when its phase set no limit: a tool that
 * hangs (a start job that never finishes, a device that stops answering) must
 * fail the apply with a report and a retry, not wedge the agent silently.
 */
export const EXEC_STEP_TIMEOUT_SECONDS = 30 * 60;

/** Run one step: a registered executor for its kind if there is one, else the host layer. */
export async function runStep(step: Step, ctx: StepContext & { executors?: StepExecutors }): Promise<void> {
  const registered = ctx.executors?.[step.kind] as StepExecutor<Step> | undefined;
  if (registered) return registered(step, ctx);
  const { host } = ctx;
  switch (step.kind) {
    case 'exec':
      return runExec(step, ctx);
    case 'write':
      await host.write(step.path, contentOf(step.content, ctx), step.mode, { uid: step.owner, gid: step.group });
      return;
    case 'mkdir':
      await host.mkdir(step.path, step.mode, { uid: step.owner, gid: step.group });
      return;
    case 'remove':
      await host.remove(step.path);
      return;
    case 'unit':
      await host.systemctl(step.action, step.unit);
      return;
    case 'wait':
      await host.waitForPath(step.path, step.timeoutSeconds);
      return;
    case 'refresh':
      return runRefresh(step, ctx);
    case 'pending':
      throw new BosunError('E_NOT_IMPLEMENTED', `phase ${step.phase} is not implemented yet (issue #${step.issue})`);
    case 'restore':
      throw new BosunError('E_NOT_IMPLEMENTED', 'this apply has no executor for restore steps (src/apply-node.ts registers one)');
  }
}

function contentOf(content: Content, ctx: StepContext): Buffer {
  return spliceSecrets(content, ctx.identity, ctx.host.redactor);
}

async function runExec(step: ExecStep, ctx: StepContext): Promise<void> {
  const run = () =>
    ctx.host.exec(step.argv, {
      input: step.stdin === undefined ? undefined : contentOf(step.stdin, ctx),
      timeoutSeconds: step.timeoutSeconds ?? EXEC_STEP_TIMEOUT_SECONDS,
      okExitCodes: step.okExitCodes,
    });
  if (step.retryForSeconds === undefined) {
    await run();
    return;
  }
  const deadline = Date.now() + step.retryForSeconds * 1000;
  for (let attempt = 1; ; attempt++) {
    // 1, 2, 4, 8 s, then every 10 s: a service that starts slowly is not starved by the checks themselves
    // (each costs a process or two; on a small or loaded host a check every 2 s took ~40 % of a CPU).
    const pause = Math.min(RETRY_PAUSE_MAX_MS, 1000 * 2 ** (attempt - 1));
    try {
      await run();
      return;
    } catch (e) {
      if (Date.now() + pause > deadline)
        throw new BosunError(
          isBosunError(e) ? e.code : 'E_EXEC',
          `still failing after ${step.retryForSeconds}s: ${describeError(e)}`,
          isBosunError(e) ? e.details : {},
          { cause: e },
        );
      await new Promise((resolve) => setTimeout(resolve, pause));
    }
  }
}

/** The longest pause between two tries of a step that runs until it succeeds. */
const RETRY_PAUSE_MAX_MS = 10_000;

async function runRefresh(step: RefreshStep, ctx: StepContext): Promise<void> {
  const { logger } = ctx;
  const result = await ctx.host.refreshPackages(step.packages, step.deadlineSeconds, (attempt) => {
    if (attempt.failure)
      logger.warn(
        { attempt: attempt.attempt, exitCode: attempt.exitCode ?? null, kind: attempt.failure.kind },
        `dnf attempt ${attempt.attempt} failed: ${attempt.failure.reason}${attempt.retryInMs !== undefined ? `; retrying in ${Math.round(attempt.retryInMs / 1000)}s` : ''}`,
      );
  });
  logger.info(
    { updated: result.updated, unchanged: result.unchanged, attempts: result.attempts },
    result.updated.length === 0
      ? `packages already the newest: ${result.unchanged.join(', ') || '(none installed)'}`
      : `updated ${result.updated.map((u) => `${u.name} ${u.from ?? '(new)'} -> ${u.to}`).join(', ')}`,
  );
}
