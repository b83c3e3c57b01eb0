import type { DesiredConsumer } from '../bus/desired.js';
import { createKafka, SocketTracker } from '../bus/kafka.js';
import { underSystemd } from '../host/systemd.js';
import { Reporter } from '../bus/reporter.js';
import type { Sample } from '../health/metrics.js';
import type { NodeSpec } from '../spec/node-spec.js';
import { ApplyLoop, type ApplyOptions } from './apply-loop.js';
import { ScheduledBackups } from './backups.js';
import { ConsumerSupervisor } from './consumer.js';
import { DesiredIntake } from './intake.js';
import { PeerServing } from './peer-serving.js';
import { HostStatus, newCounters, type Counters } from './status.js';

export interface AgentOptions extends ApplyOptions {
  /** seconds without a fetch before the watchdog rebuilds the consumer */
  watchdogSeconds?: number;
  /** the bosun command line that scheduled backups run `backup job` with (default: this process's node and script) */
  bosunCommand?: readonly string[];
}

/**
 * The daemon: converge to the last good spec at boot, then follow this node's
 * desired state on Kafka. The work is done by the pieces it owns: the consumer
 * supervisor keeps a consumer reading, the intake verifies what it reads, the
 * apply loop converges the host, peer serving follows the applied spec, and
 * the host status is what goes out. The agent wires them to one Reporter and
 * starts and stops them in order.
 */
export class Agent {
  readonly counters: Counters = newCounters();
  /** aborted by stop(): every piece stops taking new work at once, before stop() waits for any of them */
  readonly #stopping = new AbortController();
  /** the sockets of the reporter's client; each consumer has a client of its own (daemon/consumer.ts) */
  readonly #sockets = new SocketTracker();
  #reporter: Reporter | undefined;
  readonly #options: AgentOptions;
  readonly #loop: ApplyLoop;
  readonly #intake: DesiredIntake;
  readonly #consumers: ConsumerSupervisor;
  readonly #peers: PeerServing;
  readonly #backups: ScheduledBackups;
  readonly #status: HostStatus;

  constructor(options: AgentOptions) {
    this.#options = options;
    const { settings, stateDir, logger, redactor } = options;
    const signal = this.#stopping.signal;
    // Events and statuses go out only once start() has made the reporter; nothing publishes before that.
    const event = (body: Record<string, unknown>) => this.#reporter!.event(body);
    this.#peers = new PeerServing({ stateDir, logger, redactor, signal, event });
    this.#backups = new ScheduledBackups({
      host: options.host,
      identity: options.identity,
      redactor,
      ...(settings.objectStorage ? { objectStorage: settings.objectStorage } : {}),
      stateDir,
      bosunCommand: options.bosunCommand ?? [process.execPath, process.argv[1]!],
      underSystemd: underSystemd(),
      logger,
      signal,
      event,
    });
    this.#loop = new ApplyLoop(options, {
      counters: this.counters,
      signal,
      peers: this.#peers,
      backups: this.#backups,
      event,
      publishStatus: () => this.reportProgress(),
    });
    this.#intake = new DesiredIntake({
      settings,
      stateDir,
      logger,
      counters: this.counters,
      event,
      isNews: (spec) => this.#loop.isNews(spec),
      want: (spec) => this.#loop.want(spec),
    });
    this.#consumers = new ConsumerSupervisor({
      settings,
      logger,
      counters: this.counters,
      signal,
      onMessage: (message) => this.#intake.handle(message),
      watchdogSeconds: options.watchdogSeconds,
    });
    this.#status = new HostStatus({
      node: settings.node,
      identity: options.identity,
      stateDir,
      applyState: this.#loop,
      counters: this.counters,
      backups: this.#backups,
    });
  }

  get lastGood(): NodeSpec | undefined {
    return this.#loop.lastGood;
  }

  get consumer(): DesiredConsumer | undefined {
    return this.#consumers.current;
  }

  /** One line on where this host stands, for systemd's STATUS=. */
  summary(): string {
    return this.#loop.summary();
  }

  async start(): Promise<void> {
    const { settings, logger, identity } = this.#options;
    await this.#loop.load();
    await this.#intake.load();
    await this.#backups.load();
    const kafka = await createKafka(settings, logger, this.#sockets);
    this.#reporter = new Reporter({ kafka, sockets: this.#sockets, node: settings.node, identity, topics: settings.topics, logger });
    if (this.#loop.lastGood) await this.#loop.boot();
    else {
      logger.info('no spec applied yet; waiting for the first desired state');
      // A new node: look for its spec while its first status goes out, not after (time to serve).
      void this.#consumers.launch();
      await this.reportProgress();
    }
    // Not awaited: with the broker away, kafkajs takes a minute or more to give up connecting,
    // and the host must not wait for it to count as started (READY=1 under systemd).
    if (!this.#consumers.current) void this.#consumers.launch();
    this.#consumers.watch();
  }

  /**
   * Is the main loop sound (daemon/consumer.ts)? systemd's watchdog is fed
   * only while this is true.
   */
  healthy(now = Date.now()): boolean {
    return this.#consumers.healthy(now);
  }

  /**
   * Publish a status without health figures: what a host with nothing applied
   * yet sends each round (called by the health schedule), so that a first
   * apply of many minutes (disks, a restore) shows its step and restore
   * progress instead of silence.
   */
  reportProgress(): Promise<void> {
    return this.#reporter!.status(this.#status.body());
  }

  /** Publish a status with health figures (called by the health schedule). */
  report(health: Record<string, unknown>): Promise<void> {
    return this.#reporter!.status(this.#status.bodyWithHealth(health));
  }

  /** A scheduled backup now, unless one is running (tests; an operator's request later). */
  backupNow(): Promise<void> {
    return this.#backups.runNow('request');
  }

  /** The figures for the local Prometheus endpoint. */
  metrics(): Sample[] {
    return this.#status.metrics(this.#reporter?.queued.events);
  }

  async stop(): Promise<void> {
    this.#stopping.abort();
    await this.#loop.stop();
    await this.#consumers.stop();
    await this.#peers.stop();
    await this.#backups.stop();
    await this.#reporter?.stop();
    this.#sockets.closeAll();
  }
}
