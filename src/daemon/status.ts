import type { Sample } from '../health/metrics.js';
import type { HostIdentity } from '../identity/host-identity.js';
import type { NodeSpec } from '../spec/node-spec.js';
import { lifecycleOf, type DecommissionRecord } from '../state/decommission.js';
import { readRestoreProgressSync } from '../state/restore-progress.js';
import { AGENT_VERSION } from '../version.js';

/** What the agent has done since it started; in every status and in the metrics. */
export interface Counters {
  received: number;
  refused: number;
  applied: number;
  failed: number;
  duplicates: number;
  consumerRestarts: number;
}

export function newCounters(): Counters {
  return { received: 0, refused: 0, applied: 0, failed: 0, duplicates: 0, consumerRestarts: 0 };
}

export interface LastApply {
  version: number;
  result: 'applied' | 'unchanged' | 'failed';
  at: string;
  error?: { code: string; message: string; phase?: unknown; step?: unknown };
}

/** The apply loop as the status sees it (daemon/apply-loop.ts). */
export interface ApplyState {
  readonly lastGood: NodeSpec | undefined;
  readonly wanted: NodeSpec | undefined;
  readonly lastApply: LastApply | undefined;
  /** the apply running now: its version, when it began, and the step it is on */
  readonly inProgress: { version: number; since: string; step: string } | undefined;
  readonly decommission: DecommissionRecord | undefined;
}

export interface HostStatusOptions {
  node: string;
  identity: HostIdentity;
  stateDir: string;
  applyState: ApplyState;
  counters: Counters;
  /** the scheduled backups' state (daemon/backups.ts) */
  backups?: { status(): unknown; samples(): Sample[] };
}

/** The figures of the last health round that the metrics show. */
type HealthFigures = { ok?: boolean; disks?: { array?: { degraded: number }; usage?: { sizeBytes: number; usedBytes: number } } };

/**
 * What this host says about itself: the body of its status on bosun.status,
 * and the samples of the local Prometheus endpoint. It keeps the last health
 * round so that the metrics between rounds show it.
 */
export class HostStatus {
  readonly #options: HostStatusOptions;
  #lastHealth: Record<string, unknown> | undefined;

  constructor(options: HostStatusOptions) {
    this.#options = options;
  }

  body(extra: Record<string, unknown> = {}): Record<string, unknown> {
    const { applyState, identity } = this.#options;
    return {
      node: this.#options.node,
      cluster: applyState.lastGood?.cluster ?? null,
      agentVersion: AGENT_VERSION,
      sealingKey: identity.sealingKey,
      signingKey: identity.signingKey,
      appliedVersion: applyState.lastGood?.version ?? null,
      wantedVersion: applyState.wanted?.version ?? null,
      lastApply: applyState.lastApply ?? null,
      applying: applyState.inProgress ? { ...applyState.inProgress } : null,
      restore: readRestoreProgressSync(this.#options.stateDir) ?? null,
      lifecycle: lifecycleOf(applyState.decommission, applyState.wanted),
      backup: this.#options.backups?.status() ?? null,
      counters: this.#options.counters,
      time: new Date().toISOString(),
      ...extra,
    };
  }

  /** The body with a health round's figures, which the metrics show from now on. */
  bodyWithHealth(health: Record<string, unknown>): Record<string, unknown> {
    this.#lastHealth = health;
    return this.body({ health });
  }

  /** The figures for the local Prometheus endpoint; `queuedEvents` is what the Reporter holds for the broker. */
  metrics(queuedEvents: number | undefined): Sample[] {
    const { applyState, counters } = this.#options;
    const gauge = (name: string, help: string, value: number, labels?: Record<string, string>): Sample => ({ name, help, type: 'gauge', value, labels });
    const counter = (name: string, help: string, value: number): Sample => ({ name, help, type: 'counter', value });
    const health = this.#lastHealth as HealthFigures | undefined;
    return [
      gauge('bosun_applied_version', 'spec version applied in full (0: none yet)', applyState.lastGood?.version ?? 0),
      gauge('bosun_wanted_version', 'newest spec version received', applyState.wanted?.version ?? 0),
      gauge('bosun_last_apply_failed', '1 if the last apply failed', applyState.lastApply?.result === 'failed' ? 1 : 0),
      counter('bosun_desired_messages_total', 'desired-state messages for this node read', counters.received),
      counter('bosun_desired_refused_total', 'desired-state messages refused (bad signature, unknown key, invalid ...)', counters.refused),
      counter('bosun_applies_total', 'applies that completed', counters.applied),
      counter('bosun_apply_failures_total', 'applies that failed', counters.failed),
      counter('bosun_consumer_restarts_total', 'Kafka consumers rebuilt by the watchdog', counters.consumerRestarts),
      gauge('bosun_reports_queued', 'events waiting for the broker', queuedEvents ?? 0),
      ...(health ? [gauge('bosun_health_ok', '1 if the last health round found no problem', health.ok ? 1 : 0)] : []),
      ...(health?.disks?.array ? [gauge('bosun_raid_degraded_members', 'RAID members missing', health.disks.array.degraded)] : []),
      ...(health?.disks?.usage
        ? [
            gauge('bosun_volume_size_bytes', 'data volume size', health.disks.usage.sizeBytes),
            gauge('bosun_volume_used_bytes', 'data volume bytes used', health.disks.usage.usedBytes),
          ]
        : []),
      ...(this.#options.backups?.samples() ?? []),
    ];
  }
}
