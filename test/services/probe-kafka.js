// Readiness probe for Kafka, run by test/services/up (plain ESM, no build).
// Creates a throwaway topic, produces one keyed message, consumes it back
// with a fresh consumer group, and deletes the topic. Exit 0 only if all of
// that worked within PROBE_TIMEOUT_MS.
//
//   KAFKA_BROKERS=127.0.0.1:19092 node test/services/probe-kafka.js
import { randomUUID } from 'node:crypto';
import { Kafka, Partitioners, logLevel } from 'kafkajs';

const brokers = (process.env.KAFKA_BROKERS ?? '')
  .split(',')
  .map((s) => s.trim())
  .filter(Boolean);
const timeoutMs = Number(process.env.PROBE_TIMEOUT_MS ?? 30000);
const logs = [];

function fail(message) {
  for (const line of logs.slice(-20)) process.stderr.write(`  kafkajs: ${line}\n`);
  process.stderr.write(`kafka probe failed (${brokers.join(',')}): ${message}\n`);
  process.exit(1);
}

if (brokers.length === 0) fail('KAFKA_BROKERS is empty');
const timer = setTimeout(() => fail(`no answer within ${timeoutMs} ms`), timeoutMs);

const kafka = new Kafka({
  clientId: 'bosun-services-probe',
  brokers,
  connectionTimeout: 3000,
  requestTimeout: 10000,
  retry: { retries: 3, initialRetryTime: 200 },
  // Keep kafkajs quiet unless the probe fails (then the tail is printed).
  logLevel: logLevel.WARN,
  logCreator:
    () =>
    ({ label, log }) => {
      logs.push(`${label} ${log.message}${log.error ? `: ${log.error}` : ''}`);
    },
});

const id = randomUUID();
const topic = `bosun-probe-${id}`;
const admin = kafka.admin();
const producer = kafka.producer({ allowAutoTopicCreation: false, createPartitioner: Partitioners.DefaultPartitioner });
const consumer = kafka.consumer({ groupId: `bosun-probe-${id}` });

async function main() {
  await admin.connect();
  await admin.createTopics({
    topics: [{ topic, numPartitions: 1, replicationFactor: 1 }],
    waitForLeaders: true,
  });
  try {
    await producer.connect();
    await producer.send({ topic, messages: [{ key: 'probe', value: id }] });
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    await new Promise((resolve, reject) => {
      consumer
        .run({
          eachMessage: async ({ message }) => {
            if (message.key?.toString() === 'probe' && message.value?.toString() === id) resolve();
          },
        })
        .catch(reject);
    });
    await consumer.disconnect();
    await producer.disconnect();
  } finally {
    await admin.deleteTopics({ topics: [topic], timeout: 10000 }).catch(() => undefined);
    await admin.disconnect();
  }
}

main().then(
  () => {
    clearTimeout(timer);
    process.stdout.write(`kafka ok: produced and consumed 1 message via ${brokers.join(',')}\n`);
    process.exit(0);
  },
  (err) => fail(err instanceof Error ? `${err.name}: ${err.message}` : String(err)),
);
