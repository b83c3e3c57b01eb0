// An idle kafkajs consumer, made the way the agent makes its client, must not
// spin: kafkajs 2.2.4 re-arms a 1 ms timer forever once a connection has
// carried a request (src/bus/kafkajs-idle.ts). Counts the timers the process
// creates while a real consumer sits idle on a real broker.
//
//   npx tsc -p tsconfig.json && bash test/services/run-with-services node --test dist/test/integration/kafka-idle.test.js
import assert from 'node:assert/strict';
import { createHook } from 'node:async_hooks';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { after, describe, it } from 'node:test';
import type { Consumer } from 'kafkajs';
import { createKafka } from '../../src/bus/kafka.js';
import { fixKafkajsIdleSpin } from '../../src/bus/kafkajs-idle.js';
import { publicKeyString } from '../../src/identity/seal.js';
import { createLogger } from '../../src/log.js';
import { Redactor } from '../../src/secrets/redact.js';
import { parseAgentSettings } from '../../src/spec/validate.js';
import { requireServices } from '../services/env.js';

const env = await requireServices();

describe('kafkajs idle timers', { timeout: 90_000 }, () => {
  let consumer: Consumer | undefined;
  after(async () => consumer?.disconnect());

  it('an idle consumer group member creates a handful of timers a second, not a thousand', async (t) => {
    const run = randomBytes(4).toString('hex');
    const topic = `bosun-it-idle-${run}`;
    const cp = generateKeyPairSync('ed25519');
    const parsed = parseAgentSettings({
      node: 'idle',
      stateDir: '/nonexistent',
      kafka: { brokers: env.kafkaBrokers },
      topics: { desired: topic, status: `${topic}.s`, events: `${topic}.e` },
      trustedKeys: [{ id: 'cp', publicKey: publicKeyString('ed25519', cp.publicKey) }],
    });
    assert.ok(parsed.ok);
    const { logger } = createLogger({ redactor: new Redactor(), target: 'stderr', level: 'error' });
    // Every interval kafkajs arms from here on, with its period (its per-connection request-timeout check was 100 ms).
    const intervals: number[] = [];
    const realSetInterval = globalThis.setInterval;
    globalThis.setInterval = (fn: () => void, ms?: number) => {
      intervals.push(ms ?? 0);
      return realSetInterval(fn, ms);
    };
    t.after(() => void (globalThis.setInterval = realSetInterval));
    const kafka = await createKafka(parsed.value, logger);
    assert.equal(fixKafkajsIdleSpin(), true, "kafkajs's request queue has the method the fix replaces");
    const admin = kafka.admin();
    await admin.connect();
    await admin.createTopics({ topics: [{ topic, numPartitions: 1 }], waitForLeaders: true });
    await admin.disconnect();
    consumer = kafka.consumer({ groupId: `bosun-it-idle-${run}`, maxWaitTimeInMs: 5000 });
    const joined = new Promise<void>((resolve) => consumer!.on(consumer!.events.GROUP_JOIN, () => resolve()));
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    await consumer.run({ eachMessage: () => Promise.resolve() });
    await joined;
    await new Promise((r) => setTimeout(r, 2000)); // past the first fetches

    let timers = 0;
    const hook = createHook({ init: (_id, type) => void (type === 'Timeout' && timers++) }).enable();
    const seconds = 4;
    await new Promise((r) => setTimeout(r, seconds * 1000));
    hook.disable();
    t.diagnostic(`${timers} timers in ${seconds} s`);
    // Unfixed kafkajs 2.2.4 creates about a thousand a second here; a consumer waiting on
    // 5 s long polls and 3 s heartbeats needs a few (request timeouts, heartbeats).
    assert.ok(timers < 40 * seconds, `${timers} timers in ${seconds} s of idling`);
    // One request-timeout check per connection (admin, consumer, coordinator): each at 1 s, not 100 ms,
    // which woke an idle agent ~23 times a second (25-31 % of a lab guest's vCPU).
    t.diagnostic(`intervals armed: ${intervals.join(', ')} ms`);
    assert.ok(intervals.length >= 2, `kafkajs armed its request-timeout checks (${intervals.length})`);
    assert.ok(Math.min(...intervals) >= 1000, `an interval of ${Math.min(...intervals)} ms`);
  });
});
