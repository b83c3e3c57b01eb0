import type { AuxiliaryAgent } from '../spec/node-spec.js';
import type { Step } from '../engine/step.js';
import type { Phase } from './types.js';
import { auxiliaryConfigContent } from './auxiliary-config.js';
import type { NodeSpec } from '../spec/node-spec.js';

interface ObservedAgent {
  config?: Buffer;
  enabled: string;
  active: string;
}

/**
 * Auxiliary agents (telegraf, journalpump, ...) beside the service: their
 * config file and their unit's state. Converges without churn: an unchanged
 * config is not rewritten and a running agent is not restarted.
 */
export const auxiliaryPhase: Phase<Map<string, ObservedAgent>> = {
  name: 'auxiliary',
  stage: 'auxiliary',
  section: (spec) => (spec.auxiliary.length > 0 ? spec.auxiliary : undefined),

  async observe(spec, probe) {
    const seen = new Map<string, ObservedAgent>();
    for (const a of spec.auxiliary) {
      const state = await probe.unitState(a.unit);
      seen.set(a.name, { ...state, config: a.config ? await probe.readFile(a.config.path) : undefined });
    }
    return seen;
  },

  plan(spec, observed) {
    const steps = spec.auxiliary.flatMap((a) => planAgent(a, observed.get(a.name) ?? { enabled: 'unknown', active: 'unknown' }, spec));
    // The agents' units come from packages: one reload before the first enable makes sure systemd has read them
    // (bosun's enable does not reload; see systemctlArgv).
    const first = steps.findIndex((s) => s.kind === 'unit' && s.action === 'enable-now');
    if (first >= 0)
      steps.splice(first, 0, {
        kind: 'unit',
        phase: 'auxiliary',
        action: 'daemon-reload',
        why: "systemd must have read the agents' units before they are enabled",
      });
    return steps;
  },
};

function planAgent(a: AuxiliaryAgent, seen: ObservedAgent, spec: NodeSpec): Step[] {
  const steps: Step[] = [];
  const isEnabled = seen.enabled === 'enabled';
  const isActive = seen.active === 'active';
  if (!a.enabled) {
    if (isEnabled || isActive)
      steps.push({ kind: 'exec', phase: 'auxiliary', argv: ['systemctl', 'disable', '--now', a.unit], why: `${a.name} is disabled in the spec` });
    return steps;
  }
  const content = auxiliaryConfigContent(a, spec);
  const configChanged = a.config !== undefined && content !== undefined && (seen.config === undefined || !seen.config.equals(Buffer.from(content)));
  if (a.config && content !== undefined && configChanged) {
    steps.push({
      kind: 'write',
      phase: 'auxiliary',
      path: a.config.path,
      mode: parseInt(a.config.mode, 8),
      content,
      why: `${a.name} configuration ${seen.config === undefined ? 'is missing' : 'differs from the spec'}`,
    });
  }
  if (!isEnabled || !isActive) {
    steps.push({ kind: 'unit', phase: 'auxiliary', action: 'enable-now', unit: a.unit, why: `${a.name} must be enabled and running` });
  } else if (configChanged) {
    steps.push({ kind: 'unit', phase: 'auxiliary', action: 'restart', unit: a.unit, why: `${a.name} must pick up its new configuration` });
  }
  return steps;
}
