// The reporter against the real broker when the broker stops answering: a
// send that does not settle is given up after `stallMs`, the producer is
// replaced, and the reports queued meanwhile go out once the broker answers
// again. Without the limit every later report would wait behind the stuck
// send and the node would go silent while it otherwise runs normally.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import kafkajs, { type Consumer } from 'kafkajs';
import { SocketTracker } from '../../src/bus/kafka.js';
import { Reporter, type SignedReport } from '../../src/bus/reporter.js';
import { loadOrCreateIdentity } from '../../src/identity/host-identity.js';
import { createLogger } from '../../src/log.js';
import { Redactor } from '../../src/secrets/redact.js';
import { requireServices, stateFilePath, type ServiceEnv } from '../services/env.js';
import { waitFor } from '../helpers.js';
import { createTopicsAndWatch, runTopics } from './harness.js';

const { Kafka, logLevel } = kafkajs;
const run = randomBytes(4).toString('hex');
const topics = runTopics(run);

describe('reporter (real Kafka)', () => {
  let env: ServiceEnv;
  let watcher: Consumer;
  let dir: string;
  const statuses: Record<string, unknown>[] = [];
  const events: Record<string, unknown>[] = [];
  const decode = (raw: Buffer | null) =>
    JSON.parse(Buffer.from((JSON.parse(raw!.toString()) as SignedReport).payload, 'base64url').toString()) as Record<string, unknown>;

  before(async () => {
    env = await requireServices();
    dir = await mkdtemp(join(tmpdir(), 'bosun-reporter-'));
    const kafka = new Kafka({ clientId: 'bosun-test', brokers: env.kafkaBrokers, logLevel: logLevel.NOTHING });
    watcher = await createTopicsAndWatch(kafka, topics, {
      desiredPartitions: 1,
      groupId: `watch-${run}`,
      onReport: (kind, value) => (kind === 'status' ? statuses : events).push(decode(value)),
    });
  });

  after(async () => {
    await watcher?.disconnect();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('gives up a send the broker does not answer, and delivers what was queued once it answers again', async () => {
    const pidFile = join(dirname(stateFilePath()), 'run', 'kafka.pid');
    assert.ok(existsSync(pidFile), 'this test pauses the broker (SIGSTOP), so it needs the one test/services/up started (not an external KAFKA_BROKERS)');
    const pid = Number(readFileSync(pidFile, 'utf8').trim());
    const { identity } = await loadOrCreateIdentity(join(dir, 'state'));
    const lines: string[] = [];
    const { logger } = createLogger({
      redactor: new Redactor(),
      target: 'journald',
      loadJournald: () => new Proxy({}, { get: () => (msg: string) => lines.push(msg) }) as never,
    });
    // The client's own timeouts are longer than stallMs, so it is the reporter's limit that ends the wait.
    const sockets = new SocketTracker();
    const kafka = new Kafka({
      clientId: 'bosun-reporter-test',
      brokers: env.kafkaBrokers,
      logLevel: logLevel.NOTHING,
      requestTimeout: 20_000,
      connectionTimeout: 20_000,
      retry: { retries: 0 },
      socketFactory: sockets.factory,
    });
    const reporter = new Reporter({ kafka, sockets, node: 'node-r', identity, topics, logger, waitMs: 1_000, stallMs: 3_000 });
    let paused = false;
    try {
      await reporter.status({ marker: 'before' });
      await waitFor('the first status', () => statuses.some((s) => s.marker === 'before'), 30_000);
      assert.equal(reporter.producers.connected, 1);

      process.kill(pid, 'SIGSTOP');
      paused = true;
      const t0 = Date.now();
      await reporter.event({ kind: 'during-pause' });
      assert.ok(Date.now() - t0 < 3_000, 'event() returns after waitMs even though the broker does not answer');
      await waitFor('the stalled send to be given up', () => reporter.producers.stalled >= 1, 20_000);
      assert.ok(
        lines.some((l) => /cannot reach Kafka to report \(sending events took over 3 s; giving up this producer\)/.test(l)),
        lines.join('\n'),
      );
      await reporter.status({ marker: 'during' });
      assert.equal(reporter.queued.events, 1, 'the event stays queued');
      process.kill(pid, 'SIGCONT');
      paused = false;

      await waitFor(
        'the queued event and the newest status',
        () => events.some((e) => e.kind === 'during-pause') && statuses.some((s) => s.marker === 'during'),
        60_000,
      );
      assert.ok(reporter.producers.connected >= 2, 'a new producer was made after the stall');
      assert.deepEqual(reporter.queued, { status: false, events: 0, dropped: 0 });
      assert.equal(events.filter((e) => e.kind === 'during-pause').length >= 1, true);
      await reporter.stop();
      // The stalled producer's connections were destroyed when it was given up (its disconnect would
      // wait on them); the new producer's closed with stop(). Nothing is left to keep a process alive.
      await waitFor('every socket of the client to be closed', () => sockets.open === 0, 15_000);
    } finally {
      if (paused) process.kill(pid, 'SIGCONT');
      await reporter.stop();
      sockets.closeAll();
    }
  });
});
