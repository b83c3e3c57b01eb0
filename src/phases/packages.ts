import type { Step } from '../engine/step.js';
import type { Phase } from './types.js';

/**
 * Bring the spec's packages to their newest version at boot. Nothing to
 * observe: the package manager itself is idempotent. The retrying wrapper
 * that tells transient mirror failures from permanent ones is issue #10.
 */
export const packagesPhase: Phase<undefined> = {
  name: 'packages',
  stage: 'packages',
  section: (spec) => spec.packages,
  observe: () => Promise.resolve(undefined),
  plan(spec, _observed, ctx): Step[] {
    const refresh = spec.packages?.refresh ?? [];
    if (refresh.length === 0) return [];
    return ctx.distro.refreshPackages(refresh).map((argv) => ({
      kind: 'exec',
      phase: 'packages',
      argv,
      timeoutSeconds: spec.packages?.deadlineSeconds ?? 600,
      why: `bring ${refresh.join(', ')} to the newest version before the service starts`,
    }));
  },
};
