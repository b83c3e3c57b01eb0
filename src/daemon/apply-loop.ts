import { applyNode } from '../apply-node.js';
import type { ApplyOutcome, Planner } from '../engine/apply.js';
import type { StageId } from '../engine/step.js';
import { describeError, isBosunError } from '../errors.js';
import type { Host } from '../host/index.js';
import type { HostProbe } from '../host/probe.js';
import type { HostIdentity } from '../identity/host-identity.js';
import type { Logger } from '../log.js';
import { changedStages, phasePlanner, type PlanContext } from '../phases/index.js';
import type { Redactor } from '../secrets/redact.js';
import type { AgentSettings } from '../spec/agent-settings.js';
import type { NodeSpec } from '../spec/node-spec.js';
import { readLastGoodSpec } from '../state/applied.js';
import { readDecommissionRecord, type DecommissionRecord } from '../state/decommission.js';
import type { ScheduledBackups } from './backups.js';
import type { PeerServing } from './peer-serving.js';
import type { ApplyState, Counters, LastApply } from './status.js';

/** How the daemon applies: chosen by whoever runs it (AgentOptions carries these). */
export interface ApplyOptions {
  settings: AgentSettings;
  stateDir: string;
  identity: HostIdentity;
  host: Host<Redactor>;
  probe: HostProbe;
  ctx: PlanContext;
  logger: Logger;
  redactor: Redactor;
  /** plan with this instead of the phase modules (tests of the loop itself) */
  planner?: Planner;
  /** first retry delay after a failed apply; doubles up to five minutes */
  retrySeconds?: number;
  /** a line on what an apply is doing now (systemd STATUS=) */
  onProgress?: (text: string) => void;
  /** after every successful apply (the health schedule runs a round at once and follows the spec's interval) */
  onApplied?: (spec: NodeSpec) => void;
  /**
   * The boot-time apply (boot()) reached the machine and the units after it:
   * the daemon sends READY=1 here, not after the agent's start(), since those units are
   * ordered after bosun.service and cannot start before it (engine/step.ts SERVICE_PHASES).
   */
  beforeServicePhases?: () => Promise<void>;
}

/** What the agent connects the loop to. */
export interface ApplyLoopLinks {
  counters: Counters;
  /** aborted when the agent stops: no apply or retry starts after that */
  signal: AbortSignal;
  peers: PeerServing;
  backups: ScheduledBackups;
  /** publish an event on bosun.events */
  event: (body: Record<string, unknown>) => Promise<void>;
  /** publish this host's status on bosun.status (after every apply, whatever its outcome) */
  publishStatus: () => Promise<void>;
}

/** An apply that failed with one of these is not retried: the same spec would fail the same way. */
const FINAL_FAILURES = new Set(['E_INVALID_SPEC', 'E_STALE_VERSION', 'E_DECOMMISSIONED']);
/** The longest wait between retries of a failed apply, in seconds. */
const MAX_RETRY_SECONDS = 300;

/**
 * Converges the host to the spec it wants. Applies run one at a time; a spec
 * that arrives during an apply waits, and only the newest waiting one runs. A
 * failed apply is reported and retried with backoff until it succeeds or a
 * newer spec comes; the last good spec stays in force meanwhile.
 */
export class ApplyLoop implements ApplyState {
  readonly #options: ApplyOptions;
  readonly #links: ApplyLoopLinks;
  #lastGood: NodeSpec | undefined;
  #wanted: NodeSpec | undefined;
  #lastApply: LastApply | undefined;
  #inProgress: { version: number; since: string; step: string } | undefined;
  /** the decommission record in the state dir, if this host is being or was decommissioned */
  #decommission: DecommissionRecord | undefined;
  #applying: Promise<void> | undefined;
  #retryTimer: NodeJS.Timeout | undefined;
  #retryDelay: number;

  constructor(options: ApplyOptions, links: ApplyLoopLinks) {
    this.#options = options;
    this.#links = links;
    this.#retryDelay = options.retrySeconds ?? 5;
  }

  get lastGood(): NodeSpec | undefined {
    return this.#lastGood;
  }

  get wanted(): NodeSpec | undefined {
    return this.#wanted;
  }

  get lastApply(): LastApply | undefined {
    return this.#lastApply;
  }

  get inProgress(): { version: number; since: string; step: string } | undefined {
    return this.#inProgress;
  }

  get decommission(): DecommissionRecord | undefined {
    return this.#decommission;
  }

  /** The last good spec and the decommission record, as an earlier run left them in the state dir. */
  async load(): Promise<void> {
    this.#lastGood = await this.#readLastGood();
    this.#decommission = await readDecommissionRecord(this.#options.stateDir).catch(() => undefined);
  }

  /** After a reboot the host may be behind its last good spec (arrays not assembled, volumes closed): converge every phase. */
  async boot(): Promise<void> {
    this.#wanted = this.#lastGood;
    await this.#runApply(true);
  }

