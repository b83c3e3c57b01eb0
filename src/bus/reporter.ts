import kafkajs, { type Producer } from 'kafkajs';
import { canonicalJson } from '../canonical-json.js';
import type { HostIdentity } from '../identity/host-identity.js';
import type { Logger } from '../log.js';
import type { Kafka, SocketTracker } from './kafka.js';

/**
 * Status and events to Kafka, signed by the host. While the broker is away
 * nothing is lost that matters: the newest status waits (newest wins, it is a
 * compacted topic) and events wait in a bounded queue (oldest dropped first,
 * and counted); both are flushed, in order, when the broker is back.
 */

export const STATUS_FORMAT = 'bosun-status-v1';

export interface SignedReport {
  format: typeof STATUS_FORMAT;
  node: string;
  /** "ed25519:…", the host key the signature verifies against */
  signer: string;
  payload: string;
  signature: string;
}

export function signReport(node: string, identity: HostIdentity, body: unknown): SignedReport {
  const payload = Buffer.from(canonicalJson(body));
  const signature = identity.sign(Buffer.concat([Buffer.from(`${STATUS_FORMAT}\0`), payload]));
  return { format: STATUS_FORMAT, node, signer: identity.signingKey, payload: payload.toString('base64url'), signature: signature.toString('base64url') };
}

export interface ReporterOptions {
  kafka: Kafka;
  node: string;
  identity: HostIdentity;
  topics: { status: string; events: string };
  logger: Logger;
  maxQueuedEvents?: number;
  /** how long status() and event() wait for the broker before returning with the report still queued (default 5 s) */
  waitMs?: number;
  /**
   * How long one connect or send may take before the producer is given up and
   * a new one made (default 120 s). kafkajs can leave a send pending for good;
   * without this every later report would queue behind it and the node would
   * go silent while it otherwise runs normally.
   */
  stallMs?: number;
  /** the sockets of `kafka` (created with this tracker), destroyed when a stalled producer is given up: its disconnect may never finish */
  sockets?: SocketTracker;
}

/** A kafkajs call that did not settle in time. */
class StalledError extends Error {}

export class Reporter {
  readonly #o: ReporterOptions;
  #producer: Producer | undefined;
  #pendingStatus: unknown;
  #events: unknown[] = [];
  #dropped = 0;
  #flushing: Promise<void> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;
  readonly sent = { status: 0, events: 0 };
  /** producers connected, and connects or sends given up as stalled (see ReporterOptions.stallMs) */
  readonly producers = { connected: 0, stalled: 0 };

  constructor(o: ReporterOptions) {
    this.#o = o;
  }

  get queued(): { status: boolean; events: number; dropped: number } {
    return { status: this.#pendingStatus !== undefined, events: this.#events.length, dropped: this.#dropped };
  }

  /**
   * Queue the node's full status (newest wins) and send it. Resolves when it
   * is sent, or after `waitMs` (ReporterOptions) if the broker is slow or away:
   * the caller (an apply, a boot) never waits on Kafka for longer than that;
   * the report stays queued and goes out when the broker is back.
   */
  status(body: unknown): Promise<void> {
    this.#pendingStatus = body;
    return this.#bounded(this.flush());
  }

  event(body: Record<string, unknown>): Promise<void> {
    this.#events.push({ ...body, node: this.#o.node, at: new Date().toISOString() });
    const max = this.#o.maxQueuedEvents ?? 1000;
    while (this.#events.length > max) {
      this.#events.shift();
      this.#dropped += 1;
    }
    return this.#bounded(this.flush());
  }

  #bounded(p: Promise<void>): Promise<void> {
    const ms = this.#o.waitMs ?? 5_000;
    let timer: NodeJS.Timeout | undefined;
    return Promise.race([p, new Promise<void>((r) => (timer = setTimeout(r, ms)))]).finally(() => clearTimeout(timer));
  }

  /** Send what is queued; on failure keep it and try again later. Never throws. */
  flush(): Promise<void> {
    this.#flushing ??= this.#flushOnce().finally(() => {
      this.#flushing = undefined;
    });
    return this.#flushing;
  }

  async #flushOnce(): Promise<void> {
    if (this.#stopped) return;
    try {
      if (!this.#producer) {
        const producer = this.#o.kafka.producer({
          createPartitioner: kafkajs.Partitioners.DefaultPartitioner,
          allowAutoTopicCreation: false,
          idempotent: false,
          retry: { retries: 2 },
        });
        // Kept before connecting, so a connect that stalls is disconnected like any other failed producer.
        this.#producer = producer;
        await this.#deadline(producer.connect(), 'connecting');
        if (this.#stopped) {
          // stop() gave up waiting for this connect: do not leave a producer behind.
          this.#producer = undefined;
          await producer.disconnect().catch(() => undefined);
          return;
        }
        this.producers.connected += 1;
      }
      while (this.#events.length > 0) {
        const batch = this.#events.slice(0, 100);
        if (this.#dropped > 0) batch.unshift({ node: this.#o.node, kind: 'events-dropped', count: this.#dropped, at: new Date().toISOString() });
        await this.#deadline(
          this.#producer.send({
            topic: this.#o.topics.events,
            messages: batch.map((e) => ({ key: this.#o.node, value: JSON.stringify(signReport(this.#o.node, this.#o.identity, e)) })),
          }),
          'sending events',
        );
        this.#events.splice(0, Math.min(100, this.#events.length));
        this.sent.events += batch.length;
        this.#dropped = 0;
      }
      if (this.#pendingStatus !== undefined) {
        const body = this.#pendingStatus;
        await this.#deadline(
          this.#producer.send({
            topic: this.#o.topics.status,
            messages: [{ key: this.#o.node, value: JSON.stringify(signReport(this.#o.node, this.#o.identity, body)) }],
          }),
          'sending the status',
        );
        if (this.#pendingStatus === body) this.#pendingStatus = undefined;
        this.sent.status += 1;
      }
    } catch (e) {
      this.#o.logger.warn(
        { component: 'reporter', queued: this.queued },
        `cannot reach Kafka to report (${e instanceof Error ? e.message : String(e)}); keeping reports and retrying`,
      );
      if (e instanceof StalledError) this.producers.stalled += 1;
      const producer = this.#producer;
      this.#producer = undefined;
      // A stalled producer may not disconnect either: drop its connections, and do not wait on it for long.
      if (e instanceof StalledError) this.#o.sockets?.destroyOpen();
      await this.#deadline(producer?.disconnect() ?? Promise.resolve(), 'disconnecting', 10_000).catch(() => undefined);
      if (this.#stopped) return;
      this.#timer ??= setTimeout(() => {
        this.#timer = undefined;
        void this.flush();
      }, 5_000);
    }
  }

  /** Resolves or rejects as p does, or rejects with a StalledError once `stallMs` have passed. */
  #deadline<T>(p: Promise<T>, what: string, ms = this.#o.stallMs ?? 120_000): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new StalledError(`${what} took over ${Math.round(ms / 1000)} s; giving up this producer`)), ms);
    });
    p.catch(() => undefined);
    return Promise.race([p, late]).finally(() => clearTimeout(timer));
  }

  /** One last try to send what is queued (at most `waitMs`), then stop; what could not be sent is lost with the process. */
  async stop(): Promise<void> {
    await this.#bounded(this.flush());
    this.#stopped = true;
    if (this.#timer) clearTimeout(this.#timer);
    await this.#producer?.disconnect().catch(() => undefined);
  }
}
