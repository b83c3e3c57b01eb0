import type { Step } from '../engine/step.js';
import type { Phase } from './types.js';

/**
 * Bring the spec's packages to their newest version at boot. Nothing to
 * observe: the package manager itself is idempotent. The retrying wrapper
 * that tells transient mirror failures from permanent ones is host/dnf.ts.
 */
export const packagesPhase: Phase<undefined> = {
  name: 'packages',
  stage: 'packages',
  section: (spec) => spec.packages,
  observe: () => Promise.resolve(undefined),
  plan(spec, _observed, ctx): Step[] {
    const refresh = spec.packages?.refresh ?? [];
    if (refresh.length === 0) return [];
    const deadlineSeconds = spec.packages?.deadlineSeconds ?? 600;
    // dnf (the target): one step that retries transient failures until the deadline.
    if (ctx.distro.id === 'fedora')
      return [
        {
          kind: 'refresh',
          phase: 'packages',
          packages: refresh,
          deadlineSeconds,
          why: `bring ${refresh.join(', ')} to the newest version before the service starts`,
        },
      ];
    return ctx.distro.refreshPackages(refresh).map((argv) => ({
      kind: 'exec',
      phase: 'packages',
      argv,
      timeoutSeconds: deadlineSeconds,
      why: `bring ${refresh.join(', ')} to the newest version before the service starts`,
    }));
  },
};