  /** Is this verified spec one the loop does not have yet? A repeat is news again only after a failed apply. */
  isNews(spec: NodeSpec): boolean {
    return !(this.#wanted && spec.version <= this.#wanted.version && this.#lastApply?.result !== 'failed');
  }

  /** Apply this spec next (after the apply running now, if any). */
  want(spec: NodeSpec): void {
    this.#wanted = spec;
    void this.#kick();
  }

  /** One line on where this host stands, for systemd's STATUS=. */
  summary(): string {
    const last = this.#lastApply;
    if (last?.result === 'failed')
      return `version ${last.version} failed (${last.error?.code ?? 'error'}); keeping version ${this.#lastGood?.version ?? 'none'}; retrying`;
    if (this.#lastGood) return `version ${this.#lastGood.version} applied; following desired state`;
    return 'nothing applied yet; waiting for the first desired state';
  }

  /** Called once the agent's signal is aborted: no retry is left waiting, and the apply under way finishes. */
  async stop(): Promise<void> {
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    await this.#applying?.catch(() => undefined);
  }

  async #readLastGood(): Promise<NodeSpec | undefined> {
    const lastGood = await readLastGoodSpec(this.#options.stateDir);
    if (lastGood?.ok === false) {
      this.#options.logger.error({ problems: lastGood.problems }, 'the last good spec in the state dir no longer validates; ignoring it');
      return undefined;
    }
    return lastGood?.spec;
  }

  #kick(): Promise<void> {
    if (this.#retryTimer) {
      clearTimeout(this.#retryTimer);
      this.#retryTimer = undefined;
    }
    this.#applying ??= this.#runApply(false).finally(() => {
      this.#applying = undefined;
      if (this.#wanted && this.#wanted.version > (this.#lastApply?.version ?? 0) && !this.#links.signal.aborted) void this.#kick();
    });
    return this.#applying;
  }

  async #runApply(boot: boolean): Promise<void> {
    const spec = this.#wanted;
    if (!spec || this.#links.signal.aborted) return;
    const options = this.#options;
    const previous = boot ? undefined : this.#lastGood;
    const stages = changedStages(spec, previous);
    const planner = options.planner ?? phasePlanner(options.probe, options.ctx, previous);
    if (spec.decommission) {
      await this.#links.peers.sync(spec);
      this.#links.backups.sync(spec);
    }
    const inProgress = { version: spec.version, since: new Date().toISOString(), step: 'planning' };
    this.#inProgress = inProgress;
    const onProgress = (text: string) => {
      inProgress.step = text;
      options.onProgress?.(text);
    };
    try {
      const { stateDir, host, probe, ctx, identity, logger, beforeServicePhases, settings } = options;
      const outcome = await applyNode({
        spec,
        stateDir,
        host,
        probe,
        ctx,
        identity,
        logger,
        planner,
        onProgress,
        ...(boot && beforeServicePhases ? { beforeServicePhases } : {}),
        ...(settings.objectStorage ? { objectStorage: settings.objectStorage } : {}),
      });
      await this.#applied(spec, outcome, stages);
    } catch (e) {
      await this.#failed(spec, e);
    }
    if (this.#inProgress === inProgress) this.#inProgress = undefined;
    options.onProgress?.(this.summary());
    await this.#links.publishStatus();
  }

  async #applied(spec: NodeSpec, outcome: ApplyOutcome, stages: StageId[]): Promise<void> {
    const { counters, event } = this.#links;
    counters.applied += 1;
    this.#lastGood = spec;
    await this.#links.peers.sync(spec);
    this.#links.backups.sync(spec);
    this.#lastApply = { version: spec.version, result: outcome.result, at: new Date().toISOString() };
    this.#retryDelay = this.#options.retrySeconds ?? 5;
    await event({
      kind: 'applied',
      version: spec.version,
      result: outcome.result,
      steps: outcome.steps,
      stages,
      resumedAt: outcome.resumedAt,
      durationMs: outcome.durationMs,
      timings: outcome.timings,
    });
    if (outcome.decommission) {
      const first = this.#decommission?.state !== 'decommissioned';
      this.#decommission = outcome.decommission;
      // A replay reports the same status, but the event announces the retirement once.
      if (first)
        await event({
          kind: 'decommissioned',
          version: spec.version,
          safeToDelete: outcome.decommission.safeToDelete,
          finishedAt: outcome.decommission.finishedAt,
          erase: outcome.decommission.erase,
          evidence: outcome.decommission.evidence,
        });
    }
    this.#options.onApplied?.(spec);
  }

  async #failed(spec: NodeSpec, error: unknown): Promise<void> {
    const { counters, event, signal } = this.#links;
    counters.failed += 1;
    const code = isBosunError(error) ? error.code : 'E_EXEC';
    const message = this.#options.redactor.redact(describeError(error));
    const details = isBosunError(error) ? error.details : {};
    this.#lastApply = {
      version: spec.version,
      result: 'failed',
      at: new Date().toISOString(),
      error: { code, message, phase: details.phase, step: details.step },
    };
    const log = this.#options.logger.child({ specVersion: spec.version });
    log.error(
      { errorCode: code },
      `applying version ${spec.version} failed: ${message}; the host keeps its last good state (version ${this.#lastGood?.version ?? 'none'}); retrying in ${this.#retryDelay}s`,
    );
    if (spec.decommission) this.#decommission = await readDecommissionRecord(this.#options.stateDir).catch(() => this.#decommission);
    if (code === 'E_DECOMMISSIONED') {
      // Like any refused desired state: reported once, never retried; the host stays as it is.
      counters.refused += 1;
      await event({ kind: 'refused', reason: 'decommissioned', message, version: spec.version });
    } else
      await event({ kind: 'apply-failed', version: spec.version, code, message, phase: details.phase, step: details.step, retryInSeconds: this.#retryDelay });
    if (!signal.aborted && !FINAL_FAILURES.has(code)) this.#retryLater();
  }

  /** Try the wanted spec again after the current delay, and double the delay for the time after. */
  #retryLater(): void {
    const delay = this.#retryDelay;
    this.#retryDelay = Math.min(this.#retryDelay * 2, MAX_RETRY_SECONDS);
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      void this.#kick();
    }, delay * 1000);
  }
}
