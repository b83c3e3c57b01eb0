// Integration tests against the real Kafka (KRaft) from test/services/up.
// Run: npm run test:integration (services are started and stopped around it).
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { connect } from 'node:net';
import { after, before, beforeEach, describe, it } from 'node:test';
// kafkajs is CommonJS and Node's ESM loader cannot see all of its named
// exports (ConfigResourceTypes), so take them from the default export.
import kafkajs from 'kafkajs';
import type { Admin, Kafka, LogEntry } from 'kafkajs';

const { ConfigResourceTypes, Kafka: KafkaClient, Partitioners, logLevel } = kafkajs;
import { requireServices, splitHostPort } from '../services/env.js';
import type { ServiceEnv } from '../services/env.js';

const RUN = `${Date.now().toString(36)}-${randomUUID().slice(0, 8)}`;
const topicName = (what: string): string => `bosun-it-${what}-${RUN}`;

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// kafkajs errors go to stderr, except while a test provokes one on purpose.
let expectingErrors = false;
const kafkaLog =
  () =>
  ({ namespace, level, log }: LogEntry): void => {
    if (level <= logLevel.ERROR && !expectingErrors) process.stderr.write(`kafkajs ${namespace}: ${log.message}\n`);
  };

function errorType(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'type' in err ? String(err.type) : undefined;
}

interface BrokerAddress {
  nodeId: number;
  host: string;
  port: number;
}

/**
 * Sends one Metadata v4 request (no topics) over a raw socket and returns
 * the brokers the listener advertises. A raw request, not a client: a client
 * would go on to connect to the advertised address, which for the LAB
 * listener is the lab VMs' view of the host and must not be contacted.
 */
