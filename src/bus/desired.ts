import kafkajs, { type Consumer, type PartitionAssigner } from 'kafkajs';
import type { Logger } from '../log.js';
import type { Kafka, SocketTracker } from './kafka.js';
import { partitionFor } from './murmur2.js';

const { AssignerProtocol } = kafkajs;

/**
 * Reads this node's desired state, and nothing else of the fleet's: only the
 * partition the node id hashes to (Kafka's default partitioner), through a
 * consumer group of its own whose assigner hands that one partition to it.
 * No offsets are committed: every start reads the partition from its
 * beginning (compaction keeps that to about one message per node on it),
 * takes the newest value for this node, then tails.
 */

export interface DesiredMessage {
  value: Buffer | null;
  offset: string;
  partition: number;
  /** true once the consumer has reached the partition's end as it was at start */
  live: boolean;
}

export interface DesiredConsumerOptions {
  kafka: Kafka;
  topic: string;
  node: string;
  logger: Logger;
  /** called with each message for this node, in order; at start only the newest one before `live` */
  onMessage: (m: DesiredMessage) => Promise<void>;
  /** called on every fetch; a watchdog uses it to see the consumer is alive */
  onFetch?: () => void;
  /** called when kafkajs gives up on the consumer; the owner rebuilds it */
  onCrash?: (error: Error) => void;
  /** the sockets of `kafka` (a client of this consumer's own): closed when the consumer stops or fails to start */
  sockets?: SocketTracker;
  /** how long stop() waits for kafkajs's disconnect before closing the sockets (default 10 s) */
  stopWaitMs?: number;
}

export interface DesiredConsumer {
  partition: number;
  /** messages read to find this node's spec, and their bytes (for the fleet-scale benchmark) */
  stats: { messages: number; bytes: number; ownMessages: number };
  stop(): Promise<void>;
}

function onePartitionAssigner(topic: string, partition: number): PartitionAssigner {
  return () => ({
    name: 'BosunOnePartition',
    version: 1,
    // eslint-disable-next-line @typescript-eslint/require-await
    async assign({ members }) {
      // One member per node. Should a second agent with the same node id join, only one gets the partition.
      return members.map((m, i) => ({
        memberId: m.memberId,
        memberAssignment: AssignerProtocol.MemberAssignment.encode({
          version: 1,
          assignment: i === 0 ? { [topic]: [partition] } : {},
          userData: Buffer.alloc(0),
        }),
      }));
    },
    protocol({ topics }) {
      return { name: 'BosunOnePartition', metadata: AssignerProtocol.MemberMetadata.encode({ version: 1, topics, userData: Buffer.alloc(0) }) };
    },
  });
}

export async function startDesiredConsumer(options: DesiredConsumerOptions): Promise<DesiredConsumer> {
  try {
    return await startConsumer(options);
  } catch (e) {
    options.sockets?.closeAll();
    throw e;
  }
}

async function startConsumer(options: DesiredConsumerOptions): Promise<DesiredConsumer> {
  const admin = options.kafka.admin();
  let partitions: number;
  let highWatermark: bigint;
  try {
    await admin.connect();
    const md = await admin.fetchTopicMetadata({ topics: [options.topic] });
    partitions = md.topics[0]!.partitions.length;
    const p0 = partitionFor(options.node, partitions);
    const offsets = await admin.fetchTopicOffsets(options.topic);
    highWatermark = BigInt(offsets.find((x) => x.partition === p0)?.high ?? '0');
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
  const partition = partitionFor(options.node, partitions);
  const stats = { messages: 0, bytes: 0, ownMessages: 0 };
  const consumer: Consumer = options.kafka.consumer({
    groupId: `bosun-agent-${options.node}`,
    partitionAssigners: [onePartitionAssigner(options.topic, partition)],
    sessionTimeout: 30_000,
    heartbeatInterval: 3_000,
    // Long polls: the broker answers at once when a message arrives, so this costs no latency, only idle CPU.
    maxWaitTimeInMs: 5_000,
    allowAutoTopicCreation: false,
    // kafkajs's own restart loop is known to spin forever without brokers; the agent's watchdog rebuilds instead.
    retry: { retries: 5, restartOnFailure: () => Promise.resolve(false) },
  });
  consumer.on(consumer.events.FETCH, () => options.onFetch?.());
  consumer.on(consumer.events.CRASH, (e) => options.onCrash?.(e.payload.error));
  try {
    await consumer.connect();
    await consumer.subscribe({ topics: [options.topic], fromBeginning: true });
  } catch (e) {
    await consumer.disconnect().catch(() => undefined);
    throw e;
  }
  let newest: DesiredMessage | undefined;
  let live = highWatermark === 0n;
  const log = options.logger.child({ component: 'desired', partition });
  log.info(
    { topic: options.topic, partitions, catchUpTo: highWatermark.toString() },
    `reading partition ${partition} of ${options.topic} for node ${options.node}`,
  );
  const stop = async (): Promise<void> => {
    // Bounded: during a broker outage kafkajs's disconnect waits for the broker to come back.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([consumer.disconnect().catch(() => undefined), new Promise((r) => (timer = setTimeout(r, options.stopWaitMs ?? 10_000)))]).finally(() =>
      clearTimeout(timer),
    );
    options.sockets?.closeAll();
  };
  try {
    await consumer.run({
      autoCommit: false,
      eachBatchAutoResolve: true,
      eachBatch: async (payload) => {
        const { batch } = payload;
        for (const message of batch.messages) {
          stats.messages += 1;
          stats.bytes += (message.value?.length ?? 0) + (message.key?.length ?? 0);
          const next = BigInt(message.offset) + 1n;
          if (message.key?.toString('utf8') === options.node) {
            stats.ownMessages += 1;
            newest = { value: message.value, offset: message.offset, partition: batch.partition, live };
            if (live) {
              await options.onMessage(newest);
              newest = undefined;
            }
          }
          if (!live && next >= highWatermark) {
            live = true;
            log.info({ read: stats.messages }, `caught up on partition ${partition} after ${stats.messages} messages`);
            if (newest) {
              await options.onMessage({ ...newest, live: true });
              newest = undefined;
            }
          }
        }
        await payload.heartbeat();
      },
    });
  } catch (e) {
    await stop();
    throw e;
  }
  return { partition, stats, stop };
}
