import { startDesiredConsumer, type DesiredConsumer, type DesiredMessage } from '../bus/desired.js';
import { createKafka, SocketTracker } from '../bus/kafka.js';
import { describeError } from '../errors.js';
import type { Logger } from '../log.js';
import type { AgentSettings } from '../spec/agent-settings.js';
import type { Counters } from './status.js';

export interface ConsumerSupervisorOptions {
  settings: AgentSettings;
  logger: Logger;
  counters: Counters;
  /** aborted when the agent stops: no consumer is started or kept after that */
  signal: AbortSignal;
  /** seconds without a fetch before the watchdog rebuilds the consumer (default 120) */
  watchdogSeconds?: number;
  /** every message of this node's partition (daemon/intake.ts) */
  onMessage: (message: DesiredMessage) => Promise<void>;
}

/** How long a consumer start or rebuild may take before the main loop counts as unsound. */
const HUNG_MS = 5 * 60_000;

/**
 * Keeps one desired-state consumer reading. kafkajs is in maintenance mode
 * and can stop fetching without an error, so its own restart loop is off and
 * this supervisor rebuilds the consumer when it crashes or goes silent. The
 * watchdog's timer doubles as the main loop's heartbeat (healthy()).
 */
export class ConsumerSupervisor {
  readonly #options: ConsumerSupervisorOptions;
  #consumer: DesiredConsumer | undefined;
  /** a consumer start still connecting (one at a time: two would both join the group and one would be orphaned) */
  #starting: Promise<void> | undefined;
  #startingSince = 0;
  #restarting = false;
  #restartingSince = 0;
  #watchdog: NodeJS.Timeout | undefined;
  #lastFetch = Date.now();
  #loopPeriodMs = 0;
  #lastTick = 0;

  constructor(options: ConsumerSupervisorOptions) {
    this.#options = options;
  }

  /** The consumer reading now, if one has connected. */
  get current(): DesiredConsumer | undefined {
    return this.#consumer;
  }

  /** Start a consumer unless one is already being started; resolves when that start has finished (or failed). */
  launch(): Promise<void> {
    if (!this.#starting) {
      this.#startingSince = Date.now();
      this.#starting = this.#start().finally(() => {
        this.#starting = undefined;
      });
    }
    return this.#starting;
  }

  /** Rebuild the consumer whenever it has not fetched for watchdogSeconds; the timer is also the main loop's heartbeat. */
  watch(): void {
    const { logger } = this.#options;
    const limit = (this.#options.watchdogSeconds ?? 120) * 1000;
    this.#loopPeriodMs = Math.min(limit, 10_000);
    this.#lastTick = Date.now();
    this.#watchdog = setInterval(() => {
      this.#lastTick = Date.now();
      if (Date.now() - this.#lastFetch > limit && !this.#restarting && !this.#starting) {
        logger.warn({ silentSeconds: Math.round((Date.now() - this.#lastFetch) / 1000) }, 'the Kafka consumer has stopped fetching; rebuilding it');
        void this.#restart();
      }
    }, this.#loopPeriodMs);
  }

  /**
   * Is the main loop sound? It is not when its timer has stopped firing (the
   * event loop is blocked) or a consumer rebuild has hung for five minutes
   * (kafkajs can stop without an error). A broker that is merely down is not
   * a reason: restarting the agent would not bring it back.
   */
  healthy(now: number): boolean {
    if (this.#options.signal.aborted) return false;
    if (this.#restarting && now - this.#restartingSince > HUNG_MS) return false;
    if (this.#starting && now - this.#startingSince > HUNG_MS) return false;
    if (this.#loopPeriodMs > 0 && now - this.#lastTick > 3 * this.#loopPeriodMs) return false;
    return true;
  }

  async #start(): Promise<void> {
    const { settings, logger } = this.#options;
    this.#lastFetch = Date.now();
    try {
      // A client per consumer: stopping it closes its sockets even when kafkajs would leave some open.
      const sockets = new SocketTracker();
      const consumer = await startDesiredConsumer({
        kafka: await createKafka(settings, logger, sockets),
        sockets,
        topic: settings.topics.desired,
        node: settings.node,
        logger,
        onMessage: (message) => this.#options.onMessage(message),
        onFetch: () => {
          this.#lastFetch = Date.now();
        },
        onCrash: (err) => {
          logger.warn(`the Kafka consumer crashed (${err.message}); rebuilding it`);
          void this.#restart();
        },
      });
      if (this.#options.signal.aborted) {
        // stop() did not wait for this connect: leave no consumer behind.
        await consumer.stop().catch(() => undefined);
        return;
      }
      const previous = this.#consumer;
      this.#consumer = consumer;
      if (previous) await previous.stop().catch(() => undefined);
    } catch (e) {
      // The broker may be down at boot: the host keeps running as it is; the watchdog tries again.
      logger.warn(`cannot start reading desired state (${describeError(e)}); retrying`);
    }
  }

  async #restart(): Promise<void> {
    if (this.#options.signal.aborted || this.#restarting || this.#starting) return;
    this.#restarting = true;
    this.#restartingSince = Date.now();
    try {
      this.#options.counters.consumerRestarts += 1;
      const old = this.#consumer;
      this.#consumer = undefined;
      await old?.stop().catch(() => undefined);
      if (!this.#options.signal.aborted) await this.launch();
    } finally {
      this.#restarting = false;
    }
  }

  /** Called once the agent's signal is aborted: stop the watchdog, then the consumer. */
  async stop(): Promise<void> {
    if (this.#watchdog) clearInterval(this.#watchdog);
    // A consumer still connecting (the broker away) is not waited for long: it stops itself once connected.
    const connecting = [this.#starting, this.#restarting ? waitUntil(() => !this.#restarting) : undefined].filter((pending) => pending !== undefined);
    if (connecting.length > 0) await Promise.race([Promise.all(connecting), new Promise((resolve) => setTimeout(resolve, 5_000).unref())]);
    await this.#consumer?.stop().catch(() => undefined);
  }
}

function waitUntil(done: () => boolean): Promise<void> {
  return new Promise((resolve) => {
    const poll = setInterval(() => {
      if (done()) {
        clearInterval(poll);
        resolve();
      }
    }, 50);
    poll.unref();
  });
}