function advertisedBrokers(address: string, timeoutMs = 5000): Promise<BrokerAddress[]> {
  const [host, port] = splitHostPort(address);
  const clientId = Buffer.from('bosun-it');
  const body = Buffer.alloc(2 + 2 + 4 + 2 + clientId.length + 4 + 1);
  let o = 0;
  o = body.writeInt16BE(3, o); // api_key Metadata
  o = body.writeInt16BE(4, o); // api_version 4
  o = body.writeInt32BE(7, o); // correlation_id
  o = body.writeInt16BE(clientId.length, o);
  o += clientId.copy(body, o);
  o = body.writeInt32BE(0, o); // topics: empty array (brokers only)
  body.writeInt8(0, o); // allow_auto_topic_creation = false
  const frame = Buffer.concat([Buffer.alloc(4), body]);
  frame.writeInt32BE(body.length, 0);

  return new Promise((resolve, reject) => {
    const socket = connect({ host, port });
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`Metadata request to ${address}: no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    const done = (err: Error | undefined, brokers?: BrokerAddress[]): void => {
      clearTimeout(timer);
      socket.destroy();
      if (err) reject(err);
      else resolve(brokers ?? []);
    };
    socket.on('error', (err) => done(err));
    socket.on('connect', () => socket.write(frame));
    socket.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      if (buf.length < 4 || buf.length < 4 + buf.readInt32BE(0)) return;
      try {
        let p = 4;
        const correlationId = buf.readInt32BE(p);
        p += 4;
        if (correlationId !== 7) throw new Error(`unexpected correlation id ${correlationId}`);
        p += 4; // throttle_time_ms
        const count = buf.readInt32BE(p);
        p += 4;
        const brokers: BrokerAddress[] = [];
        for (let i = 0; i < count; i++) {
          const nodeId = buf.readInt32BE(p);
          p += 4;
          const hostLen = buf.readInt16BE(p);
          p += 2;
          const brokerHost = buf.toString('utf8', p, p + hostLen);
          p += hostLen;
          const brokerPort = buf.readInt32BE(p);
          p += 4;
          const rackLen = buf.readInt16BE(p);
          p += 2 + Math.max(rackLen, 0);
          brokers.push({ nodeId, host: brokerHost, port: brokerPort });
        }
        done(undefined, brokers);
      } catch (err) {
        done(err instanceof Error ? err : new Error(String(err)));
      }
    });
  });
}

describe('Kafka (real broker)', { timeout: 180_000 }, () => {
  let env: ServiceEnv;
  let kafka: Kafka;
  let admin: Admin;
  let adminCreated = false;
  const created: string[] = [];

  // A setup failure (services not up) fails every test, rather than
  // cancelling them: see beforeEach.
  let setupError: Error | undefined;
  let connected = false;

  before(async () => {
    try {
      await setup();
    } catch (err) {
      setupError = err instanceof Error ? err : new Error(String(err));
    }
  });
  beforeEach(() => {
    if (setupError !== undefined) throw setupError;
  });

  async function setup(): Promise<void> {
    env = await requireServices();
    kafka = new KafkaClient({
      clientId: `bosun-it-${RUN}`,
      brokers: env.kafkaBrokers,
      connectionTimeout: 5000,
      requestTimeout: 15000,
      logLevel: logLevel.ERROR,
      logCreator: kafkaLog,
    });
    admin = kafka.admin();
    adminCreated = true;
    await withTimeout(admin.connect(), 20_000, `connecting to Kafka at ${env.kafkaBrokers.join(',')}`);
    connected = true;
  }

  after(async () => {
    if (!adminCreated) return; // never got as far as creating the client
    try {
      if (connected && created.length > 0) await admin.deleteTopics({ topics: created, timeout: 15_000 });
    } finally {
      await admin.disconnect();
    }
  });

  it('creates a multi-partition topic (and refuses to create it twice)', { timeout: 60_000 }, async () => {
    const topic = topicName('create');
    const ok = await admin.createTopics({
      topics: [{ topic, numPartitions: 3, replicationFactor: 1 }],
      waitForLeaders: true,
    });
    created.push(topic);
    assert.equal(ok, true, 'createTopics should report a new topic');
    assert.ok((await admin.listTopics()).includes(topic), 'listTopics should include the new topic');
    const meta = await admin.fetchTopicMetadata({ topics: [topic] });
    assert.equal(meta.topics.length, 1);
    assert.deepEqual(
      meta.topics[0]?.partitions.map((p) => p.partitionId).sort((a, b) => a - b),
      [0, 1, 2],
    );
    for (const p of meta.topics[0]?.partitions ?? []) assert.ok(p.leader >= 0, `partition ${p.partitionId} has a leader`);
    expectingErrors = true;
    try {
      const again = await admin.createTopics({ topics: [{ topic, numPartitions: 3, replicationFactor: 1 }] });
      assert.equal(again, false, 'creating an existing topic should report false');
    } finally {
      expectingErrors = false;
    }
  });

  it('creates a compacted topic: cleanup.policy=compact per describeConfigs', { timeout: 60_000 }, async () => {
    const compacted = topicName('compact');
    const plain = topicName('plain');
    await admin.createTopics({
      topics: [
        {
          topic: compacted,
          numPartitions: 1,
          replicationFactor: 1,
          configEntries: [{ name: 'cleanup.policy', value: 'compact' }],
        },
        { topic: plain, numPartitions: 1, replicationFactor: 1 },
      ],
      waitForLeaders: true,
    });
    created.push(compacted, plain);
    const res = await admin.describeConfigs({
      includeSynonyms: false,
      resources: [
        { type: ConfigResourceTypes.TOPIC, name: compacted, configNames: ['cleanup.policy'] },
        { type: ConfigResourceTypes.TOPIC, name: plain, configNames: ['cleanup.policy'] },
      ],
    });
    const policy = (name: string) => {
      const resource = res.resources.find((r) => r.resourceName === name);
      assert.ok(resource, `describeConfigs returned no resource for ${name}`);
      assert.equal(resource.errorCode, 0, `describeConfigs error for ${name}: ${resource.errorMessage ?? ''}`);
      return resource.configEntries.find((e) => e.configName === 'cleanup.policy');
    };
    const c = policy(compacted);
    assert.equal(c?.configValue, 'compact');
    assert.equal(c?.isDefault, false);
    assert.equal(policy(plain)?.configValue, 'delete');

    // A compacted topic only takes keyed records.
    const producer = kafka.producer({
      allowAutoTopicCreation: false,
      createPartitioner: Partitioners.DefaultPartitioner,
      retry: { retries: 0 },
    });
    await producer.connect();
    try {
      await producer.send({
        topic: compacted,
        messages: [
          { key: 'k', value: 'v1' },
          { key: 'k', value: 'v2' },
        ],
      });
      expectingErrors = true;
      await assert.rejects(producer.send({ topic: compacted, messages: [{ key: null, value: 'no key' }] }), (err: unknown) => {
        assert.equal(errorType(err), 'INVALID_RECORD', `a keyless record on a compacted topic: ${String(err)}`);
        return true;
      });
    } finally {
      expectingErrors = false;
      await producer.disconnect();
    }
  });

  it('round-trips keyed messages; equal keys land in one partition, in order', { timeout: 90_000 }, async () => {
    const topic = topicName('keyed');
    await admin.createTopics({ topics: [{ topic, numPartitions: 4, replicationFactor: 1 }], waitForLeaders: true });
    created.push(topic);

    const keys = ['alpha', 'bravo', 'charlie', 'delta', 'echo', 'foxtrot', 'golf', 'hotel'];
    const perKey = 5;
    const expected = new Map<string, Buffer>(); // `${key}#${seq}` -> value
    const messages: Array<{ key: string; value: Buffer }> = [];
    for (let seq = 0; seq < perKey; seq++) {
      for (const key of keys) {
        // JSON for the text messages, random bytes (incl. NUL, 0xff) for one key.
        const value =
          key === 'hotel'
            ? Buffer.concat([Buffer.from([seq, 0, 255]), randomBytes(61)])
            : Buffer.from(JSON.stringify({ key, seq, run: RUN, text: 'ünïcødé ✓' }));
        expected.set(`${key}#${seq}`, value);
        messages.push({ key, value });
      }
    }

    // Idempotent, one request in flight: a send retried under load is neither doubled nor overtaken.
    const producer = kafka.producer({
      allowAutoTopicCreation: false,
      createPartitioner: Partitioners.DefaultPartitioner,
      idempotent: true,
      maxInFlightRequests: 1,
    });
    await producer.connect();
    try {
      // Several sends, so ordering across requests is exercised too.
      for (let i = 0; i < messages.length; i += keys.length) {
        await producer.send({ topic, acks: -1, messages: messages.slice(i, i + keys.length) });
      }
    } finally {
      await producer.disconnect();
    }

    const got: Array<{ key: string; value: Buffer; partition: number; seq: number }> = [];
    const consumer = kafka.consumer({ groupId: `bosun-it-${RUN}`, sessionTimeout: 10_000, heartbeatInterval: 1000 });
    await consumer.connect();
    try {
      await consumer.subscribe({ topic, fromBeginning: true });
      await withTimeout(
        new Promise<void>((resolve, reject) => {
          const seen = new Map<string, number>(); // per key: next seq expected by arrival order
          const delivered = new Set<string>(); // partition:offset
          consumer
            .run({
              eachMessage: ({ partition, message }) => {
                // A redelivery (the group rebalanced under load before an offset was committed) is not a new message.
                if (delivered.has(`${partition}:${message.offset}`)) return Promise.resolve();
                delivered.add(`${partition}:${message.offset}`);
                const key = message.key?.toString('utf8') ?? '<null>';
                const value = message.value ?? Buffer.alloc(0);
                const seq = seen.get(key) ?? 0;
                seen.set(key, seq + 1);
                got.push({ key, value, partition, seq });
                if (got.length >= messages.length) resolve();
                return Promise.resolve();
              },
            })
            .catch(reject);
        }),
        45_000,
        `consuming ${messages.length} messages from ${topic}`,
      );
    } finally {
      await consumer.disconnect();
    }

    assert.equal(got.length, messages.length);
    // Per key, arrival order equals send order, and key/value bytes survive.
    for (const m of got) {
      const want = expected.get(`${m.key}#${m.seq}`);
      assert.ok(want, `unexpected message key=${m.key} (#${m.seq})`);
      assert.ok(m.value.equals(want), `value of ${m.key}#${m.seq} differs after the round trip`);
    }
    const partitionsByKey = new Map<string, Set<number>>();
    for (const m of got) {
      const set = partitionsByKey.get(m.key) ?? new Set<number>();
      set.add(m.partition);
      partitionsByKey.set(m.key, set);
    }
    assert.deepEqual([...partitionsByKey.keys()].sort(), [...keys].sort());
    for (const [key, parts] of partitionsByKey) {
      assert.equal(parts.size, 1, `messages with key ${key} landed in partitions ${[...parts].join(',')}`);
    }
    const used = new Set(got.map((m) => m.partition));
    assert.ok(used.size >= 2, `8 keys should spread over more than one of 4 partitions, got ${[...used].join(',')}`);
  });

  it('advertises the loopback PLAINTEXT listener and the LAB listener as the lab address', { timeout: 30_000 }, async (t) => {
    const plain = await advertisedBrokers(env.kafkaBrokers[0] as string);
    assert.equal(plain.length, 1, 'one broker');
    const [plainHost, plainPort] = splitHostPort(env.kafkaBrokers[0] as string);
    assert.equal(plain[0]?.host, plainHost);
    assert.equal(plain[0]?.port, plainPort);

    if (env.kafkaLabListener === undefined) {
      // Only an external Kafka (KAFKA_BROKERS given) lacks this; a missing service still fails in before().
      t.skip('KAFKA_LAB_LISTENER is not set (external Kafka): LAB listener not checked');
      return;
    }
    const lab = await advertisedBrokers(env.kafkaLabListener);
    const [labHost, labPort] = splitHostPort(env.kafkaLabBrokers[0] ?? '');
    assert.deepEqual(
      lab.map((b) => `${b.host}:${b.port}`),
      [`${labHost}:${labPort}`],
      'the LAB listener must advertise the lab VMs address, not loopback',
    );
  });
});
