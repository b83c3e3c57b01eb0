import { applyNode } from './apply-node.js';
import type { Planner } from './engine/apply.js';
import { canonicalJson } from './canonical-json.js';
import type { Redactor } from './secrets/redact.js';
import { describeError, isBosunError } from './errors.js';
import type { Host } from './host/index.js';
import type { HostProbe } from './host/probe.js';
import type { HostIdentity } from './identity/host-identity.js';
import type { Logger } from './log.js';
import { changedStages, phasePlanner, type PlanContext } from './phases/index.js';
import type { AgentSettings } from './spec/agent-settings.js';
import type { NodeSpec } from './spec/node-spec.js';
import { startDesiredConsumer, type DesiredConsumer, type DesiredMessage } from './bus/desired.js';
import { verifyEnvelope } from './bus/envelope.js';
import { createKafka, SocketTracker, type Kafka } from './bus/kafka.js';
import { Reporter } from './bus/reporter.js';
import type { Sample } from './health/metrics.js';
import { lifecycleOf, readDecommissionRecord, type DecommissionRecord } from './state/decommission.js';
import { readDesiredSeen, writeDesiredSeen } from './state/desired-seen.js';
import { readRestoreProgressSync } from './state/restore-progress.js';
import { readApplied, readLastGoodSpec } from './state/applied.js';

import { AGENT_VERSION } from './version.js';

export { AGENT_VERSION };

export interface AgentOptions {
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
  /** seconds without a fetch before the watchdog rebuilds the consumer */
  watchdogSeconds?: number;
  /** first retry delay after a failed apply; doubles up to five minutes */
  retrySeconds?: number;
  /** a line on what an apply is doing now (systemd STATUS=) */
  onProgress?: (text: string) => void;
  /** after every successful apply (the health schedule runs a round at once and follows the spec's interval) */
  onApplied?: (spec: NodeSpec) => void;
  /**
   * The boot-time apply (start()) reached the machine and the units after it:
   * the daemon sends READY=1 here, not after start(), since those units are
   * ordered after bosun.service and cannot start before it (engine/step.ts SERVICE_PHASES).
   */
  beforeServicePhases?: () => Promise<void>;
}

interface LastApply {
  version: number;
  result: 'applied' | 'unchanged' | 'failed';
  at: string;
  error?: { code: string; message: string; phase?: unknown; step?: unknown };
}

/**
 * The daemon: converge to the last good spec at boot, then follow this node's
 * desired state on Kafka. Applies run one at a time; a spec that arrives during
 * an apply waits, and only the newest waiting one runs. A failed apply is
 * reported and retried with backoff until it succeeds or a newer spec comes.
 */
export class Agent {
  readonly #o: AgentOptions;
  /** the client the reporter uses, and its sockets; each consumer gets a client of its own (#startConsumer) */
  #kafka: Kafka | undefined;
  readonly #sockets = new SocketTracker();
  #consumer: DesiredConsumer | undefined;
  #reporter: Reporter | undefined;
  #lastGood: NodeSpec | undefined;
  #wanted: NodeSpec | undefined;
  #lastApply: LastApply | undefined;
  #applying: Promise<void> | undefined;
  /** the apply running now: its version, when it began, and the step it is on (the text given to onProgress) */
  #inProgress: { version: number; since: string; step: string } | undefined;
  #retryTimer: NodeJS.Timeout | undefined;
  #retryDelay: number;
  #watchdog: NodeJS.Timeout | undefined;
  #lastFetch = Date.now();
  #stopped = false;
  #restarting = false;
  /** a consumer start still connecting (one at a time: two would both join the group and one would be orphaned) */
  #consumerStarting: Promise<void> | undefined;
  #consumerStartingSince = 0;
  #restartingSince = 0;
  #loopPeriodMs = 0;
  #lastTick = 0;
  /** per partition, the newest offset of this node's messages examined, kept across restarts */
  #seen: Record<string, string> = {};
  /** partition:offset of messages already refused and reported, so re-reading after a restart does not report them again */
  readonly #refused = new Set<string>();
  #lastHealth: Record<string, unknown> | undefined;
  /** the snapshot server for peers restoring from this node (spec.peerServe), and the settings it runs with */
  #peerServer: { key: string; stop(): Promise<void> } | undefined;
  /** the decommission record in the state dir, if this host is being or was decommissioned */
  #decommission: DecommissionRecord | undefined;
  readonly counters = { received: 0, refused: 0, applied: 0, failed: 0, duplicates: 0, consumerRestarts: 0 };

