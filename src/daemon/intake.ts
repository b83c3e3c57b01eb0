import type { DesiredMessage } from '../bus/desired.js';
import { verifyEnvelope } from '../bus/envelope.js';
import type { Logger } from '../log.js';
import type { AgentSettings } from '../spec/agent-settings.js';
import type { NodeSpec } from '../spec/node-spec.js';
import { readApplied } from '../state/applied.js';
import { readDesiredSeen, writeDesiredSeen } from '../state/desired-seen.js';
import type { Counters } from './status.js';

export interface DesiredIntakeOptions {
  settings: AgentSettings;
  stateDir: string;
  logger: Logger;
  counters: Counters;
  /** publish an event on bosun.events */
  event: (body: Record<string, unknown>) => Promise<void>;
  /** the apply loop (daemon/apply-loop.ts): is this spec one it does not have yet, and take it */
  isNews: (spec: NodeSpec) => boolean;
  want: (spec: NodeSpec) => void;
}

/**
 * What one desired-state message means for this host: a spec to apply, a
 * repeat to ignore, or a refusal to report. Every message is verified (the
 * envelope, the signer, the spec, the node, the version) before anything
 * else looks at it. A refusal is reported once: the offsets examined are kept
 * in the state dir, because every start reads the partition from the beginning.
 */
export class DesiredIntake {
  readonly #options: DesiredIntakeOptions;
  /** per partition, the newest offset of this node's messages examined, kept across restarts */
  #seen: Record<string, string> = {};
  /** partition:offset of messages already refused and reported, so re-reading after a restart does not report them again */
  readonly #refused = new Set<string>();

  constructor(options: DesiredIntakeOptions) {
    this.#options = options;
  }

  /** The offsets an earlier run examined. */
  async load(): Promise<void> {
    this.#seen = await readDesiredSeen(this.#options.stateDir);
  }

  async handle(message: DesiredMessage): Promise<void> {
    const { counters, logger, settings } = this.#options;
    counters.received += 1;
    const applied = (await readApplied(this.#options.stateDir))?.specVersion;
    const verified = verifyEnvelope(message.value, { node: settings.node, trusted: settings.trustedKeys, lastApplied: applied });
    if (!verified.ok) {
      const { refusal } = verified;
      if (refusal.reason === 'stale-version') {
        // At-least-once delivery repeats messages: a version already applied is not news.
        counters.duplicates += 1;
        logger.debug({ offset: message.offset }, refusal.message);
        return;
      }
      const at = `${message.partition}:${message.offset}`;
      if (this.#refused.has(at) || this.#alreadySeen(message)) return;
      this.#refused.add(at);
      await this.#markSeen(message);
      counters.refused += 1;
      logger.warn({ reason: refusal.reason, offset: message.offset }, `refused a desired state: ${refusal.message}; nothing changed`);
      await this.#options.event({
        kind: 'refused',
        reason: refusal.reason,
        message: refusal.message,
        offset: message.offset,
        partition: message.partition,
        ...('problems' in refusal ? { problems: refusal.problems } : {}),
      });
      return;
    }
    if (!this.#options.isNews(verified.spec)) {
      counters.duplicates += 1;
      return;
    }
    await this.#markSeen(message);
    logger.info({ version: verified.spec.version, keyId: verified.keyId, offset: message.offset }, `desired state version ${verified.spec.version} received`);
    this.#options.want(verified.spec);
  }

  /** Was this message examined (and any refusal reported) by an earlier run? */
  #alreadySeen(message: DesiredMessage): boolean {
    const seen = this.#seen[String(message.partition)];
    return seen !== undefined && BigInt(message.offset) <= BigInt(seen);
  }

  async #markSeen(message: DesiredMessage): Promise<void> {
    if (this.#alreadySeen(message)) return;
    this.#seen[String(message.partition)] = message.offset;
    await writeDesiredSeen(this.#options.stateDir, this.#seen);
  }
}
