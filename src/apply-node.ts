import { applySpec, type ApplyOutcome, type ApplyRequest, type Planner } from './engine/apply.js';
import type { HostProbe } from './host/probe.js';
import { decommissionHooks } from './phases/decommission.js';
import { phasePlanner, startsServices, type PlanContext } from './phases/index.js';
import type { ObjectStorageSettings } from './spec/agent-settings.js';

export interface NodeApplyRequest extends Omit<ApplyRequest, 'planner' | 'executors' | 'hooks'> {
  probe: HostProbe;
  ctx: PlanContext;
  /** plan with this instead of the phase modules (tests of the engine itself) */
  planner?: Planner;
  /** agent.json's objectStorage: where a restore step finds the store and its credentials */
  objectStorage?: ObjectStorageSettings;
}

/**
 * The engine wired to bosun's phases: what `bosun apply` and the daemon run.
 * The engine knows only the Planner, executor and hook interfaces; this is
 * the one place that fills them in (the phase modules, the restore executor,
 * decommission's record, the stages that start services).
 */
export function applyNode(req: NodeApplyRequest): Promise<ApplyOutcome> {
  const { probe, ctx, objectStorage, planner, ...request } = req;
  return applySpec({
    ...request,
    planner: planner ?? phasePlanner(probe, ctx),
    hooks: { ...decommissionHooks(req.stateDir, probe, ctx), startsServices },
    executors: {
      restore: async (step, stepCtx) => {
        // The restore code (and the S3 client and peer TLS under it) loads only when a restore runs.
        const { runRestoreStep } = await import('./backup/restore-step.js');
        await runRestoreStep(step, {
          redactor: stepCtx.host.redactor,
          logger: stepCtx.logger,
          stateDir: stepCtx.stateDir,
          root: stepCtx.host.root,
          ...(stepCtx.identity ? { identity: stepCtx.identity } : {}),
          ...(objectStorage ? { objectStorage } : {}),
        });
      },
    },
  });
}