  constructor(o: AgentOptions) {
    this.#o = o;
    this.#retryDelay = o.retrySeconds ?? 5;
  }

  get lastGood(): NodeSpec | undefined {
    return this.#lastGood;
  }

  /** One line on where this host stands, for systemd's STATUS=. */
  summary(): string {
    const a = this.#lastApply;
    if (a?.result === 'failed') return `version ${a.version} failed (${a.error?.code ?? 'error'}); keeping version ${this.#lastGood?.version ?? 'none'}; retrying`;
    if (this.#lastGood) return `version ${this.#lastGood.version} applied; following desired state`;
    return 'nothing applied yet; waiting for the first desired state';
  }

  get consumer(): DesiredConsumer | undefined {
    return this.#consumer;
  }

  async start(): Promise<void> {
    const { logger } = this.#o;
    this.#lastGood = await this.#readLastGood();
    this.#decommission = await readDecommissionRecord(this.#o.stateDir).catch(() => undefined);
    this.#seen = await readDesiredSeen(this.#o.stateDir);
    this.#kafka = await createKafka(this.#o.settings, logger, this.#sockets);
    this.#reporter = new Reporter({ kafka: this.#kafka, sockets: this.#sockets, node: this.#o.settings.node, identity: this.#o.identity, topics: this.#o.settings.topics, logger });
    if (this.#lastGood) {
      // After a reboot the host may be behind its last good spec (arrays not assembled, volumes closed): converge every phase.
      this.#wanted = this.#lastGood;
      await this.#runApply(true);
    } else {
      logger.info('no spec applied yet; waiting for the first desired state');
      // A new node: look for its spec while its first status goes out, not after (time to serve).
      void this.#launchConsumer();
      await this.#reporter.status(this.statusBody());
    }
    // Not awaited: with the broker away, kafkajs takes a minute or more to give up connecting,
    // and the host must not wait for it to count as started (READY=1 under systemd).
    if (!this.#consumer) void this.#launchConsumer();
    const limit = (this.#o.watchdogSeconds ?? 120) * 1000;
    this.#loopPeriodMs = Math.min(limit, 10_000);
    this.#lastTick = Date.now();
    this.#watchdog = setInterval(() => {
      this.#lastTick = Date.now();
      if (Date.now() - this.#lastFetch > limit && !this.#restarting && !this.#consumerStarting) {
        logger.warn({ silentSeconds: Math.round((Date.now() - this.#lastFetch) / 1000) }, 'the Kafka consumer has stopped fetching; rebuilding it');
        void this.#restartConsumer();
      }
    }, this.#loopPeriodMs);
  }

  /**
   * Is the main loop sound? It is not when its timer has stopped firing (the
   * event loop is blocked) or a consumer rebuild has hung for five minutes
   * (kafkajs can stop without an error). systemd's watchdog is fed only while
   * this is true. A broker that is merely down is not a reason: restarting
   * the agent would not bring it back.
   */
  healthy(now = Date.now()): boolean {
    if (this.#stopped) return false;
    if (this.#restarting && now - this.#restartingSince > 5 * 60_000) return false;
    if (this.#consumerStarting && now - this.#consumerStartingSince > 5 * 60_000) return false;
    if (this.#loopPeriodMs > 0 && now - this.#lastTick > 3 * this.#loopPeriodMs) return false;
    return true;
  }

  /** Start a consumer unless one is already being started; resolves when that start has finished (or failed). */
  #launchConsumer(): Promise<void> {
    if (!this.#consumerStarting) {
      this.#consumerStartingSince = Date.now();
      this.#consumerStarting = this.#startConsumer().finally(() => {
        this.#consumerStarting = undefined;
      });
    }
    return this.#consumerStarting;
  }

  async #startConsumer(): Promise<void> {
    this.#lastFetch = Date.now();
    try {
      // A client per consumer: stopping it closes its sockets even when kafkajs would leave some open.
      const sockets = new SocketTracker();
      const consumer = await startDesiredConsumer({
        kafka: await createKafka(this.#o.settings, this.#o.logger, sockets),
        sockets,
        topic: this.#o.settings.topics.desired,
        node: this.#o.settings.node,
        logger: this.#o.logger,
        onMessage: (m) => this.#onDesired(m),
        onFetch: () => {
          this.#lastFetch = Date.now();
        },
        onCrash: (err) => {
          this.#o.logger.warn(`the Kafka consumer crashed (${err.message}); rebuilding it`);
          void this.#restartConsumer();
        },
      });
      if (this.#stopped) {
        // stop() did not wait for this connect: leave no consumer behind.
        await consumer.stop().catch(() => undefined);
        return;
      }
      const previous = this.#consumer;
      this.#consumer = consumer;
      if (previous) await previous.stop().catch(() => undefined);
    } catch (e) {
      // The broker may be down at boot: the host keeps running as it is; the watchdog tries again.
      this.#o.logger.warn(`cannot start reading desired state (${describeError(e)}); retrying`);
    }
  }

  async #restartConsumer(): Promise<void> {
    if (this.#stopped || this.#restarting || this.#consumerStarting) return;
    this.#restarting = true;
    this.#restartingSince = Date.now();
    try {
      this.counters.consumerRestarts += 1;
      const old = this.#consumer;
      this.#consumer = undefined;
      await old?.stop().catch(() => undefined);
      if (!this.#stopped) await this.#launchConsumer();
    } finally {
      this.#restarting = false;
    }
  }

  /** Was this message examined (and any refusal reported) by an earlier run? */
  #alreadySeen(m: DesiredMessage): boolean {
    const seen = this.#seen[String(m.partition)];
    return seen !== undefined && BigInt(m.offset) <= BigInt(seen);
  }

  async #markSeen(m: DesiredMessage): Promise<void> {
    if (this.#alreadySeen(m)) return;
    this.#seen[String(m.partition)] = m.offset;
    await writeDesiredSeen(this.#o.stateDir, this.#seen);
  }

  async #readLastGood(): Promise<NodeSpec | undefined> {
    const lastGood = await readLastGoodSpec(this.#o.stateDir);
    if (lastGood?.ok === false) {
      this.#o.logger.error({ problems: lastGood.problems }, 'the last good spec in the state dir no longer validates; ignoring it');
      return undefined;
    }
    return lastGood?.spec;
  }

  async #onDesired(m: DesiredMessage): Promise<void> {
    this.counters.received += 1;
    const applied = (await readApplied(this.#o.stateDir))?.specVersion;
    const v = verifyEnvelope(m.value, { node: this.#o.settings.node, trusted: this.#o.settings.trustedKeys, lastApplied: applied });
    if (!v.ok) {
      if (v.refusal.reason === 'stale-version') {
        // At-least-once delivery repeats messages: a version already applied is not news.
        this.counters.duplicates += 1;
        this.#o.logger.debug({ offset: m.offset }, v.refusal.message);
        return;
      }
      if (this.#refused.has(`${m.partition}:${m.offset}`) || this.#alreadySeen(m)) return;
      this.#refused.add(`${m.partition}:${m.offset}`);
      await this.#markSeen(m);
      this.counters.refused += 1;
      this.#o.logger.warn({ reason: v.refusal.reason, offset: m.offset }, `refused a desired state: ${v.refusal.message}; nothing changed`);
      await this.#reporter!.event({ kind: 'refused', reason: v.refusal.reason, message: v.refusal.message, offset: m.offset, partition: m.partition, ...('problems' in v.refusal ? { problems: v.refusal.problems } : {}) });
      return;
    }
    if (this.#wanted && v.spec.version <= this.#wanted.version && this.#lastApply?.result !== 'failed') {
      this.counters.duplicates += 1;
      return;
    }
    await this.#markSeen(m);
    this.#wanted = v.spec;
    this.#o.logger.info({ version: v.spec.version, keyId: v.keyId, offset: m.offset }, `desired state version ${v.spec.version} received`);
    void this.#kick();
  }

  #kick(): Promise<void> {
    if (this.#retryTimer) {
      clearTimeout(this.#retryTimer);
      this.#retryTimer = undefined;
    }
    this.#applying ??= this.#runApply(false).finally(() => {
      this.#applying = undefined;
      if (this.#wanted && this.#wanted.version > (this.#lastApply?.version ?? 0) && !this.#stopped) void this.#kick();
    });
    return this.#applying;
  }

  async #runApply(boot: boolean): Promise<void> {
    const spec = this.#wanted;
    if (!spec || this.#stopped) return;
    const previous = boot ? undefined : this.#lastGood;
    const stages = changedStages(spec, previous);
    const planner = this.#o.planner ?? phasePlanner(this.#o.probe, this.#o.ctx, previous);
    const log = this.#o.logger.child({ specVersion: spec.version });
    if (spec.decommission) await this.#syncPeerServer(spec);
    const inProgress = { version: spec.version, since: new Date().toISOString(), step: 'planning' };
    this.#inProgress = inProgress;
    const onProgress = (text: string) => {
      inProgress.step = text;
      this.#o.onProgress?.(text);
    };
    try {
      const out = await applyNode({ spec, stateDir: this.#o.stateDir, host: this.#o.host, probe: this.#o.probe, ctx: this.#o.ctx, identity: this.#o.identity, logger: this.#o.logger, planner, onProgress, ...(boot && this.#o.beforeServicePhases ? { beforeServicePhases: this.#o.beforeServicePhases } : {}), ...(this.#o.settings.objectStorage ? { objectStorage: this.#o.settings.objectStorage } : {}) });
      this.counters.applied += 1;
      this.#lastGood = spec;
      await this.#syncPeerServer(spec);
      this.#lastApply = { version: spec.version, result: out.result, at: new Date().toISOString() };
      this.#retryDelay = this.#o.retrySeconds ?? 5;
      await this.#reporter!.event({ kind: 'applied', version: spec.version, result: out.result, steps: out.steps, stages, resumedAt: out.resumedAt, durationMs: out.durationMs, timings: out.timings });
      if (out.decommission) {
        const first = this.#decommission?.state !== 'decommissioned';
        this.#decommission = out.decommission;
        // A replay reports the same status, but the event announces the retirement once.
        if (first) await this.#reporter!.event({ kind: 'decommissioned', version: spec.version, safeToDelete: out.decommission.safeToDelete, finishedAt: out.decommission.finishedAt, erase: out.decommission.erase, evidence: out.decommission.evidence });
      }
      this.#o.onApplied?.(spec);
    } catch (e) {
      this.counters.failed += 1;
      const code = isBosunError(e) ? e.code : 'E_EXEC';
      const message = this.#o.redactor.redact(describeError(e));
      const details = isBosunError(e) ? e.details : {};
      this.#lastApply = { version: spec.version, result: 'failed', at: new Date().toISOString(), error: { code, message, phase: details.phase, step: details.step } };
      log.error({ errorCode: code }, `applying version ${spec.version} failed: ${message}; the host keeps its last good state (version ${this.#lastGood?.version ?? 'none'}); retrying in ${this.#retryDelay}s`);
      if (spec.decommission) this.#decommission = await readDecommissionRecord(this.#o.stateDir).catch(() => this.#decommission);
      if (code === 'E_DECOMMISSIONED') {
        // Like any refused desired state: reported once, never retried; the host stays as it is.
        this.counters.refused += 1;
        await this.#reporter!.event({ kind: 'refused', reason: 'decommissioned', message, version: spec.version });
      } else await this.#reporter!.event({ kind: 'apply-failed', version: spec.version, code, message, phase: details.phase, step: details.step, retryInSeconds: this.#retryDelay });
      if (!this.#stopped && code !== 'E_INVALID_SPEC' && code !== 'E_STALE_VERSION' && code !== 'E_DECOMMISSIONED') {
        const delay = this.#retryDelay;
        this.#retryDelay = Math.min(this.#retryDelay * 2, 300);
        this.#retryTimer = setTimeout(() => {
          this.#retryTimer = undefined;
          void this.#kick();
        }, delay * 1000);
      }
    }
    if (this.#inProgress === inProgress) this.#inProgress = undefined;
    this.#o.onProgress?.(this.summary());
    await this.#reporter!.status(this.statusBody());
  }

  statusBody(extra: Record<string, unknown> = {}): Record<string, unknown> {
    return {
      node: this.#o.settings.node,
      cluster: this.#lastGood?.cluster ?? null,
      agentVersion: AGENT_VERSION,
      sealingKey: this.#o.identity.sealingKey,
      signingKey: this.#o.identity.signingKey,
      appliedVersion: this.#lastGood?.version ?? null,
      wantedVersion: this.#wanted?.version ?? null,
      lastApply: this.#lastApply ?? null,
      applying: this.#inProgress ? { ...this.#inProgress } : null,
      restore: readRestoreProgressSync(this.#o.stateDir) ?? null,
      lifecycle: lifecycleOf(this.#decommission, this.#wanted),
      counters: this.counters,
      time: new Date().toISOString(),
      ...extra,
    };
  }

  /**
   * Publish a status without health figures: what a host with nothing applied
   * yet sends each round (called by the health schedule), so that a first
   * apply of many minutes (disks, a restore) shows its step and restore
   * progress instead of silence.
   */
  reportProgress(): Promise<void> {
    return this.#reporter!.status(this.statusBody());
  }

  /** Publish a status with health figures (called by the health schedule). */
  report(health: Record<string, unknown>): Promise<void> {
    this.#lastHealth = health;
    return this.#reporter!.status(this.statusBody({ health }));
  }

  /** The figures for the local Prometheus endpoint. */
  metrics(): Sample[] {
    const g = (name: string, help: string, value: number, labels?: Record<string, string>): Sample => ({ name, help, type: 'gauge', value, labels });
    const c = (name: string, help: string, value: number): Sample => ({ name, help, type: 'counter', value });
    const h = this.#lastHealth as { ok?: boolean; disks?: { array?: { degraded: number }; usage?: { sizeBytes: number; usedBytes: number } } } | undefined;
    const q = this.#reporter?.queued;
    return [
      g('bosun_applied_version', 'spec version applied in full (0: none yet)', this.#lastGood?.version ?? 0),
      g('bosun_wanted_version', 'newest spec version received', this.#wanted?.version ?? 0),
      g('bosun_last_apply_failed', '1 if the last apply failed', this.#lastApply?.result === 'failed' ? 1 : 0),
      c('bosun_desired_messages_total', 'desired-state messages for this node read', this.counters.received),
      c('bosun_desired_refused_total', 'desired-state messages refused (bad signature, unknown key, invalid ...)', this.counters.refused),
      c('bosun_applies_total', 'applies that completed', this.counters.applied),
      c('bosun_apply_failures_total', 'applies that failed', this.counters.failed),
      c('bosun_consumer_restarts_total', 'Kafka consumers rebuilt by the watchdog', this.counters.consumerRestarts),
      g('bosun_reports_queued', 'events waiting for the broker', q?.events ?? 0),
      ...(h ? [g('bosun_health_ok', '1 if the last health round found no problem', h.ok ? 1 : 0)] : []),
      ...(h?.disks?.array ? [g('bosun_raid_degraded_members', 'RAID members missing', h.disks.array.degraded)] : []),
      ...(h?.disks?.usage ? [g('bosun_volume_size_bytes', 'data volume size', h.disks.usage.sizeBytes), g('bosun_volume_used_bytes', 'data volume bytes used', h.disks.usage.usedBytes)] : []),
    ];
  }

  /**
   * Serve snapshots to the peers the spec names (spec.peerServe), on the mesh
   * address; restart the server only when its settings changed; stop it when
   * the spec no longer asks for it. A server that cannot start is reported and
   * does not fail the apply: the host itself is as the spec says.
   */
  async #syncPeerServer(spec: NodeSpec): Promise<void> {
    // A node being retired serves no one: its data volume is going away.
    const key = spec.peerServe && !spec.decommission ? canonicalJson({ serve: spec.peerServe, address: spec.network?.ipsec?.address, data: spec.disks?.mount.path }) : '';
    if ((this.#peerServer?.key ?? '') === key) return;
    await this.#peerServer?.stop().catch(() => undefined);
    this.#peerServer = undefined;
    if (!key || this.#stopped) return;
    try {
      const { PeerServer, hostTlsCredential, peerServerOptions } = await import('./backup/peer/index.js');
      const options = peerServerOptions(spec, { stateDir: this.#o.stateDir, credential: await hostTlsCredential(this.#o.stateDir, spec.node), logger: this.#o.logger, redactor: this.#o.redactor })!;
      const server = new PeerServer(options);
      const at = await server.start();
      this.#peerServer = { key, stop: () => server.stop() };
      this.#o.logger.info({ port: at.port }, `serving data volume snapshots to ${spec.peerServe!.clients.map((c) => c.node).join(', ')} on [${at.host}]:${at.port}`);
    } catch (e) {
      const message = this.#o.redactor.redact(describeError(e));
      this.#o.logger.error(`cannot serve snapshots to peers: ${message}`);
      await this.#reporter?.event({ kind: 'peer-serve-failed', version: spec.version, message });
    }
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#watchdog) clearInterval(this.#watchdog);
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    await this.#applying?.catch(() => undefined);
    // A consumer still connecting (the broker away) is not waited for long: it stops itself once connected.
    const connecting = [this.#consumerStarting, this.#restarting ? waitUntil(() => !this.#restarting) : undefined].filter((p) => p !== undefined);
    if (connecting.length > 0) await Promise.race([Promise.all(connecting), new Promise((r) => setTimeout(r, 5_000).unref())]);
    await this.#consumer?.stop().catch(() => undefined);
    await this.#peerServer?.stop().catch(() => undefined);
    await this.#reporter?.stop();
    this.#sockets.closeAll();
  }
}

function waitUntil(done: () => boolean): Promise<void> {
  return new Promise((resolve) => {
    const t = setInterval(() => {
      if (done()) {
        clearInterval(t);
        resolve();
      }
    }, 50);
    t.unref();
  });
}
